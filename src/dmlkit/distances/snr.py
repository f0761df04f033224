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


@register_distance("snr")
class SNRDistance(BaseDistance):
    r"""Noise-to-signal ratio of the anchor: ``d(x, y) = var(x - y) / var(x)``.

    The variances are taken over the ``d`` coordinates of one vector (unbiased, as
    ``torch.var``), so with centered vectors :math:`\tilde x = x - \bar x`

    .. math::

        d(x, y) = \frac{\lVert \tilde x - \tilde y \rVert^2}{\lVert \tilde x \rVert^2}.

    Not symmetric: the anchor ``x`` (the query, the row) is the signal. Matches
    pytorch-metric-learning's ``SNRDistance`` (inputs L2-normalized by default).
    A vector with zero variance (all coordinates equal) has its variance clamped to the
    smallest normal float of the input dtype instead of dividing by zero.

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
        xc = _centered(x.to(work))  # (n, d)
        yc = xc if y is None else _centered(y.to(work))  # (m, d)
        x_sq = (xc * xc).sum(dim=1)  # (n,)
        # differences taken directly, not through a Gram matrix: identical vectors give
        # exactly 0 (a tie stays a tie), as the variance of their difference does
        noise = torch.cdist(xc, yc, compute_mode="donot_use_mm_for_euclid_dist") ** 2  # (n, m)
        return (noise / x_sq.clamp_min(_tiny(dtype))[:, None]).to(dtype)  # (n, m)

    def compute_rowwise(self, x: Tensor, y: Tensor) -> Tensor:
        dtype = torch.promote_types(x.dtype, y.dtype)
        work = _working_dtype(dtype)
        xc, yc = _centered(x.to(work)), _centered(y.to(work))  # (n, d)
        diff = xc - yc  # (n, d)
        snr = (diff * diff).sum(dim=1) / (xc * xc).sum(dim=1).clamp_min(_tiny(dtype))  # (n,)
        return snr.to(dtype)


def _working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype to measure in: at least ``float32``."""
    return torch.promote_types(dtype, torch.float32)


def _tiny(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).tiny)


__all__ = ["SNRDistance"]
