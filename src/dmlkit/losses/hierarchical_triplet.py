"""Hierarchical (multi-level margin) triplet loss.

A triplet loss whose margin grows with how early in the label hierarchy the negative
departs from the anchor, so super-classes end up farther apart than classes within one.
In the spirit of Ge et al., "Deep Metric Learning with Hierarchical Triplet Loss"
(ECCV 2018) and Zhang et al., "Embedding Label Structures for Fine-Grained Feature
Representation" (CVPR 2016), whose margins depend on the tree distance between classes.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.functional.chunking import chunk_size_for
from dmlkit.functional.hierarchy import as_hierarchical, shared_depth, shared_depth_rowwise
from dmlkit.functional.tuples import IndexTuple, Pairs, Triplets, pairs_to_triplets
from dmlkit.losses._tuple_distances import pair_distances
from dmlkit.losses.base import BaseMetricLoss, mean_nonzero
from dmlkit.losses.weight_classifier import fused_chunk_sum
from dmlkit.registry import register_loss


def _margin_values(margins: object) -> tuple[float, ...]:
    """``margins`` (a sequence, or a 1-D numpy array or tensor, of real numbers) as a
    tuple of floats; anything else is a ``TypeError`` or ``ValueError`` naming it."""
    if isinstance(margins, (np.ndarray, Tensor)):
        if margins.ndim != 1:
            raise ValueError(
                f"margins must be 1-D, one value per level, got shape {tuple(margins.shape)}"
            )
        margins = margins.tolist()  # (Python floats or ints; bools and complex stay so)
    if isinstance(margins, (str, bytes)) or not isinstance(margins, Sequence):
        raise TypeError(f"margins must be a sequence of floats, got {margins!r}")
    if len(margins) == 0:
        raise ValueError("margins must have one value per level, got an empty sequence")
    if not all(isinstance(m, numbers.Real) and not isinstance(m, bool) for m in margins):
        raise TypeError(f"margins must hold one real number per level, got {list(margins)!r}")
    return tuple(float(m) for m in margins)


@register_loss("hierarchical_triplet")
class HierarchicalTripletLoss(BaseMetricLoss):
    """Triplet loss with one margin per level of a label hierarchy.

    Labels are ``(n, L)`` (coarsest level first; ``(n,)`` labels are a one-level
    hierarchy). A positive shares every level with the anchor; a negative that shares
    only the first ``s < L`` levels (``s`` = its *shared depth*) gets margin ``m_s``:

    ``L = mean over (a, p, n) with non-zero loss of relu(d(a, p) - d(a, n) + m_{s(a, n)})``

    (for a similarity: ``relu(s(a, n) - s(a, p) + m)``). With ``m_0 > m_1 > ...`` a
    negative from another super-class must be farther than one from a sibling class.
    Every triplet of the batch is used, exactly, in ``O(n m log m)`` time: subtracting
    each negative's margin from its distance turns the sum into a plain margin-0 triplet
    sum that prefix sums over sorted negatives evaluate per positive. Anchors are taken
    in row chunks (each chunk's gradient computed at once), so memory is ``O(chunk m)``.

    Parameters
    ----------
    margin : float
        Used when ``margins`` is None: ``m_s = margin * (L - s)``, proportional to the tree
        distance between the two classes (``margin`` for sibling classes).
    margins : sequence of float, 1-D array or tensor, optional
        Explicit ``(m_0, ..., m_{L-1})``; ``m_s`` applies to negatives that share the first
        ``s`` levels (``m_0``: differ already at the coarsest level). Its length must be
        the labels' ``L``.
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.EuclideanDistance` on normalized embeddings.

    Notes
    -----
    With ``indices`` (e.g. a miner's triplets) only those triplets are used; their margin
    comes from the labels (a "negative" with the anchor's full label gets ``m_{L-1}``).
    With ``indices`` and no labels every triplet gets the finest margin. With ``L = 1``
    this is :class:`~dmlkit.losses.TripletMarginLoss` with margin ``m_0``.
    """

    accepts_multi_labels = False

    def __init__(
        self,
        margin: float = 0.1,
        margins: Sequence[float] | None = None,
        distance: BaseDistance | None = None,
    ) -> None:
        super().__init__(distance=distance)
        if margin < 0:
            raise ValueError(f"HierarchicalTripletLoss: margin must be >= 0, got {margin}")
        self.margin = float(margin)
        self.margins = None if margins is None else _margin_values(margins)
        if self.margins is not None and any(m < 0 for m in self.margins):
            raise ValueError(
                f"HierarchicalTripletLoss: margins must all be >= 0, got {list(self.margins)}"
            )

    def margin_table(self, levels: int) -> list[float]:
        """``[m_0, ..., m_{L-1}]`` for labels with ``levels`` levels."""
        if self.margins is None:
            return [self.margin * (levels - s) for s in range(levels)]
        if len(self.margins) != levels:
            raise ValueError(
                f"margins has {len(self.margins)} values but the labels have {levels} levels"
            )
        return list(self.margins)

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        if labels is not None:
            labels = as_hierarchical(labels)
            ref_labels = labels if ref_labels is None else as_hierarchical(ref_labels, "ref_labels")
            if ref_labels.shape[1] != labels.shape[1]:
                raise ValueError(
                    f"labels have {labels.shape[1]} levels, ref_labels {ref_labels.shape[1]}"
                )
        if indices is None:
            return self._all_triplets(embeddings, labels, ref_embeddings, ref_labels)
        trip = pairs_to_triplets(indices) if isinstance(indices, Pairs) else Triplets(*indices[:3])
        if trip.anchor.numel() == 0:
            return self.zero_loss(embeddings)
        if labels is None:
            finest = self.margins[-1] if self.margins is not None else self.margin
            m = embeddings.new_full(trip.anchor.shape, finest)  # (T,)
        else:
            levels = labels.shape[1]
            table = torch.tensor(self.margin_table(levels), dtype=embeddings.dtype)
            depth = shared_depth_rowwise(labels[trip.anchor], ref_labels[trip.negative])  # (T,)
            m = table.to(embeddings.device)[depth.clamp_max(levels - 1)]  # (T,)
        (d_ap, d_an), _ = pair_distances(
            self.distance,
            embeddings,
            ref_embeddings,
            [(trip.anchor, trip.positive), (trip.anchor, trip.negative)],
        )  # (T,) each, no (T, dim) copies
        sign = -1.0 if self.distance.is_similarity else 1.0
        return mean_nonzero(torch.relu(sign * (d_ap - d_an) + m), embeddings)

    def _all_triplets(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor,
    ) -> Tensor:
        x = self.distance.maybe_normalize(embeddings)  # (n, d)
        ref = x if ref_embeddings is None else self.distance.maybe_normalize(ref_embeddings)
        exclude_self = ref_embeddings is None
        levels = labels.shape[1]
        table = torch.tensor(self.margin_table(levels), dtype=x.dtype, device=x.device)  # (L,)
        sign = -1.0 if self.distance.is_similarity else 1.0

        def chunk_terms(xc: Tensor, ref_: Tensor, lc: Tensor, rows: Tensor) -> tuple[Tensor, ...]:
            e = sign * self.distance.compute_matrix(xc, ref_)  # (c, m), smaller = closer
            depth = shared_depth(lc, ref_labels)  # (c, m)
            pos = depth == levels  # (c, m)
            if exclude_self:
                cols = torch.arange(pos.shape[1], device=pos.device)  # (m,)
                pos = pos & (rows[:, None] != cols[None, :])  # (c, m)
            neg = depth < levels  # (c, m)
            # e_ap - e_an + m_s = e_ap - (e_an - m_s): margin-0 triplets on shifted negatives
            shifted = e - table[depth.clamp_max(levels - 1)]  # (c, m)
            neg_sorted, _ = torch.sort(shifted.masked_fill(~neg, float("inf")), dim=1)  # (c, m)
            finite = torch.where(torch.isinf(neg_sorted), torch.zeros_like(neg_sorted), neg_sorted)
            prefix = F.pad(torch.cumsum(finite.double(), dim=1), (1, 0))  # (c, m + 1)
            # number of shifted negatives strictly below each positive's e_ap
            cnt = torch.searchsorted(neg_sorted.detach().contiguous(), e.detach().contiguous())
            cnt = cnt * pos  # (c, m), only real positives contribute
            per_pos = cnt * e.double() - prefix.gather(1, cnt)  # (c, m) sum over negatives
            return per_pos.sum().to(e.dtype), cnt.sum()

        n, m = x.shape[0], ref.shape[0]
        chunk = chunk_size_for(n, m * (8 + levels))
        rows = torch.arange(n, device=x.device)  # (n,) batch index of each anchor
        total, count = fused_chunk_sum(
            chunk_terms, n, chunk, (x, ref, labels, rows), (True, False, True, True)
        )
        return total / count.clamp_min(1)
