"""Base class of every miner: ``miner(embeddings, labels, ref_embeddings=None, ref_labels=None)``.

A miner returns :class:`~dmlkit.functional.Pairs`, :class:`~dmlkit.functional.Triplets`
(or :class:`~dmlkit.functional.Quadruplets`) of indices (anchors into ``embeddings``,
positives / negatives into the reference set) and never builds a graph.

Without a reference set an anchor is never its own positive. The batch passed as its
own reference (``ref_embeddings=embeddings, ref_labels=labels``, both the same tensor
objects) is no reference, so that holds then too. Other ``ref_embeddings`` (a detached
copy, a momentum encoder's keys) keep the diagonal pairs ``(i, i)`` even with
``ref_labels=labels``, where pytorch-metric-learning drops them whenever
``ref_labels is labels``; for its result mine without a reference set, or drop the
tuples whose positive equals their anchor
(:func:`dmlkit.functional.reference.resolve_reference`).

Embeddings are measured without gradients in their own dtype (promoted with the
reference set's), half precision raised to float32 (:func:`mining_dtype`): float64
selections follow differences below float32's resolution, as pytorch-metric-learning's
do.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from dmlkit._finite import check_finite
from dmlkit.distances import matrix_memo as memo
from dmlkit.distances.base import BaseDistance, check_distance
from dmlkit.distances.euclidean import EuclideanDistance
from dmlkit.functional.chunking import chunk_size_for, row_chunks
from dmlkit.functional.distances import check_embeddings
from dmlkit.functional.labels import check_labels, pos_neg_masks
from dmlkit.functional.reference import resolve_reference
from dmlkit.functional.tuples import IndexTuple, Pairs, Quadruplets, Triplets


class BaseMiner(nn.Module):
    """Validation and no-grad handling shared by every miner; subclasses implement ``mine``."""

    #: "pairs" or "triplets": what :meth:`forward` returns
    output_kind: str = "triplets"
    #: whether :meth:`row_blocks`' matrix, when one block holds every row, is left
    #: unmodified by :meth:`mine` and may be handed to the loss that follows
    #: (:mod:`dmlkit.distances.matrix_memo`)
    shares_matrix: bool = False
    #: float attributes that may be +-inf (open ends of ranges); no float may be NaN,
    #: and any other must be finite (checked whenever one is set)
    infinite_ok: frozenset[str] = frozenset()
    _sources: tuple[Tensor, Tensor | None] | None = None

    def __init__(self, distance: BaseDistance | None = None) -> None:
        super().__init__()
        check_distance(type(self).__name__, distance)
        self.distance = distance if distance is not None else EuclideanDistance()

    def __setattr__(self, name: str, value: object) -> None:
        # a NaN margin or epsilon would mine nothing, silently: refused when built
        check_finite(type(self).__name__, name, value, allow_inf=name in self.infinite_ok)
        super().__setattr__(name, value)

    def mine(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor,
        ref_labels: Tensor,
        same_set: bool,
    ) -> Pairs | Triplets | Quadruplets:
        raise NotImplementedError

    def row_blocks(
        self,
        x: Tensor,
        labels: Tensor,
        ref: Tensor,
        ref_labels: Tensor,
        same_set: bool,
        elems_per_row: int = 4,
    ) -> Iterator[tuple[int, Tensor, Tensor, Tensor]]:
        """Walk the anchors in row chunks (O(chunk * m) memory per block).

        ``x (n, dim)`` and ``ref (m, dim)`` are already normalized. Yields
        ``(start, mat (c, m), pos (c, m), neg (c, m))``: the chunk's first anchor index,
        its distance (or similarity) rows and positive / negative masks (an anchor is
        never its own positive when ``same_set``). ``elems_per_row`` scales the chunk
        to the temporaries a miner keeps per matrix entry.
        """
        n, m = x.shape[0], ref.shape[0]
        for a, b in row_chunks(n, chunk_size_for(n, m * elems_per_row)):
            mat = self.distance.compute_matrix(x[a:b], ref)  # (c, m)
            if self.shares_matrix and self._sources is not None and a == 0 and b == n:
                memo.remember(*self._sources, self.distance, mat)
            pos, neg = pos_neg_masks(labels[a:b], ref_labels, exclude_self=same_set, row_offset=a)
            yield a, mat, pos, neg

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Pairs | Triplets | Quadruplets:
        # the batch as its own reference is no reference (self-pairs excluded)
        ref_embeddings, ref_labels = resolve_reference(
            embeddings, labels, ref_embeddings, ref_labels
        )
        check_embeddings(embeddings)
        labels = check_labels(labels, embeddings.shape[0], allow_empty_rows=False)
        if (ref_embeddings is None) != (ref_labels is None):
            raise ValueError("ref_embeddings and ref_labels must be given together")
        if ref_embeddings is not None:
            check_embeddings(ref_embeddings, "ref_embeddings")
            ref_labels = check_labels(
                ref_labels, ref_embeddings.shape[0], "ref_labels", allow_empty_rows=False
            )
            if ref_embeddings.shape[1] != embeddings.shape[1]:
                raise ValueError(
                    f"ref_embeddings have dim {ref_embeddings.shape[1]}, "
                    f"embeddings have dim {embeddings.shape[1]}"
                )
        same_set = ref_embeddings is None
        memo.forget()  # a matrix of an earlier step is never read after a new mining
        if not same_set and ref_embeddings.shape[0] == 0:  # no reference item: no tuple
            return cat_tuples([], _KINDS[self.output_kind], embeddings.device)
        self._sources = (embeddings, ref_embeddings)
        try:
            with torch.no_grad():
                dtype = mining_dtype(embeddings, None if same_set else ref_embeddings)
                emb = embeddings.detach().to(dtype)
                ref = emb if same_set else ref_embeddings.detach().to(dtype)
                ref_l = labels if same_set else ref_labels
                return self.mine(emb, labels, ref, ref_l, same_set)
        finally:
            self._sources = None


def mining_dtype(embeddings: Tensor, ref_embeddings: Tensor | None = None) -> torch.dtype:
    """The dtype miners measure in: the embeddings' (promoted with the reference set's),
    with half precision (float16, bfloat16) raised to float32. float64 stays float64, so
    differences below float32's resolution still decide a selection."""
    dtype = embeddings.dtype
    if ref_embeddings is not None:
        dtype = torch.promote_types(dtype, ref_embeddings.dtype)
    return torch.float32 if torch.finfo(dtype).bits < 32 else dtype


#: the tuple type of each ``output_kind``
_KINDS: dict[str, type[IndexTuple]] = {
    "pairs": Pairs, "triplets": Triplets, "quadruplets": Quadruplets}


def cat_tuples(
    parts: list[tuple[Tensor, ...]], kind: type[IndexTuple], device: torch.device
) -> IndexTuple:
    """Concatenate per-chunk index tuples into one ``kind`` (empty when there are none)."""
    if not parts:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return kind(*(empty for _ in kind._fields))
    return kind(*(torch.cat(p) for p in zip(*parts, strict=True)))


__all__ = ["BaseMiner", "cat_tuples", "mining_dtype"]
