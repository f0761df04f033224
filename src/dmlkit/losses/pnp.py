"""Rank-based PNP loss (Li, Liu, Wang, Hu & Tan, "Rethinking the Optimization of Average
Precision: Only Penalizing Negative Instances before Positive Ones is Enough", AAAI 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.cosine import CosineSimilarity
from dmlkit.functional import chunking
from dmlkit.functional.labels import pos_neg_masks
from dmlkit.functional.tuples import IndexTuple
from dmlkit.losses._rows import pack
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.registry import register_loss

VARIANTS = ("Ds", "Dq", "Iu", "Ib", "O")


def _sigmoid(x: Tensor, temperature: float) -> Tensor:
    """``1 / (1 + exp(-x / T))`` with the exponent clamped to [-50, 50] (as the paper's code)."""
    return torch.sigmoid((x / temperature).clamp(-50.0, 50.0))


@register_loss("pnp")
class PNPLoss(BaseMetricLoss):
    r"""Penalize the negatives ranked before each positive (a smoothed-rank AP surrogate).

    For query :math:`q`, positive :math:`p` and similarities :math:`s`, the smoothed
    number of negatives ranked above :math:`p` is

    .. math::

        R_{qp} = \sum_{n:\, y_n \ne y_q} \sigma\big((s_{qn} - s_{qp}) / \tau\big),

    and with a variant :math:`f` the loss is

    .. math::

        L = \frac{1}{|Q|} \sum_{q \in Q} \frac{1}{|P_q|} \sum_{p \in P_q} f(R_{qp}),

    ``"O"``: :math:`f(R) = R`; ``"Ds"``: :math:`\log(1 + R)`; ``"Dq"``:
    :math:`1/(1 + R)^\alpha` (and :math:`L \to 1 - L`); ``"Iu"``:
    :math:`(1 + R)\log(1 + R)`; ``"Ib"``: :math:`(bR - \log(1 + bR)) / b^2`.
    :math:`Q` are the queries with a positive. Without ``ref_embeddings`` the query
    counts among its own positives (:math:`s_{qq} = 1`, as in the paper's code and
    pytorch-metric-learning's ``PNPLoss``, which this matches); with ``ref_embeddings``
    (not in that library) :math:`P_q` are the query's positives in the reference set.
    Mined tuples are not used (ValueError), as there.

    Parameters
    ----------
    b : float
        Slope of the ``"Ib"`` variant.
    alpha : float
        Exponent of the ``"Dq"`` variant.
    anneal : float
        Sigmoid temperature :math:`\tau`.
    variant : str
        One of ``"Ds"``, ``"Dq"``, ``"Iu"``, ``"Ib"``, ``"O"``.
    distance : CosineSimilarity, optional
        Only the cosine similarity is accepted.

    Notes
    -----
    Queries are walked in chunks of at most ~16M (positive, reference) entries:
    memory O(chunk * P * m) with ``P`` positives per query, never O(n^3).
    """

    requires_labels = True
    accepts_indices = False

    def __init__(
        self,
        b: float = 2.0,
        alpha: float = 1.0,
        anneal: float = 0.01,
        variant: str = "O",
        distance: BaseDistance | None = None,
    ) -> None:
        if distance is not None and not isinstance(distance, CosineSimilarity):
            raise TypeError(f"PNPLoss needs a CosineSimilarity, got {type(distance).__name__}")
        if variant not in VARIANTS:
            raise ValueError(f"variant={variant!r} but must be one of {list(VARIANTS)}")
        if not anneal > 0:
            raise ValueError(f"anneal must be > 0, got {anneal}")
        super().__init__(distance=distance)
        self.b = float(b)
        self.alpha = float(alpha)
        self.anneal = float(anneal)
        self.variant = variant

    @staticmethod
    def default_distance() -> BaseDistance:
        return CosineSimilarity()

    def _transform(self, rank: Tensor) -> Tensor:
        if self.variant == "Ds":
            return torch.log1p(rank)
        if self.variant == "Dq":
            return (1.0 + rank) ** (-self.alpha)
        if self.variant == "Iu":
            return (1.0 + rank) * torch.log1p(rank)
        if self.variant == "Ib":
            b = self.b
            return (b * rank - torch.log1p(b * rank)) / b**2
        return rank

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        if labels is None:
            raise ValueError("PNPLoss needs labels")
        no_ref = ref_embeddings is None
        x = self.distance.maybe_normalize(embeddings)  # (n, d)
        ref = x if no_ref else self.distance.maybe_normalize(ref_embeddings)  # (m, d)
        full_ref = labels if no_ref else ref_labels
        n, m = x.shape[0], ref.shape[0]

        # positives per query: with no reference set the query itself joins its positives
        with torch.no_grad():
            n_pos = torch.zeros(n, dtype=torch.long, device=x.device)  # (n,)
            for a, b in chunking.row_chunks(n, chunking.chunk_size_for(n, m)):
                pos, _ = pos_neg_masks(labels[a:b], full_ref, exclude_self=no_ref, row_offset=a)
                n_pos[a:b] = pos.sum(dim=1)
            valid = n_pos > 0  # (n,)
            n_pos = n_pos + (valid & no_ref)  # the self term
        if not bool(valid.any()):
            return self.zero_loss(embeddings)
        per_row = int(n_pos.max()) * m
        chunk = chunking.chunk_size_for(n, per_row, chunking.DEFAULT_BUDGET // 4)

        def chunk_terms(a: int, b: int, x_: Tensor, ref_: Tensor) -> Tensor:
            s = self.distance.compute_matrix(x_[a:b], ref_)  # (c, m)
            pos, neg = pos_neg_masks(labels[a:b], full_ref, exclude_self=no_ref, row_offset=a)
            rows, cols = torch.where(pos)  # (P,)
            s_pos = s[rows, cols]  # (P,)
            if no_ref:  # the query as its own positive, when it has another one
                own = torch.where(valid[a:b])[0]  # (Q,)
                rows = torch.cat([rows, own])
                s_pos = torch.cat([s_pos, s[own, own + a]])
            diff = s[rows] - s_pos[:, None]  # (P, m): s_qn - s_qp
            rank = (_sigmoid(diff, self.anneal) * neg[rows]).sum(dim=1)  # (P,)
            per_pos = self._transform(rank) / n_pos[a:b][rows]  # (P,)
            return pack(per_pos.sum(), valid[a:b].sum())

        total, count = chunking.chunked_sum(chunk_terms, n, chunk, x, ref)
        loss = total / count
        return 1.0 - loss if self.variant == "Dq" else loss


__all__ = ["PNPLoss", "VARIANTS"]
