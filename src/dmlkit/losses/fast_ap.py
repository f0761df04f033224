"""FastAP: histogram-approximated average precision (Cakir et al., CVPR 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.euclidean import EuclideanDistance
from dmlkit.functional.tuples import IndexTuple
from dmlkit.losses._rows import RowWeights, pack, sum_over_chunks
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.registry import register_loss


@register_loss("fast_ap")
class FastAPLoss(BaseMetricLoss):
    r"""``1 - AP`` per anchor, with AP from soft distance histograms.

    Distances are binned into ``num_bins + 1`` triangular (linear interpolation) bins
    spanning ``[0, d_max]``; with positive counts :math:`h^+_k`, cumulative positive
    counts :math:`H^+_k` and cumulative counts of all items :math:`H_k`:

    .. math::

        \mathrm{FastAP}_i = \frac{1}{N^+_i}\sum_k \frac{h^+_k H^+_k}{H_k}

    The loss is the mean of :math:`(1 - \mathrm{FastAP}_i) w_i` over anchors with a
    positive, where :math:`w_i` is 1 or, with ``indices``, how often :math:`i` appears
    in the tuples relative to the most frequent item (pytorch-metric-learning's
    ``FastAPLoss``, whose default distance, squared Euclidean on normalized
    embeddings, has :math:`d_{max} = 4`). Labels define positives; ``indices`` only
    weight anchors. With ``ref_embeddings`` anchors are ranked against the references
    and only the anchor slots of ``indices`` count. Empty ``indices`` give a zero loss
    (pytorch-metric-learning would ignore them and weight every anchor by 1).

    Parameters
    ----------
    num_bins : int
        Histogram bins.
    distance : BaseDistance, optional
        A Euclidean distance on normalized embeddings; default squared
        (:math:`d_{max} = 4`), else :math:`d_{max} = 2`. ``normalize_embeddings=False``
        is refused (``ValueError``): raw distances past :math:`d_{max}` would fall
        outside every bin and give a constant loss with no gradient
        (pytorch-metric-learning refuses it too).

    Notes
    -----
    Cakir et al., "Deep Metric Learning to Rank", CVPR 2019. Anchor chunks are
    recomputed in backward: memory O(chunk * m); each distance feeds its two
    nearest bins (a scatter), not every bin.
    """

    #: labels define the positives; ``indices`` only weight the anchors
    requires_labels = True

    def __init__(self, num_bins: int = 10, distance: BaseDistance | None = None) -> None:
        super().__init__(distance=distance)
        if not isinstance(self.distance, EuclideanDistance):
            raise ValueError(
                f"FastAPLoss needs a EuclideanDistance, got {type(self.distance).__name__}"
            )
        if not self.distance.normalize_embeddings:
            # the histogram spans [0, d_max] of unit vectors: raw distances fall past it
            raise ValueError(
                "FastAPLoss needs EuclideanDistance(normalize_embeddings=True): its "
                "histogram spans the distances of unit vectors only, got "
                f"{self.distance!r}"
            )
        if int(num_bins) < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}")
        self.num_bins = int(num_bins)

    @staticmethod
    def default_distance() -> BaseDistance:
        return EuclideanDistance(squared=True)

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        if labels is None:
            raise ValueError("FastAPLoss needs labels (indices only weight the anchors)")
        x = self.distance.maybe_normalize(embeddings)  # (n, d)
        ref = x if ref_embeddings is None else self.distance.maybe_normalize(ref_embeddings)
        n, m = x.shape[0], ref.shape[0]
        weights = RowWeights(labels, ref_labels, None, m, ref_embeddings is None)
        anchor_w = _anchor_weights(indices, n, ref_embeddings is not None, x.dtype, x.device)
        d_max = 4.0 if self.distance.squared else 2.0
        delta = d_max / self.num_bins

        n_edges = self.num_bins + 1

        def soft_histogram(d: Tensor, w: Tensor) -> Tensor:
            """Triangular-kernel histogram of each row of ``d`` weighted by ``w``, ``(c, E)``."""
            u = d / delta  # (c, m) position in bin units
            k = torch.floor(u.detach()).long()  # (c, m) bin at or below
            frac = u - k  # (c, m) in [0, 1)
            out = d.new_zeros(d.shape[0], n_edges + 1)  # (c, E + 1): last is a spill bin
            for idx, weight in ((k, 1 - frac), (k + 1, frac)):
                ok = (idx >= 0) & (idx < n_edges)
                out = out.scatter_add(1, torch.where(ok, idx, n_edges), weight * w * ok)
            return out[:, :n_edges]

        def chunk_terms(start: int, stop: int, x_: Tensor, ref_: Tensor) -> Tensor:
            d = self.distance.compute_matrix(x_[start:stop], ref_)  # (c, m)
            pos, neg = weights(start, stop, d.dtype, d.device)  # (c, m)
            h_pos = soft_histogram(d, pos)  # (c, E)
            h_neg = soft_histogram(d, neg)  # (c, E)
            cum_pos = h_pos.cumsum(dim=1)  # (c, E)
            cum_all = (h_pos + h_neg).cumsum(dim=1)  # (c, E)
            prod = h_pos * cum_pos  # (c, E)
            safe = (prod > 0) & (cum_all > 0)
            ratio = torch.where(safe, prod / torch.where(safe, cum_all, 1.0), 0.0)  # (c, E)
            n_pos = pos.sum(dim=1)  # (c,)
            has_pos = n_pos > 0
            ap = ratio.sum(dim=1) / n_pos.clamp_min(1)  # (c,)
            loss = (1 - ap) * anchor_w[start:stop] * has_pos  # (c,)
            return pack(loss.sum(), has_pos.sum())

        total, n_valid = sum_over_chunks(chunk_terms, n, 12 * m, x, ref)
        if n_valid == 0:
            return self.zero_loss(embeddings)
        return total / n_valid


def _anchor_weights(
    indices: IndexTuple | None, n: int, anchors_only: bool, dtype, device
) -> Tensor:
    """Relative frequency of each item in the tuples (1 everywhere without tuples), ``(n,)``."""
    if indices is None:
        return torch.ones(n, dtype=dtype, device=device)
    if all(t.numel() == 0 for t in indices):  # nothing mined: nothing to learn
        return torch.zeros(n, dtype=dtype, device=device)
    if anchors_only:
        slots = (
            [indices[0], indices[2]] if len(indices) == 4 and _is_pairs(indices) else [indices[0]]
        )
    else:
        slots = list(indices)
    items, counts = torch.unique(torch.cat(slots), return_counts=True)
    w = torch.zeros(n, dtype=dtype, device=device)
    w[items] = counts.to(dtype) / counts.max()
    return w


def _is_pairs(indices: IndexTuple) -> bool:
    from dmlkit.functional.tuples import Pairs

    return isinstance(indices, Pairs)
