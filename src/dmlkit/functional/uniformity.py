"""Uniformity of embeddings on the unit sphere (Wang & Isola, 2020).

``log mean_{i != j} exp(-t ||u_i - u_j||^2)`` over the L2-normalized rows ``u`` of a batch:
lowest when the embeddings spread evenly over the sphere, highest when they collapse onto
a few points. Added to a metric-learning loss (``training.uniformity_weight``) it resists
the collapse of the embedding onto the training classes, which costs retrieval on classes
never seen in training (cf. Roth et al. 2020 on spectral compression and generalization).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dmlkit.functional.distances import check_embeddings, l2_normalize


def uniformity(embeddings: Tensor, t: float = 2.0) -> Tensor:
    """``log`` of the mean over ordered pairs ``i != j`` of ``exp(-t ||u_i - u_j||^2)``.

    Parameters
    ----------
    embeddings : Tensor
        ``(B, d)``, ``B >= 2``; rows are L2-normalized here.
    t : float
        Temperature (> 0); Wang & Isola use 2.

    Returns
    -------
    Tensor
        Scalar in ``[-4 t, 0]``: ``0`` when all rows coincide.
    """
    check_embeddings(embeddings)
    if embeddings.shape[0] < 2:
        raise ValueError(f"uniformity needs at least 2 embeddings, got {embeddings.shape[0]}")
    if not (isinstance(t, (int, float)) and 0 < t < math.inf):
        raise ValueError(f"t must be a finite number > 0, got {t!r}")
    dtype = torch.promote_types(embeddings.dtype, torch.float32)  # half -> float32
    u = l2_normalize(embeddings.to(dtype))  # (B, d)
    n = u.shape[0]
    sq = (2.0 - 2.0 * (u @ u.T)).clamp_min(0.0)  # (B, B) squared distances on the sphere
    off = ~torch.eye(n, dtype=torch.bool, device=u.device)
    return torch.logsumexp(-t * sq[off], dim=0) - math.log(n * (n - 1))


__all__ = ["uniformity"]
