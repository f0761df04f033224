"""Base class of every miner: ``miner(embeddings, labels, ref_embeddings=None, ref_labels=None)``.

A miner returns :class:`~dmlkit.functional.Pairs` or :class:`~dmlkit.functional.Triplets`
of indices (anchors into ``embeddings``, positives / negatives into the reference set)
and never builds a graph.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.euclidean import EuclideanDistance
from dmlkit.functional.distances import check_embeddings
from dmlkit.functional.labels import check_labels
from dmlkit.functional.tuples import Pairs, Triplets


class BaseMiner(nn.Module):
    """Validation and no-grad handling shared by every miner; subclasses implement ``mine``."""

    #: "pairs" or "triplets": what :meth:`forward` returns
    output_kind: str = "triplets"

    def __init__(self, distance: BaseDistance | None = None) -> None:
        super().__init__()
        self.distance = distance if distance is not None else EuclideanDistance()

    def mine(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor,
        ref_labels: Tensor,
        same_set: bool,
    ) -> Pairs | Triplets:
        raise NotImplementedError

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Pairs | Triplets:
        check_embeddings(embeddings)
        check_labels(labels, embeddings.shape[0])
        if (ref_embeddings is None) != (ref_labels is None):
            raise ValueError("ref_embeddings and ref_labels must be given together")
        if ref_embeddings is not None:
            check_embeddings(ref_embeddings, "ref_embeddings")
            check_labels(ref_labels, ref_embeddings.shape[0], "ref_labels")
            if ref_embeddings.shape[1] != embeddings.shape[1]:
                raise ValueError(
                    f"ref_embeddings have dim {ref_embeddings.shape[1]}, "
                    f"embeddings have dim {embeddings.shape[1]}"
                )
        same_set = ref_embeddings is None
        with torch.no_grad():
            emb = embeddings.detach().float()
            ref = emb if same_set else ref_embeddings.detach().float()
            ref_l = labels if same_set else ref_labels
            return self.mine(emb, labels, ref, ref_l, same_set)


__all__ = ["BaseMiner"]
