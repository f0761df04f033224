"""Move Euclidean embeddings next to the origin before ranking them.

Euclidean ranking keys are ``|r|^2 - 2 q.r`` (see :mod:`dmlkit.functional.retrieval`).
For embeddings far from the origin (an offset large against their spread) both terms are
huge and nearly cancel, so float32 keys keep almost no precision. Subtracting one common
vector ``c`` from queries and references leaves every distance unchanged and removes the
cancellation; multiplying both by one power of two ``s`` keeps squared norms of huge (or
tiny) float64 values inside the floating-point range without changing the order.

``c`` is the references' mean rounded, per column, to a multiple of a power of two no
larger than the column's spread, so that data already near the origin get ``c = 0`` (no
copy, ranking unchanged bit for bit) and integer-valued (dyadic) data stay exact: exact
ties remain exact ties. The cost is one pass over the references (mean, minimum, maximum)
and, when ``c != 0`` or ``s != 1``, one copy of queries and references: ``O((n + m) d)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: the scale is applied when the references' largest deviation from ``c`` is beyond
#: ``2**±SCALE_EXPONENT`` (a power of two: exact; within that range squared norms are
#: far from overflow and underflow)
SCALE_EXPONENT = 16
#: rows converted at once (bounds the float64 temporary)
_ROWS = 1 << 15


def _work_dtype(x: Tensor) -> torch.dtype:
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def frame(reference: Tensor) -> tuple[Tensor, float]:
    """The common shift ``c`` (``(d,)`` float64) and scale ``s`` (a power of two) of a
    reference set (see the module docstring)."""
    m, d = reference.shape
    if m == 0 or d == 0:
        return torch.zeros(d, dtype=torch.float64, device=reference.device), 1.0
    ref = reference.detach()
    if not ref.is_floating_point():
        ref = ref.to(torch.float64)
    mean = ref.mean(dim=0, dtype=torch.float64)  # (d,)
    hi = ref.amax(dim=0).to(torch.float64)  # (d,)
    lo = ref.amin(dim=0).to(torch.float64)  # (d,)
    spread = torch.maximum(hi - mean, mean - lo)  # (d,) >= 0
    _, exp = torch.frexp(spread)  # spread in [2**(exp-1), 2**exp)
    step = torch.ldexp(torch.ones_like(spread), exp - 1)  # (d,) power of two <= spread
    shift = torch.where(spread > 0, torch.round(mean / step) * step, hi)  # (d,)
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    dev = float(torch.maximum((hi - shift).abs(), (lo - shift).abs()).max())
    scale = 1.0
    if 0.0 < dev < float("inf"):
        _, e = torch.frexp(torch.tensor(dev, dtype=torch.float64))
        if abs(int(e)) > SCALE_EXPONENT:
            scale = float(torch.ldexp(torch.tensor(1.0, dtype=torch.float64), -e))
    return shift, scale


def _apply(x: Tensor, shift: Tensor, scale: float, dtype: torch.dtype) -> Tensor:
    """``(x - shift) * scale`` computed in float64, stored as ``dtype``, by row chunks."""
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    for s in range(0, x.shape[0], _ROWS):
        part = x[s : s + _ROWS].detach().to(torch.float64)
        out[s : s + _ROWS] = ((part - shift) * scale).to(dtype)
    return out


def ranking_frame(
    query: Tensor,
    reference: Tensor | None = None,
    *,
    euclidean: bool = True,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``(query, reference)`` ready for Euclidean ranking: both moved by one common vector
    and scaled by one power of two (:func:`frame` of the references; of ``query`` when
    ``reference`` is None, which is then returned as None). Ranks and ties are those of
    the inputs; distances are multiplied by ``scale**2``. With ``euclidean=False``
    (similarities are not translation-invariant) the inputs are only cast.

    ``dtype`` is the result's dtype (default: the input's float32 / float64, float32
    for other dtypes).
    """
    ref = query if reference is None else reference
    dtype = dtype or _work_dtype(ref)
    shift, scale = frame(ref) if euclidean else (torch.zeros(0, dtype=torch.float64), 1.0)
    if not euclidean or (scale == 1.0 and not bool(shift.any())):
        q = query if query.dtype == dtype else query.to(dtype)
        if reference is None:
            return q, None
        return q, reference if reference.dtype == dtype else reference.to(dtype)
    q = _apply(query, shift, scale, dtype)
    return q, None if reference is None else _apply(reference, shift, scale, dtype)


__all__ = ["SCALE_EXPONENT", "frame", "ranking_frame"]
