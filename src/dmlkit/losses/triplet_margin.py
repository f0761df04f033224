"""Triplet margin loss (Weinberger & Saul 2009; Schroff et al., FaceNet, CVPR 2015)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.functional.chunking import chunk_size_for, chunked_sum, eager_chunk_size
from dmlkit.functional.labels import pos_neg_masks
from dmlkit.functional.tuples import IndexTuple, Pairs, Triplets, pairs_to_triplets
from dmlkit.losses.base import BaseMetricLoss, mean_nonzero
from dmlkit.registry import register_loss


@register_loss("triplet_margin")
class TripletMarginLoss(BaseMetricLoss):
    """``relu(d(a, p) - d(a, n) + margin)`` averaged over the triplets with non-zero loss.

    For a similarity the violation is ``s(a, n) - s(a, p) + margin``. With ``labels`` and
    no ``indices`` every valid triplet of the batch is used, without materializing them:
    for each anchor the negatives' distances are sorted once and each positive's sum over
    negatives is read from prefix sums, so the exact all-triplets loss costs
    O(n * m log m) time and O(chunk * m) memory instead of O(n * m^2). ``swap`` and
    ``smooth_loss`` use a chunked dense path (O(chunk * m^2) memory per chunk).

    Parameters
    ----------
    margin : float
        Desired gap between anchor-negative and anchor-positive distances.
    swap : bool
        Use the positive-negative distance when it is harder than anchor-negative
        (Balntas et al. 2016).
    smooth_loss : bool
        ``softplus(violation)`` instead of ``relu`` (soft-margin triplet, Hermans et al. 2017).
    triplets_per_anchor : "all"
        Only ``"all"`` is supported; use a miner to select fewer triplets.
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.EuclideanDistance` on normalized embeddings.

    Matches pytorch-metric-learning's ``TripletMarginLoss`` with its default reducer.
    """

    def __init__(
        self,
        margin: float = 0.05,
        swap: bool = False,
        smooth_loss: bool = False,
        triplets_per_anchor: Literal["all"] = "all",
        distance: BaseDistance | None = None,
    ) -> None:
        super().__init__(distance=distance)
        if triplets_per_anchor != "all":
            raise ValueError(
                f"triplets_per_anchor={triplets_per_anchor!r} is not supported; "
                "use 'all' and a miner (e.g. TripletMarginMiner) to select triplets"
            )
        self.margin = float(margin)
        self.swap = swap
        self.smooth_loss = smooth_loss
        self.triplets_per_anchor = triplets_per_anchor

    def _cost(self, violation: Tensor) -> Tensor:
        return F.softplus(violation) if self.smooth_loss else torch.relu(violation)

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        if indices is None:
            if self.swap or self.smooth_loss:
                return self._all_triplets_dense(embeddings, labels, ref_embeddings, ref_labels)
            return self._all_triplets_sorted(embeddings, labels, ref_embeddings, ref_labels)
        trip = pairs_to_triplets(indices) if isinstance(indices, Pairs) else Triplets(*indices[:3])
        if trip.anchor.numel() == 0:
            return self.zero_loss(embeddings)
        ref = embeddings if ref_embeddings is None else ref_embeddings
        a, p, n = embeddings[trip.anchor], ref[trip.positive], ref[trip.negative]
        d_ap = self.distance.pairwise(a, p)  # (T,)
        d_an = self.distance.pairwise(a, n)  # (T,)
        if self.swap:
            d_pn = self.distance.pairwise(p, n)  # (T,)
            d_an = (
                torch.maximum(d_an, d_pn)
                if self.distance.is_similarity
                else torch.minimum(d_an, d_pn)
            )
        violation = self._violation(d_ap, d_an)  # (T,)
        return mean_nonzero(self._cost(violation), embeddings)

    def _violation(self, d_ap: Tensor, d_an: Tensor) -> Tensor:
        if self.distance.is_similarity:
            return d_an - d_ap + self.margin
        return d_ap - d_an + self.margin

    # -- all triplets, exact, via sorting --------------------------------------------------
    def _all_triplets_sorted(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        x = self.distance.maybe_normalize(embeddings)  # (n, d)
        ref = x if ref_embeddings is None else self.distance.maybe_normalize(ref_embeddings)
        full_ref_labels = labels if ref_labels is None else ref_labels
        exclude_self = ref_embeddings is None
        sign = -1.0 if self.distance.is_similarity else 1.0
        margin = self.margin

        def chunk_terms(a: int, b: int, x_: Tensor, ref_: Tensor) -> tuple[Tensor, Tensor]:
            e = sign * self.distance.compute_matrix(x_[a:b], ref_)  # (c, m), smaller = closer
            pos, neg = pos_neg_masks(
                labels[a:b], full_ref_labels, exclude_self=exclude_self, row_offset=a
            )
            neg_sorted, _ = torch.sort(e.masked_fill(~neg, float("inf")), dim=1)  # (c, m)
            finite = torch.where(torch.isinf(neg_sorted), torch.zeros_like(neg_sorted), neg_sorted)
            prefix = F.pad(torch.cumsum(finite.double(), dim=1), (1, 0))  # (c, m + 1)
            thresh = e + margin  # (c, m): violation > 0  <=>  e_an < e_ap + margin
            cnt = torch.searchsorted(
                neg_sorted.detach().contiguous(), thresh.detach().contiguous()
            )  # (c, m)
            cnt = cnt * pos  # only real positives contribute
            per_pos = cnt * thresh.double() - prefix.gather(1, cnt)  # (c, m) sum over negatives
            return per_pos.sum().to(e.dtype), cnt.sum()

        n, m = x.shape[0], ref.shape[0]
        # gradients are taken chunk by chunk, so small chunks cost no recomputation
        total, count = chunked_sum(chunk_terms, n, eager_chunk_size(n, m), x, ref)
        return total / count.clamp_min(1)

    # -- all triplets, dense (swap / smooth) -------------------------------------------------
    def _all_triplets_dense(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        x = self.distance.maybe_normalize(embeddings)  # (n, d)
        ref = x if ref_embeddings is None else self.distance.maybe_normalize(ref_embeddings)
        full_ref_labels = labels if ref_labels is None else ref_labels
        exclude_self = ref_embeddings is None
        d_ref = self.distance.compute_matrix(ref, ref) if self.swap else None  # (m, m)

        def chunk_terms(
            a: int, b: int, x_: Tensor, ref_: Tensor, *d_ref_: Tensor
        ) -> tuple[Tensor, Tensor]:
            d = self.distance.compute_matrix(x_[a:b], ref_)  # (c, m)
            pos, neg = pos_neg_masks(
                labels[a:b], full_ref_labels, exclude_self=exclude_self, row_offset=a
            )
            d_ap = d[:, :, None]  # (c, m, 1)
            d_an = d[:, None, :]  # (c, 1, m)
            if d_ref_:
                d_pn = d_ref_[0][None, :, :]  # (1, m, m)
                d_an = (
                    torch.maximum(d_an, d_pn)
                    if self.distance.is_similarity
                    else torch.minimum(d_an, d_pn)
                )
            valid = pos[:, :, None] & neg[:, None, :]  # (c, m, m)
            cost = self._cost(self._violation(d_ap, d_an)) * valid  # (c, m, m)
            return cost.sum(), (cost > 0).sum()

        n, m = x.shape[0], ref.shape[0]
        chunk = chunk_size_for(n, m * m * 4)
        # d_ref goes in as an argument: chunked_sum differentiates only through arguments
        extra = () if d_ref is None else (d_ref,)
        total, count = chunked_sum(chunk_terms, n, chunk, x, ref, *extra)
        return total / count.clamp_min(1)
