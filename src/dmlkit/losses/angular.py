"""Angular loss (Wang, Zhou, Wen, Liu & Lin, ICCV 2017)."""

from __future__ import annotations

import math

from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.functional.labels import same_label
from dmlkit.functional.tuples import IndexTuple
from dmlkit.losses._rows import (
    RowWeights,
    as_pairs,
    masked_logsumexp,
    pack,
    positive_pairs,
    sum_over_chunks,
)
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.registry import register_loss


@register_loss("angular")
class AngularLoss(BaseMetricLoss):
    r"""Bound the angle at the negative of each (anchor, positive, negative) triangle.

    For a positive pair :math:`(a, p)` of unit vectors and its negatives :math:`N_a`:

    .. math::

        \ell_{ap} = \log\Big(1 + \sum_{n \in N_a}
            e^{4 \tan^2\alpha\, (x_a + x_p)^\top x_n - 2 (1 + \tan^2\alpha)\, x_a^\top x_p}\Big)

    averaged over positive pairs (the N-pair form of the paper, pytorch-metric-learning's
    ``AngularLoss``). With labels the negatives of :math:`a` are all references of
    another class (also when ``indices`` select the positive pairs, as in
    pytorch-metric-learning); with ``indices`` alone, the mined negative pairs of
    :math:`a`.

    Parameters
    ----------
    alpha : float
        The angle bound, in degrees.
    distance : BaseDistance, optional
        Only its ``normalize_embeddings`` is used (default: normalize).

    Notes
    -----
    Wang et al., "Deep Metric Learning with Angular Loss", ICCV 2017. Positive pairs
    are processed in chunks recomputed in backward: memory O(chunk * m).
    Unlike pytorch-metric-learning 2.x, the negatives ``x_n`` are normalized too (the
    paper's formulation); on unit-norm inputs both agree.
    """

    def __init__(self, alpha: float = 40.0, distance: BaseDistance | None = None) -> None:
        super().__init__(distance=distance)
        if not 0 < alpha < 90:
            raise ValueError(f"alpha must be an angle in (0, 90) degrees, got {alpha}")
        self.alpha = float(alpha)

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
        full_ref_labels = labels if ref_labels is None else ref_labels
        m = ref.shape[0]
        pairs = None if indices is None else as_pairs(indices)
        if pairs is None:
            a, p = positive_pairs(labels, ref_labels)
            any_neg = bool((~same_label(labels, full_ref_labels)).any())
        else:
            a, p, any_neg = pairs.a1, pairs.p, pairs.a2.numel() > 0
        if a.numel() == 0 or not any_neg:
            return self.zero_loss(embeddings)
        neg_rows = None
        if labels is None:  # negatives from the mined pairs, one dense (n, m) mask
            _, neg_w = RowWeights(None, None, pairs, m, False)(0, x.shape[0], x.dtype, x.device)
            neg_rows = neg_w > 0  # (n, m)
        tan2 = math.tan(math.radians(self.alpha)) ** 2

        def chunk_terms(start: int, stop: int, x_: Tensor, ref_: Tensor) -> Tensor:
            ia, ip = a[start:stop], p[start:stop]  # (c,)
            xa, xp = x_[ia], ref_[ip]  # (c, d)
            ap = (xa * xp).sum(dim=1, keepdim=True)  # (c, 1)
            logits = 4 * tan2 * (xa + xp) @ ref_.T - 2 * (1 + tan2) * ap  # (c, m)
            if neg_rows is None:
                neg = ~same_label(labels[ia], full_ref_labels)  # (c, m)
            else:
                neg = neg_rows[ia]  # (c, m)
            return pack(masked_logsumexp(logits, neg, add_one=True).sum())

        (total,) = sum_over_chunks(chunk_terms, a.numel(), 4 * m, x, ref)
        return total / a.numel()
