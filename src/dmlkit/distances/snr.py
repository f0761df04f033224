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
    smallest normal float instead of dividing by zero.

    Parameters
    ----------
    normalize_embeddings : bool
        L2-normalize inputs first.
    """

    is_similarity = False

    def compute_matrix(self, x: Tensor, y: Tensor | None) -> Tensor:
        xc = _centered(x)  # (n, d)
        yc = xc if y is None else _centered(y)  # (m, d)
        x_sq = (xc * xc).sum(dim=1)  # (n,)
        # differences taken directly, not through a Gram matrix: identical vectors give
        # exactly 0 (a tie stays a tie), as the variance of their difference does
        noise = torch.cdist(xc, yc, compute_mode="donot_use_mm_for_euclid_dist") ** 2  # (n, m)
        return noise / x_sq.clamp_min(_tiny(x))[:, None]  # (n, m)

    def compute_rowwise(self, x: Tensor, y: Tensor) -> Tensor:
        xc, yc = _centered(x), _centered(y)  # (n, d)
        diff = xc - yc  # (n, d)
        return (diff * diff).sum(dim=1) / (xc * xc).sum(dim=1).clamp_min(_tiny(x))  # (n,)


def _tiny(x: Tensor) -> float:
    return float(torch.finfo(x.dtype).tiny)


__all__ = ["SNRDistance"]
