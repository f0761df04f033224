"""N-pair loss (Sohn, NeurIPS 2016)."""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.dot_product import DotProductSimilarity
from dmlkit.functional.labels import pos_neg_masks
from dmlkit.functional.tuples import IndexTuple
from dmlkit.losses._rows import as_pairs, chunk_bounds, pack, sum_over_chunks
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.registry import register_loss


@register_loss("n_pairs")
class NPairsLoss(BaseMetricLoss):
    r"""Multi-class N-pair loss: one (anchor, positive) pair per class, softmax over pairs.

    With :math:`N` pairs :math:`(a_i, p_i)` of distinct classes,

    .. math::

        \ell = \frac{1}{N}\sum_i -\log \frac{e^{s(a_i, p_i)}}{\sum_j e^{s(a_i, p_j)}}

    so every other class's positive is a negative. For a distance ``-d`` is the similarity.

    Which pair stands for a class (pytorch-metric-learning's ``NPairsLoss`` rule, so both
    give the same value on the same tuples): of the positive pairs, taken in the order
    they are listed, the first whose anchor has that label. Without ``indices`` the
    batch's positive pairs are listed row-major, so each class is represented by its
    lowest-index item (with a positive) and that item's lowest-index positive. With
    ``indices`` (Pairs ``(a1, p, a2, n)``, or the ``(a, p)`` of triplets) the listing
    order decides, and the negative pairs are not used: reordering the positive pairs can
    change the value. Miners list their pairs in their own order, e.g. dmlkit's
    :class:`~dmlkit.miners.MultiSimilarityMiner` row-major (each anchor's positives by
    index) and pytorch-metric-learning's ``MultiSimilarityMiner`` each anchor's positives
    from least to most similar, so the two libraries' miner-plus-loss pipelines can keep
    different pairs of the same mined set. With ``indices`` and no labels, every listed
    pair is taken as its own class (Sohn's batch construction). Hierarchical ``(n, L)``
    labels group by leaf class (the full label row); ``(n, C)`` multi-labels are refused.

    Parameters
    ----------
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.DotProductSimilarity` on normalized embeddings.

    Notes
    -----
    Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective",
    NeurIPS 2016. The (N, N) logits are processed in row chunks recomputed in backward.
    """

    def __init__(self, distance: BaseDistance | None = None) -> None:
        super().__init__(distance=distance)

    @staticmethod
    def default_distance() -> BaseDistance:
        return DotProductSimilarity()

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        if labels is not None and labels.dtype == torch.bool:
            raise ValueError(
                "NPairsLoss needs (n,) class or (n, L) hierarchical labels: it keeps one "
                "pair per class and uses the other pairs' positives as negatives, and "
                "(n, C) multi-labels define no classes (items sharing a label can hold "
                "different label sets); pass Pairs indices without labels (each listed pair is "
                "then its own class)"
            )
        ref = embeddings if ref_embeddings is None else ref_embeddings
        if indices is None:
            a, p = _first_positive_per_row(labels, ref_labels)  # (k,), (k,)
        else:
            pairs = as_pairs(indices)
            a, p = pairs.a1, pairs.p
        keys = torch.arange(a.numel(), device=a.device) if labels is None else labels[a]
        keep = _first_of_each_key(keys)
        a, p = a[keep], p[keep]  # (N,)
        if a.numel() == 0:
            return self.zero_loss(embeddings)
        xa = self.distance.maybe_normalize(embeddings[a])  # (N, d)
        xp = self.distance.maybe_normalize(ref[p])  # (N, d)
        sign = 1.0 if self.distance.is_similarity else -1.0

        def chunk_terms(start: int, stop: int, xa_: Tensor, xp_: Tensor) -> Tensor:
            logits = sign * self.distance.compute_matrix(xa_[start:stop], xp_)  # (c, N)
            rows = torch.arange(stop - start, device=logits.device)
            target = logits[rows, rows + start]  # (c,)
            return pack((torch.logsumexp(logits, dim=1) - target).sum())

        (total,) = sum_over_chunks(chunk_terms, a.numel(), 3 * a.numel(), xa, xp)
        return total / a.numel()


def _first_positive_per_row(labels: Tensor, ref_labels: Tensor | None) -> tuple[Tensor, Tensor]:
    """Anchors with a positive and their first positive, ``(k,), (k,)`` (no gradient)."""
    full_ref = labels if ref_labels is None else ref_labels
    m = full_ref.shape[0]
    anchors, positives = [], []
    _, bounds = chunk_bounds(labels.shape[0], m)
    for start, stop in bounds:
        pos, _ = pos_neg_masks(
            labels[start:stop], full_ref, exclude_self=ref_labels is None, row_offset=start
        )  # (c, m)
        has = pos.any(dim=1)  # (c,)
        first = pos.to(torch.uint8).argmax(dim=1)  # (c,) first True column
        anchors.append(torch.nonzero(has).squeeze(1) + start)
        positives.append(first[has])
    return torch.cat(anchors), torch.cat(positives)


def _first_of_each_key(keys: Tensor) -> Tensor:
    """Positions of the first occurrence of each distinct key (row), sorted by key."""
    if keys.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=keys.device)
    _, inverse = torch.unique(keys, dim=0, return_inverse=True)  # (k,)
    positions = torch.arange(keys.shape[0], device=keys.device)
    first = torch.full((int(inverse.max()) + 1,), keys.shape[0], device=keys.device)
    return first.scatter_reduce(0, inverse, positions, reduce="amin")
