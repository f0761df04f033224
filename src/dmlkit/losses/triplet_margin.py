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
from dmlkit.losses._rows import RowWeights
from dmlkit.losses._tuple_distances import (
    closed_form_loss,
    pair_distances,
    triplet_count,
)
from dmlkit.losses.base import BaseMetricLoss, mean_nonzero
from dmlkit.registry import register_loss

#: mined pairs are joined into triplets only when there are fewer than this many per
#: entry of the (n, m) matrix; above it each anchor's negatives are sorted instead
SORTED_RATIO = 2


def _n_ref(embeddings: Tensor, ref_embeddings: Tensor | None) -> int:
    return embeddings.shape[0] if ref_embeddings is None else ref_embeddings.shape[0]


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
        (Balntas et al. 2016). With ``ref_embeddings`` the positive and the negative
        are both reference rows, so this is ``d(ref_p, ref_n)``.
    smooth_loss : bool
        ``softplus(violation)`` instead of ``relu`` (soft-margin triplet, Hermans et al. 2017).
    triplets_per_anchor : "all"
        Only ``"all"`` is supported; use a miner to select fewer triplets.
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.EuclideanDistance` on normalized embeddings.

    Matches pytorch-metric-learning's ``TripletMarginLoss`` with its default reducer,
    except ``swap`` with ``ref_embeddings``: pytorch-metric-learning 2.x takes the
    positive-negative distance with the positive's reference index used as a row of the
    query batch, ``d(embeddings[p], ref_n)``; this one takes ``d(ref_p, ref_n)``, the
    distance between the triplet's own positive and negative.
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
        if margin < 0:
            raise ValueError(f"TripletMarginLoss: margin must be >= 0, got {margin}")
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
        plain = not (self.swap or self.smooth_loss)
        if plain and isinstance(indices, Pairs):
            n, m = embeddings.shape[0], _n_ref(embeddings, ref_embeddings)
            if triplet_count(indices, n) > SORTED_RATIO * n * m:
                return self._pairs_sorted(embeddings, indices, ref_embeddings)
        trip = pairs_to_triplets(indices) if isinstance(indices, Pairs) else Triplets(*indices[:3])
        if trip.anchor.numel() == 0:
            return self.zero_loss(embeddings)
        if plain:
            return self._given_closed_form(embeddings, trip, ref_embeddings)
        # the distances come from one matrix (or one gather when the triplets are few):
        # no (T, dim) copies of the anchor / positive / negative rows
        (d_ap, d_an), ref_d = pair_distances(
            self.distance,
            embeddings,
            ref_embeddings,
            [(trip.anchor, trip.positive), (trip.anchor, trip.negative)],
            ref_requests=[(trip.positive, trip.negative)] if self.swap else (),
        )  # (T,) each
        if self.swap:
            d_pn = ref_d[0]  # (T,)
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

    # -- given triplets, many: one matrix, loss and gradient in closed form -----------------
    def _given_closed_form(
        self, embeddings: Tensor, trip: Triplets, ref_embeddings: Tensor | None
    ) -> Tensor:
        """Mean non-zero hinge over ``T`` triplets read from one ``(n, m)`` matrix.

        A handful of ``(T,)`` passes without autograd; the active triplets' weights go
        back through the matrix's closed-form gradient (see ``closed_form_loss``).
        """
        sign = -1.0 if self.distance.is_similarity else 1.0

        def terms(d: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
            v = d[0].sub_(d[1])  # (T,) d_ap - d_an
            if sign < 0:
                v.neg_()
            v.add_(self.margin)  # (T,) violation
            active = v > 0  # (T,)
            count = active.sum().clamp_min(1)
            value = v.clamp_min_(0.0).sum() / count
            w = active.to(v.dtype).mul_(sign / count)  # (T,) d loss / d d_ap
            return value, [w, -w]

        requests = [(trip.anchor, trip.positive), (trip.anchor, trip.negative)]
        return closed_form_loss(self.distance, embeddings, ref_embeddings, requests, terms)

    # -- mined pairs joined into triplets, without listing them -----------------------------
    def _pairs_sorted(
        self, embeddings: Tensor, pairs: Pairs, ref_embeddings: Tensor | None
    ) -> Tensor:
        """Every triplet ``(a, p, n)`` joined from a positive pair ``(a, p)`` and a negative
        pair ``(a, n)``, as :func:`~dmlkit.functional.pairs_to_triplets` would list them
        (duplicates count as often as listed), summed per anchor through its sorted
        negatives' weighted prefix sums: O(n m log m), never O(T)."""
        x = self.distance.maybe_normalize(embeddings)  # (n, d)
        ref = x if ref_embeddings is None else self.distance.maybe_normalize(ref_embeddings)
        n, m = x.shape[0], ref.shape[0]
        weights = RowWeights(None, None, pairs, m, ref_embeddings is None)
        sign = -1.0 if self.distance.is_similarity else 1.0
        margin = self.margin

        def chunk_terms(a: int, b: int, x_: Tensor, ref_: Tensor) -> tuple[Tensor, Tensor]:
            e = sign * self.distance.compute_matrix(x_[a:b], ref_)  # (c, m), smaller = closer
            wp, wn = weights(a, b, torch.float64, e.device)  # (c, m) multiplicities
            neg_sorted, order = torch.sort(e.masked_fill(wn == 0, float("inf")), dim=1)
            w_sorted = wn.gather(1, order)  # (c, m)
            finite = torch.where(torch.isinf(neg_sorted), torch.zeros_like(neg_sorted), neg_sorted)
            prefix_w = F.pad(torch.cumsum(w_sorted, dim=1), (1, 0))  # (c, m + 1)
            prefix_e = F.pad(torch.cumsum(finite.double() * w_sorted, dim=1), (1, 0))
            thresh = e + margin  # (c, m): violated by negatives with e_an < e_ap + margin
            k = torch.searchsorted(neg_sorted.detach().contiguous(), thresh.detach().contiguous())
            cnt = prefix_w.gather(1, k) * wp  # (c, m) violating triplets of each positive
            per_pos = cnt * thresh.double() - prefix_e.gather(1, k) * wp  # (c, m)
            return per_pos.sum().to(e.dtype), cnt.sum()

        total, count = chunked_sum(chunk_terms, n, eager_chunk_size(n, m), x, ref)
        return (total / count.clamp_min(1)).to(total.dtype)  # the count is float64

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
