"""Signal-to-noise-ratio distance (Yuan et al., "Signal-To-Noise Ratio: A Robust Distance
Metric for Deep Metric Learning", CVPR 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.registry import register_distance

#: a row counts as constant when the rms of its centered coordinates is within this many
#: machine epsilons of its largest |coordinate| (centering a constant row leaves <= ~4 eps)
_FLAT_EPS = 32.0


def _centered(x: Tensor) -> Tensor:
    if x.shape[1] < 2:
        raise ValueError(f"SNRDistance needs dim >= 2 (a variance per vector), got {x.shape[1]}")
    return x - x.mean(dim=1, keepdim=True)  # (n, d)


def _signal(x: Tensor, xc: Tensor) -> Tensor:
    """``||x_i - mean(x_i)||^2`` of each anchor row ``(n,)``; ``ValueError`` for a row with
    no variance (all coordinates equal up to rounding), whose ratio is undefined."""
    x_sq = (xc * xc).sum(dim=1)  # (n,)
    if x_sq.numel():
        scale = _FLAT_EPS * torch.finfo(xc.dtype).eps * x.abs().amax(dim=1)  # (n,)
        flat = (x_sq / xc.shape[1]).sqrt() <= scale  # (n,): rms of the centered row
        if bool(flat.any()):
            row = int(torch.nonzero(flat)[0, 0])
            raise ValueError(
                f"SNRDistance: anchor row {row} (of {x.shape[0]} given) has zero variance "
                "(all its coordinates are equal, e.g. an all-zero output of a dead ReLU), "
                "so its noise-to-signal ratio var(x - y) / var(x) is undefined"
            )
    return x_sq


@register_distance("snr")
class SNRDistance(BaseDistance):
    r"""Noise-to-signal ratio of the anchor: ``d(x, y) = var(x - y) / var(x)``.

    The variances are taken over the ``d`` coordinates of one vector (unbiased, as
    ``torch.var``), so with centered vectors :math:`\tilde x = x - \bar x`

    .. math::

        d(x, y) = \frac{\lVert \tilde x - \tilde y \rVert^2}{\lVert \tilde x \rVert^2}.

    Not symmetric: the anchor ``x`` (the query, the row) is the signal. Matches
    pytorch-metric-learning's ``SNRDistance`` (inputs L2-normalized by default).
    An anchor with zero variance (all coordinates equal up to rounding, e.g. an all-zero
    row from a dead ReLU) has no defined ratio: ``ValueError`` naming the row, where
    pytorch-metric-learning returns inf / NaN. A constant row as the reference ``y`` is
    fine (the anchor is the signal).

    Half-precision inputs (``float16``, ``bfloat16``) are measured in ``float32`` (on the
    CPU, ``torch.cdist`` has no half kernels, and the sums of squares keep their
    precision); the result has the input dtype, as with the other distances.

    Parameters
    ----------
    normalize_embeddings : bool
        L2-normalize inputs first.
    """

    is_similarity = False

    def compute_matrix(self, x: Tensor, y: Tensor | None) -> Tensor:
        dtype = x.dtype if y is None else torch.promote_types(x.dtype, y.dtype)
        work = _working_dtype(dtype)
        xw = x.to(work)
        xc = _centered(xw)  # (n, d)
        yc = xc if y is None else _centered(y.to(work))  # (m, d)
        x_sq = _signal(xw, xc)  # (n,), > 0
        # differences taken directly, not through a Gram matrix: identical vectors give
        # exactly 0 (a tie stays a tie), as the variance of their difference does
        noise = torch.cdist(xc, yc, compute_mode="donot_use_mm_for_euclid_dist") ** 2  # (n, m)
        return (noise / x_sq[:, None]).to(dtype)  # (n, m)

    def compute_rowwise(self, x: Tensor, y: Tensor) -> Tensor:
        dtype = torch.promote_types(x.dtype, y.dtype)
        work = _working_dtype(dtype)
        xw = x.to(work)
        xc, yc = _centered(xw), _centered(y.to(work))  # (n, d)
        diff = xc - yc  # (n, d)
        snr = (diff * diff).sum(dim=1) / _signal(xw, xc)  # (n,)
        return snr.to(dtype)


def _working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype to measure in: at least ``float32``."""
    return torch.promote_types(dtype, torch.float32)


__all__ = ["SNRDistance"]
