"""Pairwise (all-pairs) and row-wise distance and similarity functions.

All-pairs functions map ``x (n, d)`` and ``y (m, d)`` to an ``(n, m)`` matrix; row-wise
functions map two ``(n, d)`` tensors to ``(n,)``. Euclidean distances use the
``|x|^2 + |y|^2 - 2 x.y`` expansion (one matmul) clamped at zero, with a gradient-safe
square root.

Zero distances: a squared distance at most :data:`ZERO_DISTANCE_RATIO` (1e-12) times
the pair's mean squared norm ``(|x|^2 + |y|^2) / 2`` is taken as exactly 0, with a zero
gradient (:func:`zero_distance_cut`). The cut scales with the embeddings, so it hides
float64's rounding noise (the expansion leaves about ``eps * |x|^2`` of it where
``x == y``) at any scale, while tiny un-normalized embeddings keep their distances
(``d(a x, a y) = a d(x, y)``, zeros included). On unit-norm embeddings it is the
absolute ``d^2 <= 1e-12`` (``d <= 1e-6``) of :func:`safe_sqrt`'s default.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_EPS = 1e-12


def l2_normalize(x: Tensor, eps: float = _EPS) -> Tensor:
    """Scale each row of ``x (n, d)`` to unit L2 norm (zero rows stay zero)."""
    return x / x.norm(p=2, dim=-1, keepdim=True).clamp_min(eps)


def peak_scaled(x: Tensor) -> Tensor:
    """Each row of ``x (n, d)`` multiplied by the power of two that brings its largest
    absolute entry into ``[0.5, 1)`` (zero rows stay zero). Powers of two scale exactly,
    so every row keeps its direction bit for bit, and its squared norm can neither
    underflow nor overflow (or fall below :func:`l2_normalize`'s ``eps``)."""
    peak = x.detach().abs().amax(dim=-1, keepdim=True)  # (n, 1)
    _, exp = torch.frexp(peak)  # peak = m * 2**exp, m in [0.5, 1); 0 for a zero row
    dtype = x.dtype if x.is_floating_point() else torch.float32
    e = -exp.to(dtype)  # (n, 1)
    half = torch.trunc(e / 2)  # (two factors: 2**e alone can lie beyond the dtype's range)
    return x * torch.exp2(half) * torch.exp2(e - half)  # (n, d)


def unit_rows(x: Tensor) -> Tensor:
    """Each row of ``x (n, d)`` at unit L2 norm whatever its magnitude (zero rows stay
    zero): :func:`l2_normalize` of :func:`peak_scaled`. Rows of ordinary size give
    :func:`l2_normalize`'s values bit for bit; rows whose norm is below its ``eps``, or
    whose squares underflow or overflow, are normalized too, so cosine similarities of
    them are exact rather than dot products or ties. Used where embeddings are ranked
    and scored by cosine (evaluation, indexes); losses keep :func:`l2_normalize`."""
    return l2_normalize(peak_scaled(x))


#: squared distances at most this fraction of the pair's mean squared norm are zero
ZERO_DISTANCE_RATIO = 1e-12


def zero_distance_cut(x_sq: Tensor, y_sq: Tensor) -> Tensor:
    """Squared distances at or below this are distances of exactly 0, from the squared
    norms of the two sides (broadcast: ``(n, 1), (1, m) -> (n, m)`` or ``(n,), (n,)``)."""
    return (x_sq + y_sq).mul_(0.5 * ZERO_DISTANCE_RATIO)


def safe_sqrt(x: Tensor, eps: float | Tensor = _EPS) -> Tensor:
    """``sqrt(x)`` that is 0, with a zero gradient (not inf/NaN), where ``x <= eps``.

    ``eps`` is a number or a tensor broadcastable to ``x`` (:func:`zero_distance_cut`).
    """
    zero = x <= eps
    return x.masked_fill(zero, 1.0).sqrt().masked_fill(zero, 0.0)


def cut_sqrt(d2: Tensor, x_sq: Tensor, y_sq: Tensor, *, inplace: bool = False) -> Tensor:
    """Euclidean distances from squared distances ``d2``, with the zeros of
    :func:`zero_distance_cut` (``x_sq``, ``y_sq``: the two sides' squared norms,
    broadcast to ``d2``'s shape).

    By default :func:`safe_sqrt` with the cut as its ``eps``: differentiable, a zero
    gradient at the zeros, no gradient through the cut. With ``inplace`` ``d2`` itself
    becomes the distances (no copy, no autograd: for ``d2`` computed under ``no_grad``).
    """
    if inplace:
        return d2.masked_fill_(d2 <= zero_distance_cut(x_sq, y_sq), 0.0).sqrt_()
    with torch.no_grad():
        cut = zero_distance_cut(x_sq, y_sq)
    return safe_sqrt(d2, cut)


def cut_zeros_(d: Tensor, x_sq: Tensor, y_sq: Tensor) -> Tensor:
    """Distances ``d`` already square-rooted (``torch.cdist``), in place, with the zeros
    of :func:`cut_sqrt`: entries whose square is at or below :func:`zero_distance_cut`
    become 0 (no autograd)."""
    return d.masked_fill_(d.square() <= zero_distance_cut(x_sq, y_sq), 0.0)


def _pairwise_squared(x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Squared distances ``(n, m)`` and the squared norms ``(n, 1)``, ``(m, 1)``."""
    y_is_x = y is None
    y = x if y is None else y
    x_sq = (x * x).sum(dim=1, keepdim=True)  # (n, 1)
    y_sq = x_sq if y_is_x else (y * y).sum(dim=1, keepdim=True)  # (m, 1)
    d2 = x_sq + y_sq.T - 2.0 * (x @ y.T)  # (n, m)
    d2 = d2.clamp_min(0.0)
    if y_is_x and d2.shape[0] == d2.shape[1]:
        # exact zeros on the diagonal (the expansion leaves rounding noise there)
        d2.diagonal().zero_()
    return d2, x_sq, y_sq


def pairwise_squared_euclidean(x: Tensor, y: Tensor | None = None) -> Tensor:
    """All-pairs squared Euclidean distance, ``(n, d), (m, d) -> (n, m)``."""
    return _pairwise_squared(x, y)[0]


def pairwise_euclidean(x: Tensor, y: Tensor | None = None) -> Tensor:
    """All-pairs Euclidean distance, ``(n, d), (m, d) -> (n, m)`` (zeros: module doc)."""
    d2, x_sq, y_sq = _pairwise_squared(x, y)  # (n, m), (n, 1), (m, 1)
    return cut_sqrt(d2, x_sq, y_sq.T)


def pairwise_dot(x: Tensor, y: Tensor | None = None) -> Tensor:
    """All-pairs inner product, ``(n, d), (m, d) -> (n, m)``."""
    y = x if y is None else y
    return x @ y.T


def pairwise_cosine(x: Tensor, y: Tensor | None = None) -> Tensor:
    """All-pairs cosine similarity, ``(n, d), (m, d) -> (n, m)``."""
    xn = l2_normalize(x)
    yn = xn if y is None else l2_normalize(y)
    return xn @ yn.T


def rowwise_squared_euclidean(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise squared Euclidean distance, ``(n, d), (n, d) -> (n,)``."""
    diff = x - y
    return (diff * diff).sum(dim=1)


def rowwise_euclidean(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise Euclidean distance, ``(n, d), (n, d) -> (n,)`` (zeros: module doc)."""
    with torch.no_grad():
        x_sq, y_sq = (x * x).sum(dim=1), (y * y).sum(dim=1)  # (n,), (n,)
    return cut_sqrt(rowwise_squared_euclidean(x, y), x_sq, y_sq)


def rowwise_dot(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise inner product, ``(n, d), (n, d) -> (n,)``."""
    return (x * y).sum(dim=1)


def rowwise_cosine(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise cosine similarity, ``(n, d), (n, d) -> (n,)``."""
    return (l2_normalize(x) * l2_normalize(y)).sum(dim=1)


def check_dim(x: Tensor, name: str) -> None:
    """A ``ValueError`` when the ``(n, d)`` embeddings ``x`` have no coordinates
    (``d == 0``): every distance would be 0 and every metric a ranking of ties."""
    if x.dim() == 2 and x.shape[1] == 0:
        raise ValueError(f"{name} has shape {tuple(x.shape)}: embeddings need at least one "
                         "dimension (d >= 1); check which array holds them")


def check_embeddings(x: Tensor, name: str = "embeddings") -> None:
    """Raise a clear error unless ``x`` is a finite floating ``(n, d)`` tensor with
    ``d >= 1`` (:func:`check_dim`)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (n, dim), got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    # one reduction decides in the common case; a non-finite sum (NaN / inf entries, or
    # finite entries whose sum overflows) is settled entry by entry
    if x.numel() and not math.isfinite(float(x.detach().sum())):
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
    check_dim(x, name)


__all__ = [
    "l2_normalize",
    "peak_scaled",
    "unit_rows",
    "safe_sqrt",
    "cut_sqrt",
    "cut_zeros_",
    "zero_distance_cut",
    "ZERO_DISTANCE_RATIO",
    "pairwise_squared_euclidean",
    "pairwise_euclidean",
    "pairwise_dot",
    "pairwise_cosine",
    "rowwise_squared_euclidean",
    "rowwise_euclidean",
    "rowwise_dot",
    "rowwise_cosine",
    "check_dim",
    "check_embeddings",
]
