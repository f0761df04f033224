"""Histogram loss (Ustinova & Lempitsky, "Learning Deep Embeddings with Histogram Loss",
NeurIPS 2016)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.cosine import CosineSimilarity
from dmlkit.functional.labels import pos_neg_masks
from dmlkit.functional.tuples import IndexTuple, Pairs
from dmlkit.losses._rows import chunk_bounds, sum_over_chunks
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.registry import register_loss


def soft_histogram(values: Tensor, delta: float, n_nodes: int) -> Tensor:
    """Linear-interpolation histogram ``(k,) -> (n_nodes,)`` of values in ``[-1, 1]``.

    A value ``v`` between nodes ``t_r = -1 + r delta`` and ``t_{r+1}`` adds
    ``(t_{r+1} - v) / delta`` to node ``r`` and ``(v - t_r) / delta`` to node ``r + 1``;
    values are clamped to ``[-1, 1]``. Differentiable in ``values``; not normalized.
    """
    v = values.clamp(-1.0, 1.0)  # (k,)
    with torch.no_grad():
        r = torch.floor((v + 1.0) / delta).long().clamp_(0, n_nodes - 2)  # (k,)
    upper = (v + 1.0 - r.to(v.dtype) * delta) / delta  # (k,): share of node r + 1
    hist = v.new_zeros(n_nodes)  # (n_nodes,)
    hist = hist.index_add(0, r + 1, upper)
    return hist.index_add(0, r, 1.0 - upper)


def _steps_to_one(delta: float) -> int:
    """Steps of ``delta`` from -1 to the first node at or above 1: ``2 / delta`` when that
    is whole (up to rounding), else its ceiling. With ``round`` instead, the last node
    of e.g. ``delta=0.45`` sits at 0.8 and similarities above it are extrapolated with
    negative mass (a negative "probability")."""
    steps = 2.0 / delta
    whole = round(steps)
    return whole if math.isclose(steps, whole, rel_tol=1e-9) else math.ceil(steps)


def _histogram_loss(hist_pos: Tensor, hist_neg: Tensor) -> Tensor:
    """``sum_r p_neg[r] * cumsum(p_pos)[r]`` of two normalized histograms."""
    return (hist_neg * torch.cumsum(hist_pos, dim=0)).sum()


@register_loss("histogram")
class HistogramLoss(BaseMetricLoss):
    r"""Probability that a random negative pair is more similar than a random positive one.

    The similarities of the positive pairs and of the negative pairs are each estimated
    as a histogram :math:`p^+, p^-` over :math:`R` nodes :math:`t_r = -1 + r\Delta`
    spread uniformly over :math:`[-1, 1]` (:math:`\Delta = 2 / (R - 1)`), every pair
    splitting its unit mass between its two neighbouring nodes by linear interpolation.
    When :math:`\Delta` does not divide 2 the grid runs on to the first node above 1
    (:math:`R = 1 + \lceil 2 / \Delta \rceil`), so every similarity lies between two
    nodes, the masses are non-negative and the loss is a probability in :math:`[0, 1]`
    (pytorch-metric-learning's grid wherever its ``round`` gives the same node count; it
    fails with an index error where it gives fewer):

    .. math::

        L = \sum_{r=1}^{R} p^-_r \sum_{q \le r} p^+_q .

    Pairs are unordered (each pair of samples once) and taken from all triplets of the
    batch: a positive pair counts when its anchor has a negative and a negative pair when
    one of its ends has a positive (pytorch-metric-learning's ``HistogramLoss``, which
    this matches on labels and mined pairs / triplets; mined pairs keep the positive and
    negative pairs whose anchor occurs on both sides, each distinct pair once). With
    ``ref_embeddings`` the pairs are (query, reference), ordered, each once; the library
    above has no reference-set form. No triplet: the zero loss.

    Parameters
    ----------
    n_bins : int, optional
        Number of bins :math:`R - 1` (default 100 when ``delta`` is not given either).
    delta : float, optional
        Bin width :math:`\Delta` (need not divide 2, see above); if both are given,
        ``delta`` must equal ``2 / n_bins``.
    distance : BaseDistance, optional
        A similarity (``is_similarity``; ``ValueError`` for a distance such as
        :class:`~dmlkit.distances.EuclideanDistance`). Default
        :class:`~dmlkit.distances.CosineSimilarity`. Values are clamped to the
        histogram's support :math:`[-1, 1]`.

    Notes
    -----
    All pairs of a labelled batch are walked in row chunks, twice (histograms, then their
    gradient through the similarities): memory O(chunk * m), not O(n * m).
    """

    def __init__(
        self,
        n_bins: int | None = None,
        delta: float | None = None,
        distance: BaseDistance | None = None,
    ) -> None:
        super().__init__(distance=distance)
        if not self.distance.is_similarity:
            # a distance would put positives at the top of the [-1, 1] grid: the loss
            # would be ~1 for perfect clusters and training would push positives apart
            raise ValueError(
                "HistogramLoss needs a similarity such as CosineSimilarity (its histogram "
                f"spans similarities in [-1, 1]), got {type(self.distance).__name__}"
            )
        if n_bins is not None and (isinstance(n_bins, bool) or int(n_bins) != n_bins or n_bins < 1):
            raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
        if delta is not None and not 0 < delta <= 2:
            raise ValueError(f"delta must be in (0, 2], got {delta}")
        if delta is not None and n_bins is not None and not math.isclose(delta, 2 / n_bins):
            raise ValueError(f"delta={delta} and n_bins={n_bins} must satisfy delta = 2 / n_bins")
        self.n_bins = None if n_bins is None else int(n_bins)
        if delta is None:
            delta = 2.0 / (100 if n_bins is None else n_bins)
        self.delta = float(delta)
        self.n_nodes = 1 + _steps_to_one(self.delta)

    @staticmethod
    def default_distance() -> BaseDistance:
        return CosineSimilarity()

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        x = self.distance.maybe_normalize(embeddings)  # (n, d)
        ref = x if ref_embeddings is None else self.distance.maybe_normalize(ref_embeddings)
        if indices is not None:
            return self._from_indices(x, ref, indices, ref_embeddings is None, embeddings)
        return self._from_labels(x, ref, labels, ref_labels, embeddings)

    # -- mined tuples: explicit pair lists -------------------------------------------------
    def _from_indices(
        self, x: Tensor, ref: Tensor, indices: IndexTuple, unordered: bool, like: Tensor
    ) -> Tensor:
        if isinstance(indices, Pairs):
            a1, p, a2, n = indices
            keep_p, keep_n = torch.isin(a1, a2), torch.isin(a2, a1)  # share an anchor
            ap = torch.stack([a1[keep_p], p[keep_p]])  # (2, P)
            an = torch.stack([a2[keep_n], n[keep_n]])  # (2, N)
        else:
            a, p, n = indices[0], indices[1], indices[2]
            ap, an = torch.stack([a, p]), torch.stack([a, n])  # (2, T)
        if ap.shape[1] == 0 or an.shape[1] == 0:
            return self.zero_loss(like)
        ap, an = self._distinct(ap, unordered), self._distinct(an, unordered)
        s_pos = self.distance.compute_rowwise(x[ap[0]], ref[ap[1]])  # (P,)
        s_neg = self.distance.compute_rowwise(x[an[0]], ref[an[1]])  # (N,)
        hist_pos = soft_histogram(s_pos, self.delta, self.n_nodes) / s_pos.shape[0]
        hist_neg = soft_histogram(s_neg, self.delta, self.n_nodes) / s_neg.shape[0]
        return _histogram_loss(hist_pos, hist_neg)

    @staticmethod
    def _distinct(pairs: Tensor, unordered: bool) -> Tensor:
        if unordered:
            pairs = pairs.sort(dim=0).values  # (2, k): (min, max)
        return torch.unique(pairs, dim=1)

    # -- labels: every pair, in row chunks -------------------------------------------------
    def _from_labels(
        self, x: Tensor, ref: Tensor, labels: Tensor, ref_labels: Tensor | None, like: Tensor
    ) -> Tensor:
        unordered = ref_labels is None
        full_ref = labels if unordered else ref_labels
        n, m = x.shape[0], ref.shape[0]
        has_pos = torch.zeros(n, dtype=torch.bool, device=x.device)  # (n,)
        has_neg = torch.zeros_like(has_pos)  # (n,)
        # ~8 live (c, m) intermediates per pass (similarities, masks, bins, weights)
        per_row = 8 * m
        _, bounds = chunk_bounds(n, per_row)
        for a, b in bounds:
            pos, neg = pos_neg_masks(labels[a:b], full_ref, exclude_self=unordered, row_offset=a)
            has_pos[a:b], has_neg[a:b] = pos.any(dim=1), neg.any(dim=1)

        def masks(a: int, b: int) -> tuple[Tensor, Tensor]:
            pos, neg = pos_neg_masks(labels[a:b], full_ref, exclude_self=unordered, row_offset=a)
            pos = pos & has_neg[a:b, None]  # (c, m): the anchor has a negative
            neg = neg & has_pos[a:b, None]  # (c, m): the anchor has a positive
            if unordered:  # pair {i, j} once, at i < j; a negative when either end has a positive
                rows = torch.arange(a, b, device=x.device)[:, None]  # (c, 1)
                upper = rows < torch.arange(m, device=x.device)[None, :]  # (c, m)
                neg = (neg | (~pos_neg_masks(labels[a:b], full_ref)[0] & has_pos[None, :])) & upper
                pos = pos & upper
            return pos, neg

        # pass 1: unnormalized histograms and pair counts, no graph
        hist_pos = x.new_zeros(self.n_nodes)
        hist_neg = x.new_zeros(self.n_nodes)
        with torch.no_grad():
            for a, b in chunk_bounds(n, per_row)[1]:
                s = self.distance.compute_matrix(x[a:b], ref)  # (c, m)
                pos, neg = masks(a, b)
                hist_pos += soft_histogram(s[pos], self.delta, self.n_nodes)
                hist_neg += soft_histogram(s[neg], self.delta, self.n_nodes)
        n_pos, n_neg = hist_pos.sum(), hist_neg.sum()  # every pair adds a unit mass
        if n_pos < 0.5 or n_neg < 0.5:
            return self.zero_loss(like)
        p_pos, p_neg = hist_pos / n_pos, hist_neg / n_neg
        value = _histogram_loss(p_pos, p_neg)
        if not (torch.is_grad_enabled() and (x.requires_grad or ref.requires_grad)):
            return value
        # d L / d p_pos[r] = sum_{q >= r} p_neg[q];  d L / d p_neg[r] = cumsum(p_pos)[r]
        g_pos = torch.flip(torch.cumsum(torch.flip(p_neg, [0]), 0), [0]) / n_pos  # (R,)
        g_neg = torch.cumsum(p_pos, 0) / n_neg  # (R,)

        # pass 2: a surrogate whose gradient is sum over pairs of dL/ds * ds
        def chunk_terms(a: int, b: int, x_: Tensor, ref_: Tensor) -> Tensor:
            s = self.distance.compute_matrix(x_[a:b], ref_)  # (c, m)
            pos, neg = masks(a, b)
            with torch.no_grad():
                v = s.clamp(-1.0, 1.0)
                r = torch.floor((v + 1.0) / self.delta).long().clamp_(0, self.n_nodes - 2)
                inside = (s >= -1.0) & (s <= 1.0)  # clamp's slope
                slope_pos = (g_pos[r + 1] - g_pos[r]) / self.delta  # (c, m)
                slope_neg = (g_neg[r + 1] - g_neg[r]) / self.delta  # (c, m)
                grad = torch.where(pos, slope_pos, 0.0) + torch.where(neg, slope_neg, 0.0)
                grad = grad * inside
            return (s * grad).sum()

        surrogate = sum_over_chunks(chunk_terms, n, per_row, x, ref)
        return value + (surrogate - surrogate.detach())


__all__ = ["HistogramLoss", "soft_histogram"]
