"""Multi-similarity loss (Wang, Han, Huang, Dong & Scott, CVPR 2019)."""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit._checks import check_real
from dmlkit.distances.base import BaseDistance
from dmlkit.distances.cosine import CosineSimilarity
from dmlkit.functional import chunking
from dmlkit.functional.labels import same_label
from dmlkit.functional.tuples import IndexTuple, Pairs
from dmlkit.losses._rows import (
    FUSED_BUDGET,
    as_pairs,
    masked_logsumexp,
    pack,
    setup_rows,
    sum_over_chunks,
    use_fused,
    with_grads,
)
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.registry import register_loss


@register_loss("multi_similarity")
class MultiSimilarityLoss(BaseMetricLoss):
    r"""Soft weighting of every positive and negative pair of an anchor.

    For anchor :math:`i` with positives :math:`P_i` and negatives :math:`N_i` and
    similarities :math:`S_{ij}`:

    .. math::

        \ell_i = \frac{1}{\alpha}\log\Big(1 + \sum_{j \in P_i} e^{-\alpha (S_{ij} - \lambda)}\Big)
               + \frac{1}{\beta}\log\Big(1 + \sum_{k \in N_i} e^{\beta (S_{ik} - \lambda)}\Big)

    with :math:`\lambda` = ``base``, and the loss is the mean of :math:`\ell_i` over all
    anchors (anchors without pairs contribute 0), as pytorch-metric-learning's
    ``MultiSimilarityLoss`` with its default reducer. For a distance the signs flip.
    The pair-mining step of the paper is a separate miner.

    Parameters
    ----------
    alpha, beta : float
        Scales of the positive and negative terms, finite and > 0 (``ValueError``
        otherwise: a zero scale makes the loss infinite).
    base : float
        Similarity offset :math:`\lambda`.
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.CosineSimilarity`.

    Notes
    -----
    All pairs are processed in anchor chunks recomputed in backward: memory O(chunk * m).
    Wang et al., "Multi-Similarity Loss with General Pair Weighting for Deep Metric
    Learning", CVPR 2019.
    """

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 50.0,
        base: float = 0.5,
        distance: BaseDistance | None = None,
    ) -> None:
        super().__init__(distance=distance)
        self.alpha = check_real("alpha", alpha, 0.0, low_open=True, high_open=True)
        self.beta = check_real("beta", beta, 0.0, low_open=True, high_open=True)
        self.base = float(base)

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
        x, ref, weights = setup_rows(
            self.distance, embeddings, labels, indices, ref_embeddings, ref_labels
        )
        cosine = type(self.distance) is CosineSimilarity
        if cosine and use_fused(x, ref, labels, indices):
            same = same_label(labels, labels if ref_labels is None else ref_labels)  # (n, m)
            pos = same
            if ref_embeddings is None:
                pos = same & ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
            return self._fused(x, ref, pos, ~same)
        small = x.shape[0] * ref.shape[0] <= min(FUSED_BUDGET, chunking.DEFAULT_BUDGET)
        if cosine and indices is not None and small:
            pairs = as_pairs(indices)
            return self._fused(x, ref, *_pair_masks(pairs, x.shape[0], ref.shape[0]))
        sign = 1.0 if self.distance.is_similarity else -1.0

        def chunk_terms(start: int, stop: int, x_: Tensor, ref_: Tensor) -> Tensor:
            mat = self.distance.compute_matrix(x_[start:stop], ref_)  # (c, m)
            pos_w, neg_w = weights(start, stop, mat.dtype, mat.device)  # (c, m)
            pos, neg = pos_w > 0, neg_w > 0
            pos_exp = sign * (self.base - mat)  # (c, m): > 0 when a positive is far
            neg_exp = sign * (mat - self.base)  # (c, m): > 0 when a negative is close
            pos_term = masked_logsumexp(self.alpha * pos_exp, pos, add_one=True)  # (c,)
            neg_term = masked_logsumexp(self.beta * neg_exp, neg, add_one=True)  # (c,)
            loss = pos_term / self.alpha + neg_term / self.beta  # (c,)
            return pack(loss.sum(), pos.sum() + neg.sum())

        total, n_pairs = sum_over_chunks(chunk_terms, x.shape[0], 4 * ref.shape[0], x, ref)
        if n_pairs == 0:
            return self.zero_loss(embeddings)
        return total / x.shape[0]

    def _fused(self, x: Tensor, ref: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        """Whole-matrix cosine path: loss and closed-form softmax gradients in one pass.

        ``pos``, ``neg`` ``(n, m)`` bool: the pairs of each anchor (from labels, or the
        listed pairs of a miner, each counted once as pytorch-metric-learning does).
        """
        n = x.shape[0]
        need_grad = torch.is_grad_enabled() and (x.requires_grad or ref.requires_grad)
        a, b, lam = self.alpha, self.beta, self.base
        i, j = torch.where(pos)  # (P,)
        if i.numel() == 0 and not bool(neg.any()):
            return self.zero_loss(x) + ref.sum() * 0.0
        with torch.no_grad():
            xd, rd = x.detach(), ref.detach()
            zp = (xd[i] * rd[j]).sum(dim=1).sub_(lam).mul_(-a)  # (P,): -alpha (S - base)
            # negatives: z = beta (S - base), other entries masked out, per-row shift >= 0
            z = torch.addmm(xd.new_full((1, 1), -b * lam), xd, rd.T, alpha=b)  # (n, m)
            z.masked_fill_(~neg, float("-inf"))
            zn_peak = z.amax(dim=1).clamp_min_(0.0)  # (n,)
            e = z.sub_(zn_peak[:, None]).exp_()  # (n, m), 0 off the negatives
            sn = e.sum(dim=1).add_(torch.exp(-zn_peak))  # (n,)
            has_neg = neg.any(dim=1)  # (n,): anchors without negatives add 0
            neg_term = torch.where(has_neg, (zn_peak + sn.log()) / b, 0.0)  # (n,)
            zp_peak = z.new_zeros(n).scatter_reduce_(0, i, zp, "amax")  # (n,), >= 0
            ep = (zp - zp_peak[i]).exp_()  # (P,)
            sp = torch.exp(-zp_peak).index_add_(0, i, ep)  # (n,)
            has_pos = torch.zeros(n, dtype=torch.bool, device=x.device)
            has_pos[i] = True
            pos_term = torch.where(has_pos, (zp_peak + sp.log()) / a, 0.0)  # (n,)
            loss = (pos_term.sum() + neg_term.sum()) / n
            if not need_grad:
                return loss
            # d loss / d S: e_neg / (n sn) on negatives, -e_pos / (n sp) on positives
            g = e.mul_((1.0 / (n * sn))[:, None])  # (n, m)
            g.index_put_((i, j), -ep / (n * sp[i]), accumulate=True)
            gx, gr = g @ rd, g.T @ xd  # (n, d), (m, d)
        return with_grads(loss, x, ref, gx, gr)


def _pair_masks(pairs: Pairs, n: int, m: int) -> tuple[Tensor, Tensor]:
    """``(n, m)`` bool masks of the listed positive and negative pairs."""
    a1, p, a2, nn = pairs
    pos = torch.bincount(p + a1 * m, minlength=n * m).view(n, m) > 0  # (n, m)
    neg = torch.bincount(nn + a2 * m, minlength=n * m).view(n, m) > 0  # (n, m)
    return pos, neg
