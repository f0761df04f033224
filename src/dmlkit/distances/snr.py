"""Signal-to-noise-ratio distance (Yuan et al., "Signal-To-Noise Ratio: A Robust Distance
Metric for Deep Metric Learning", CVPR 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.registry import register_distance


def _centered(x: Tensor) -> Tensor:
    if x.shape[1] < 2:
        raise ValueError(f"SNRDistance needs dim >= 2 (a variance per vector), got {x.shape[1]}")
    return x - x.mean(dim=1, keepdim=True)  # (n, d)


def _signal(x: Tensor, xc: Tensor) -> Tensor:
    """``||x_i - mean(x_i)||^2`` of each anchor row ``(n,)``, floored at
    ``eps * (1 + ||x_i||^2)`` (``eps`` of the working dtype): below that the centered sum
    is rounding noise, and a row with no variance (an all-zero output of a dead ReLU)
    gets a large finite ratio instead of inf / NaN. No host sync."""
    x_sq = (xc * xc).sum(dim=1)  # (n,)
    floor = torch.finfo(xc.dtype).eps * (1.0 + (x * x).sum(dim=1))  # (n,)
    return torch.maximum(x_sq, floor)  # (n,), > 0


@register_distance("snr")
class SNRDistance(BaseDistance):
    r"""Noise-to-signal ratio of the anchor: ``d(x, y) = var(x - y) / var(x)``.

    The variances are taken over the ``d`` coordinates of one vector (unbiased, as
    ``torch.var``), so with centered vectors :math:`\tilde x = x - \bar x`

    .. math::

        d(x, y) = \frac{\lVert \tilde x - \tilde y \rVert^2}{\lVert \tilde x \rVert^2}.

    Not symmetric: the anchor ``x`` (the query, the row) is the signal. Matches
    pytorch-metric-learning's ``SNRDistance`` (inputs L2-normalized by default).
    An anchor with zero variance (all coordinates equal, e.g. an all-zero row from a dead
    ReLU) has no defined ratio; its ``||x - mean(x)||^2`` is floored at
    ``eps * (1 + ||x||^2)`` (``eps`` of ``float32``, or of the input's dtype if wider), so
    such a row gets a large finite distance to every other row and finite gradients, where
    pytorch-metric-learning returns inf / NaN. The floor also applies to rows whose
    relative spread is below about ``sqrt(eps)`` (their variance is then mostly rounding).
    A constant row as the reference ``y`` is fine (the anchor is the signal).

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
        x_sq = _signal(xw, xc)  # (n,), > 0 (floored)
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
