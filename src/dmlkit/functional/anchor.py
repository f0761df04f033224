"""Similarity drift: how far a batch's cosine-similarity matrix moved from a reference's.

Used as a regularizer against collapse onto the training classes (``training.
anchor_weight``): the embeddings of a batch are kept close, pair by pair, to the
similarities a reference embedder (the model as it was before training) gives the same
items, so training adds a correction to the pretrained metric instead of replacing it
(the distance-wise term of relational knowledge distillation, Park et al. 2019, on
cosine similarities).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.functional.distances import check_embeddings, l2_normalize


def similarity_drift(embeddings: Tensor, reference: Tensor) -> Tensor:
    """Mean over all ``B x B`` pairs of ``(cos(e_i, e_j) - cos(r_i, r_j))^2``.

    Parameters
    ----------
    embeddings : Tensor
        ``(B, d)`` embeddings being trained.
    reference : Tensor
        ``(B, d')`` the reference embeddings of the same items (any width; no gradient
        flows into them).

    Returns
    -------
    Tensor
        Scalar, 0 when the two give the same similarities, at most 4.
    """
    check_embeddings(embeddings)
    check_embeddings(reference, "reference")
    if reference.shape[0] != embeddings.shape[0]:
        raise ValueError(
            f"reference has {reference.shape[0]} rows, embeddings {embeddings.shape[0]}"
        )
    dtype = torch.promote_types(embeddings.dtype, torch.float32)  # half -> float32
    e = l2_normalize(embeddings.to(dtype))  # (B, d)
    r = l2_normalize(reference.detach().to(dtype))  # (B, d')
    return (e @ e.T - r @ r.T).square().mean()


__all__ = ["similarity_drift"]
