"""SoftTriple loss (Qian et al., "SoftTriple Loss: Deep Metric Learning Without Triplet
Sampling", ICCV 2019)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmlkit._checks import check_int
from dmlkit.functional.distances import l2_normalize
from dmlkit.losses.weight_classifier import (
    WeightClassifierLoss,
    transposed_key_hook,
)
from dmlkit.registry import register_loss


@register_loss("soft_triple")
class SoftTripleLoss(WeightClassifierLoss):
    """Softmax loss with ``K`` centers per class, soft-assigned by a temperature softmax.

    With unit embeddings ``x`` and unit centers ``w_c^k``, a class's similarity is
    ``S_c(x) = sum_k softmax_k(x.w_c^k / gamma) x.w_c^k`` and

    ``L = -1/B sum_i log( e^{la (S_{y_i} - margin)} /
    (e^{la (S_{y_i} - margin)} + sum_{c != y_i} e^{la S_c}) ) + tau * R``,

    where ``R = sum_c sum_{k<k'} sqrt(2 + 1e-5 - 2 w_c^k.w_c^k') / (C K (K - 1))`` merges
    redundant centers (paper eq. 13; off by default, as in pytorch-metric-learning).

    Parameters
    ----------
    num_classes : int
        Number of classes ``C``.
    embedding_size : int
        Embedding dimension ``D``.
    centers_per_class : int
        Centers per class ``K``.
    la : float
        Logit scale ``lambda``.
    gamma : float
        Temperature of the soft assignment to centers (the paper's ``gamma``; the
        softmax divides by it).
    margin : float
        Margin ``delta`` subtracted from the target class's similarity.
    tau : float
        Weight of the center-merging regularizer ``R`` (the paper uses 0.2).

    Attributes
    ----------
    fc : nn.Parameter of shape (D, C * K)
        Column ``c * K + k`` is center ``k`` of class ``c``: pytorch-metric-learning's
        name, shape and order, so state dicts load across the two libraries.
    centers : Tensor of shape (C * K, D)
        The same centers as rows (a view of ``fc``).

    Mined tuples (``indices``) weigh the samples' cross-entropy terms as in
    pytorch-metric-learning. With ``tau = 0`` matches pytorch-metric-learning's
    ``SoftTripleLoss`` (value and gradient, mined tuples included).
    """

    accepts_indices = True

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        centers_per_class: int = 10,
        la: float = 20.0,
        gamma: float = 0.1,
        margin: float = 0.01,
        tau: float = 0.0,
    ) -> None:
        super().__init__(num_classes, embedding_size)
        self.centers_per_class = check_int("centers_per_class", centers_per_class)
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        if tau < 0:
            raise ValueError(f"tau must be >= 0, got {tau}")
        self.la = float(la)
        self.gamma = float(gamma)
        self.margin = float(margin)
        self.tau = float(tau)
        n_centers = num_classes * centers_per_class
        # pytorch-metric-learning's layout and name: fc is (D, C * K), column c * K + k
        self.fc = nn.Parameter(torch.empty(embedding_size, n_centers))
        bound = 1.0 / math.sqrt(n_centers)  # kaiming-uniform(a=sqrt(5)) on the (D, C*K) layout
        nn.init.uniform_(self.fc, -bound, bound)
        self._register_load_state_dict_pre_hook(transposed_key_hook("centers", "fc"))

    @property
    def centers(self) -> Tensor:
        """The centers as rows, ``(C * K, D)``: a view of ``fc`` (``fc.T``)."""
        return self.fc.T

    def _class_similarity(self, x: Tensor, w: Tensor) -> Tensor:
        """``S_c`` for unit ``x (c, D)`` and unit centers ``w (C*K, D)`` -> ``(c, C)``."""
        sim = (x @ w.T).view(x.shape[0], self.num_classes, self.centers_per_class)  # (c, C, K)
        prob = torch.softmax(sim * (1.0 / self.gamma), dim=2)  # (c, C, K)
        return (prob * sim).sum(dim=2)  # (c, C)

    def logits(self, embeddings: Tensor) -> Tensor:
        """Class similarities ``S_c`` scaled by ``la``, ``(n, C)`` (no margin)."""
        w = l2_normalize(self.centers.to(embeddings.dtype))  # (C * K, D)
        return self.la * self._class_similarity(l2_normalize(embeddings), w)

    def regularizer(self, dtype: torch.dtype | None = None) -> Tensor:
        """Mean distance between a class's centers, ``R`` above (0 when ``K = 1``)."""
        K = self.centers_per_class
        w = l2_normalize(self.centers.to(dtype or self.centers.dtype))
        if K == 1:
            return w.sum() * 0.0
        w = w.view(self.num_classes, K, -1)  # (C, K, D)
        gram = w @ w.transpose(1, 2)  # (C, K, K)
        upper = torch.triu(torch.ones(K, K, dtype=torch.bool, device=w.device), diagonal=1)
        dist = torch.sqrt(2.0 + 1e-5 - 2.0 * gram[:, upper])  # (C, K (K - 1) / 2)
        return dist.sum() / (self.num_classes * K * (K - 1))

    def class_loss(
        self, embeddings: Tensor, labels: Tensor, weights: Tensor | None = None
    ) -> Tensor:
        w = l2_normalize(self.centers.to(embeddings.dtype))  # (C * K, D)

        def chunk_terms(
            xc: Tensor, lc: Tensor, wc: Tensor, w_: Tensor
        ) -> tuple[Tensor, Tensor]:
            s = self._class_similarity(l2_normalize(xc), w_)  # (c, C)
            target = s.gather(1, lc[:, None]) - self.margin  # (c, 1)
            logits = self.la * s.scatter(1, lc[:, None], target)  # (c, C)
            loss = F.cross_entropy(logits, lc, reduction="none")  # (c,)
            return (loss * wc).sum(), torch.tensor(xc.shape[0], device=xc.device)

        total, count = self.chunked_row_sum(
            chunk_terms, embeddings, labels, weights, w, elems_per_row=4 * w.shape[0]
        )
        loss = total / count.clamp_min(1)
        if self.tau > 0:
            loss = loss + self.tau * self.regularizer(embeddings.dtype)
        return loss
