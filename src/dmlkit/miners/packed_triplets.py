"""Embeddings that arrive already packed as triplets: rows (anchor, positive, negative)."""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.functional.distances import check_embeddings
from dmlkit.functional.labels import check_labels
from dmlkit.functional.reference import resolve_reference
from dmlkit.functional.tuples import Triplets
from dmlkit.miners.base import BaseMiner
from dmlkit.registry import register_miner


def packed_triplets(n: int, device: torch.device | str | None = None) -> Triplets:
    """Triplets ``(3i, 3i + 1, 3i + 2)`` of a batch of ``n`` rows packed as triplets.

    Raises ``ValueError`` unless ``n`` is a multiple of 3.
    """
    if n < 0 or n % 3:
        raise ValueError(f"a batch packed as triplets needs a multiple of 3 rows, got {n}")
    start = torch.arange(0, n, 3, device=device)  # (n / 3,)
    return Triplets(start, start + 1, start + 2)


@register_miner("packed_triplets")
class PackedTripletsMiner(BaseMiner):
    """The triplets a batch already is: rows ``3i, 3i + 1, 3i + 2`` are (anchor, positive,
    negative).

    pytorch-metric-learning's ``EmbeddingsAlreadyPackagedAsTriplets`` (also exported
    under that name): labels are not needed and are ignored when given, so a tuple
    loss trains from triplets that carry no class labels::

        loss(embeddings, indices=PackedTripletsMiner()(embeddings))

    The batch must hold a multiple of 3 rows (``ValueError`` otherwise, where
    pytorch-metric-learning fails an assertion). There is no reference-set form: the
    positives and negatives are rows of the batch itself.
    """

    #: the miner reads the batch layout, not labels
    takes_labels = False

    def __init__(self) -> None:
        super().__init__(distance=None)

    def forward(  # type: ignore[override]
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Triplets:
        ref_embeddings, ref_labels = resolve_reference(
            embeddings, labels, ref_embeddings, ref_labels
        )  # the batch as its own reference is no reference
        check_embeddings(embeddings)
        if labels is not None:
            labels = check_labels(labels, embeddings.shape[0], allow_empty_rows=False)
        if ref_embeddings is not None or ref_labels is not None:
            raise ValueError(
                "PackedTripletsMiner has no reference-set form: triplets are batch rows"
            )
        return packed_triplets(embeddings.shape[0], embeddings.device)

    def mine(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor,
        ref_labels: Tensor,
        same_set: bool,
    ) -> Triplets:
        return packed_triplets(embeddings.shape[0], embeddings.device)


EmbeddingsAlreadyPackagedAsTriplets = PackedTripletsMiner

__all__ = ["PackedTripletsMiner", "EmbeddingsAlreadyPackagedAsTriplets", "packed_triplets"]
