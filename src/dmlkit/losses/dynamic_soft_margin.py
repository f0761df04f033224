"""Dynamic soft-margin loss (Zhang & Rusinkiewicz, "Learning Local Descriptors with a
CDF-Based Dynamic Soft Margin", ICCV 2019)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.euclidean import EuclideanDistance
from dmlkit.functional.chunking import chunk_size_for, chunked_sum, row_chunks
from dmlkit.functional.distances import check_embeddings
from dmlkit.functional.labels import pos_neg_masks
from dmlkit.functional.tuples import IndexTuple, Pairs, Triplets, pairs_to_triplets
from dmlkit.losses._tuple_distances import pair_distances
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.registry import register_loss


@register_loss("dynamic_soft_margin")
class DynamicSoftMarginLoss(BaseMetricLoss):
    r"""Triplet differences weighted by their running CDF: a margin that adapts itself.

    For each triplet (or matched pair, see below) :math:`x = d_{ap} - d_{an}`; a
    histogram :math:`h` of :math:`x` over ``num_bins`` bins of width
    :math:`\delta = 2|\text{min\_val}| / \text{num\_bins}` starting at ``min_val``
    (linear interpolation between the two nearest bins) is kept as a running average,
    :math:`h \leftarrow \mathrm{normalize}((1 - m) h + m\, h_{\text{batch}})` (``m = 1``
    on the first batch), and

    .. math::

        L = \frac{1}{T} \sum_t \mathrm{CDF}_h(x_t)\, x_t .

    Hard triplets (large :math:`x`) weigh most. Gradients flow through :math:`x` and
    through the current batch's share of the histogram, as in pytorch-metric-learning's
    ``DynamicSoftMarginLoss`` (same parameters and values); unlike it, the stored
    histogram is detached between calls (pytorch-metric-learning's second backward
    fails) and values outside the bins fall into the end bins instead of raising.

    Inputs: ``labels`` (all triplets, walked in anchor chunks), ``indices`` (triplets;
    pairs are joined on their anchors), or neither with ``ref_embeddings`` (row ``i`` of
    ``embeddings`` and of ``ref_embeddings`` match; the hardest negative of pair ``i`` is
    the closest non-matching entry of row ``i`` or column ``i``, the paper's descriptor
    setting).

    Parameters
    ----------
    min_val : float
        Lower end of the histogram, :math:`x \ge` ``min_val``.
    num_bins : int
    momentum : float
        Weight :math:`m` of the current batch's histogram.
    distance : EuclideanDistance, optional
        Must be a Euclidean distance on normalized embeddings (squared or not).

    Attributes
    ----------
    hist_ : Tensor of shape (num_bins,)
        The running histogram (a buffer: saved with the state).
    """

    def __init__(
        self,
        min_val: float = -2.0,
        num_bins: int = 10,
        momentum: float = 0.01,
        distance: BaseDistance | None = None,
    ) -> None:
        super().__init__(distance=distance)
        d = self.distance
        if not (isinstance(d, EuclideanDistance) and d.normalize_embeddings):
            raise TypeError(
                "DynamicSoftMarginLoss needs EuclideanDistance(normalize_embeddings=True), "
                f"got {d!r}"
            )
        if int(num_bins) < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}")
        if float(min_val) == 0:
            raise ValueError("min_val must be non-zero (it sets the bin width)")
        self.min_val = float(min_val)
        self.num_bins = int(num_bins)
        self.momentum = float(momentum)
        self.delta = 2 * abs(self.min_val) / self.num_bins
        self.register_buffer("hist_", torch.zeros(self.num_bins))

    # -- entry ------------------------------------------------------------------------
    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        *,
        indices: Any = None,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        if labels is not None or indices is not None:
            return super().forward(
                embeddings,
                labels,
                indices=indices,
                ref_embeddings=ref_embeddings,
                ref_labels=ref_labels,
            )
        if ref_embeddings is None:
            raise ValueError(
                "DynamicSoftMarginLoss needs labels, indices, or ref_embeddings matching "
                "embeddings row by row"
            )
        if ref_labels is not None:
            raise ValueError("ref_labels were given without labels")
        check_embeddings(embeddings)
        check_embeddings(ref_embeddings, "ref_embeddings")
        if ref_embeddings.shape[1] != embeddings.shape[1]:
            raise ValueError(
                f"ref_embeddings have dim {ref_embeddings.shape[1]}, "
                f"embeddings have dim {embeddings.shape[1]}"
            )
        if embeddings.shape[0] == 0 or ref_embeddings.shape[0] == 0:
            return self.zero_loss(embeddings) + ref_embeddings.sum() * 0.0
        x, r = embeddings, ref_embeddings
        if x.dtype in (torch.float16, torch.bfloat16):
            x, r = x.float(), r.float()
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._weighted_mean(self._matched_pairs(x, r.to(x.dtype)), embeddings)

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        if indices is not None:
            trip = (
                pairs_to_triplets(indices) if isinstance(indices, Pairs)
                else Triplets(*indices[:3])
            )
            (d_ap, d_an), _ = pair_distances(
                self.distance,
                embeddings,
                ref_embeddings,
                [(trip.anchor, trip.positive), (trip.anchor, trip.negative)],
            )  # (T,) each, no (T, dim) copies
            data = d_ap - d_an  # (T,)
            return self._weighted_mean(data, embeddings)
        return self._all_triplets(embeddings, labels, ref_embeddings, ref_labels)

    # -- the pieces ---------------------------------------------------------------------
    def _matched_pairs(self, embeddings: Tensor, ref_embeddings: Tensor) -> Tensor:
        mat = self.distance(embeddings, ref_embeddings)  # (r, c)
        r, c = mat.shape
        k, big = min(r, c), max(r, c)
        d_pos = mat.new_zeros(big)
        d_pos[:k] = mat.diagonal()
        eye = torch.zeros_like(mat, dtype=torch.bool)
        eye[range(k), range(k)] = True
        off = mat.masked_fill(eye, float("inf"))  # (r, c)
        min_a, min_p = mat.new_zeros(big), mat.new_zeros(big)
        min_a[:c] = off.min(dim=0).values
        min_p[:r] = off.min(dim=1).values
        return d_pos - torch.minimum(min_a, min_p)  # (max(r, c),)

    def _bins(self, data: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Bin index, interpolation weight and in-range flag of each value."""
        pos = (data - self.min_val) / self.delta
        top = self.num_bins - 1
        clamped = pos.clamp(0.0, float(top))
        idx = clamped.floor().long()
        return idx, clamped - idx, (pos >= 0) & (pos < top)

    def _batch_hist(self, data: Tensor) -> tuple[Tensor, Tensor]:
        """Unnormalized histogram of ``data`` and the per-bin sums of ``data``."""
        idx, alpha, _ = self._bins(data)
        hist = data.new_zeros(self.num_bins)
        hist.index_add_(0, idx, 1.0 - alpha)
        upper = idx + 1 < self.num_bins
        hist.index_add_(0, (idx + 1)[upper], alpha[upper])
        sums = data.new_zeros(self.num_bins).index_add_(0, idx, data)
        return hist, sums

    def _update(self, batch_hist: Tensor, sums: Tensor, count: int) -> Callable[[Tensor], Tensor]:
        """Update ``hist_``; return the per-value coefficient of the surrogate sum."""
        prev = self.hist_.to(batch_hist.dtype)
        m = self.momentum if bool(prev.sum() != 0) else 1.0
        h = (1.0 - m) * prev + m * batch_hist
        total = h.sum()
        new = h / total
        self.hist_.copy_(new)
        cdf = torch.cumsum(new, 0)  # (num_bins,)
        slope = m / (self.delta * total)  # d CDF[idx] / d x of a value in bin idx: -slope

        def coef(data: Tensor) -> Tensor:
            idx, _, inside = self._bins(data)
            return (cdf[idx] - inside * sums[idx] * slope) / count

        self._cdf = cdf
        return coef

    def _weighted_mean(self, data: Tensor, embeddings: Tensor) -> Tensor:
        if data.numel() == 0:
            return self.zero_loss(embeddings)
        with torch.no_grad():
            hist, sums = self._batch_hist(data.detach())
            coef = self._update(hist, sums, data.numel())
            value = (self._cdf[self._bins(data.detach())[0]] * data.detach()).mean()
            c = coef(data.detach())
        surrogate = (c * data).sum()
        return value + (surrogate - surrogate.detach()) + self.zero_loss(embeddings)

    def _all_triplets(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        x = self.distance.maybe_normalize(embeddings)  # (n, d)
        ref = x if ref_embeddings is None else self.distance.maybe_normalize(ref_embeddings)
        full_ref_labels = labels if ref_labels is None else ref_labels
        same_set = ref_embeddings is None
        n, m = x.shape[0], ref.shape[0]
        # the most positives of any anchor: a triplet is (anchor, one of them, a negative)
        k = 0
        for a, b in row_chunks(n, chunk_size_for(n, m)):
            pos, _ = pos_neg_masks(labels[a:b], full_ref_labels, exclude_self=same_set,
                                   row_offset=a)  # fmt: skip
            k = max(k, int(pos.sum(dim=1).max()))
        if k == 0:
            return self.zero_loss(embeddings)
        chunk = chunk_size_for(n, 4 * k * m)

        def values(a: int, b: int, x_: Tensor, ref_: Tensor) -> Tensor:
            d = self.distance.compute_matrix(x_[a:b], ref_)  # (c, m)
            pos, neg = pos_neg_masks(
                labels[a:b], full_ref_labels, exclude_self=same_set, row_offset=a
            )
            # each anchor's positives first (k slots, padded with non-positives)
            order = torch.argsort(pos.to(torch.int8), dim=1, descending=True, stable=True)
            order = order[:, :k]  # (c, k)
            is_pos = pos.gather(1, order)  # (c, k)
            d_ap = d.gather(1, order)  # (c, k)
            valid = is_pos[:, :, None] & neg[:, None, :]  # (c, k, m)
            return (d_ap[:, :, None] - d[:, None, :])[valid]  # (T_chunk,)

        if chunk >= n:  # one chunk: plain autograd
            return self._weighted_mean(values(0, n, x, ref), embeddings)
        with torch.no_grad():
            hist = x.new_zeros(self.num_bins)
            sums = x.new_zeros(self.num_bins)
            count = 0
            for a, b in row_chunks(n, chunk):
                data = values(a, b, x, ref)
                if data.numel():
                    h, s = self._batch_hist(data)
                    hist, sums, count = hist + h, sums + s, count + data.numel()
        if count == 0:
            return self.zero_loss(embeddings)
        coef = self._update(hist, sums, count)
        cdf = self._cdf

        def chunk_terms(a: int, b: int, x_: Tensor, ref_: Tensor) -> Tensor:
            data = values(a, b, x_, ref_)  # (T_chunk,)
            detached = data.detach()
            value = (cdf[self._bins(detached)[0]] * detached).sum() / count
            return torch.stack([(coef(detached) * data).sum(), value])

        surrogate, value = chunked_sum(chunk_terms, n, chunk, x, ref)
        return value + (surrogate - surrogate.detach())

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, num_bins={self.num_bins}, momentum={self.momentum}"


__all__ = ["DynamicSoftMarginLoss"]
