"""Large-margin softmax (L-Softmax) loss (Liu, Wen, Yu & Yang, "Large-Margin Softmax Loss for
Convolutional Neural Networks", ICML 2016)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.cosine import CosineSimilarity
from dmlkit.functional.chunking import chunk_size_for
from dmlkit.functional.distances import l2_normalize
from dmlkit.functional.tuples import IndexTuple
from dmlkit.losses._miner_weights import miner_weights
from dmlkit.losses.weight_classifier import (
    WeightClassifierLoss,
    check_class_labels,
    fused_chunk_sum,
)
from dmlkit.registry import register_loss


def cos_multiple_angle(cos: Tensor, m: int) -> Tensor:
    """``cos(m * theta)`` from ``cos(theta)``: the Chebyshev polynomial ``T_m`` (eq. 7)."""
    prev, cur = torch.ones_like(cos), cos
    if m == 0:
        return prev
    for _ in range(m - 1):
        prev, cur = cur, 2.0 * cos * cur - prev
    return cur


def large_margin_psi(cos: Tensor, m: int) -> Tensor:
    r""":math:`\psi(\theta) = (-1)^k \cos(m\theta) - 2k` for
    :math:`\theta \in [k\pi/m, (k+1)\pi/m]` (eq. 6), monotone decreasing in :math:`\theta`.
    ``k`` carries no gradient."""
    with torch.no_grad():
        theta = torch.acos(cos.clamp(-1.0, 1.0))
        k = torch.floor(theta / (math.pi / m))
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)  # (-1)^k
    return sign * cos_multiple_angle(cos, m) - 2.0 * k


@register_loss("large_margin_softmax")
class LargeMarginSoftmaxLoss(WeightClassifierLoss):
    r"""Softmax cross-entropy whose target logit uses the angle multiplied by ``margin``.

    With class vectors :math:`W_c`, angles :math:`\theta_{ic}` between :math:`x_i` and
    :math:`W_c`, scale :math:`s` and integer margin :math:`m`:

    .. math::

        L_i = -\log \frac{e^{s \lVert W_{y_i}\rVert \lVert x_i\rVert \psi(\theta_{iy_i})}}
            {e^{s \lVert W_{y_i}\rVert \lVert x_i\rVert \psi(\theta_{iy_i})}
             + \sum_{c \ne y_i} e^{s \lVert W_c\rVert \lVert x_i\rVert \cos\theta_{ic}}},
        \qquad
        \psi(\theta) = (-1)^k \cos(m\theta) - 2k,\
        \theta \in [\tfrac{k\pi}{m}, \tfrac{(k+1)\pi}{m}],

    and :math:`L = \frac1n \sum_i w_i L_i` with :math:`w_i = 1`, or with mined tuples the
    weight of sample :math:`i` (how often it occurs in them over the largest such count;
    an empty mined set means all weights 1), as pytorch-metric-learning's
    ``LargeMarginSoftmaxLoss``, which this matches. The norms are those of the raw
    embeddings and class vectors. No reference-set form (ValueError).

    Parameters
    ----------
    num_classes : int
        Number of classes ``C``.
    embedding_size : int
        Embedding dimension ``D``.
    margin : int
        Angular multiplier :math:`m \ge 1` (1 is the plain softmax).
    scale : float
        Logit scale :math:`s`.
    distance : CosineSimilarity, optional
        Only the cosine similarity is accepted.

    Attributes
    ----------
    W : nn.Parameter of shape (D, C)
        Class vectors as columns, pytorch-metric-learning's layout and name, initialized
        from a standard normal.
    """

    accepts_indices = True

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        margin: int = 4,
        scale: float = 1.0,
        distance: BaseDistance | None = None,
    ) -> None:
        if distance is not None and not isinstance(distance, CosineSimilarity):
            raise TypeError(
                f"LargeMarginSoftmaxLoss needs a CosineSimilarity, got {type(distance).__name__}"
            )
        super().__init__(num_classes, embedding_size, distance=distance)
        if isinstance(margin, bool) or int(margin) != margin or margin < 1:
            raise ValueError(f"margin must be an int >= 1, got {margin!r}")
        self.margin = int(margin)
        self.scale = float(scale)
        self.W = nn.Parameter(torch.empty(embedding_size, num_classes))
        nn.init.normal_(self.W)

    def logits(self, embeddings: Tensor) -> Tensor:
        """Scaled class logits ``(n, C)`` without the margin, for prediction."""
        w = self.W.to(embeddings.dtype)  # (D, C)
        cos = l2_normalize(embeddings) @ l2_normalize(w.T).T  # (n, C)
        return cos * self._magnitudes(embeddings, w)

    def _magnitudes(self, x: Tensor, w: Tensor) -> Tensor:
        return self.scale * x.norm(dim=1)[:, None] * w.norm(dim=0)[None, :]  # (c, C)

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        if ref_embeddings is not None:
            raise ValueError("LargeMarginSoftmaxLoss does not use ref_embeddings")
        if labels is None:
            raise ValueError("LargeMarginSoftmaxLoss needs labels")
        check_class_labels(labels, self.num_classes)
        if embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"embeddings have dim {embeddings.shape[1]}, "
                f"but embedding_size={self.embedding_size}"
            )
        n = embeddings.shape[0]
        weights = miner_weights(indices, n, embeddings, using_ref=False)  # (n,)
        w = self.W.to(embeddings.dtype)  # (D, C)

        def chunk_terms(xc: Tensor, lc: Tensor, wc: Tensor, w_: Tensor) -> tuple[Tensor, Tensor]:
            cos = l2_normalize(xc) @ l2_normalize(w_.T).T  # (c, C)
            target = cos.gather(1, lc[:, None])  # (c, 1)
            psi = large_margin_psi(target, self.margin)  # (c, 1)
            logits = cos.scatter(1, lc[:, None], psi) * self._magnitudes(xc, w_)  # (c, C)
            loss = F.cross_entropy(logits, lc, reduction="none") * wc  # (c,)
            return loss.sum(), torch.tensor(xc.shape[0], device=xc.device)

        chunk = chunk_size_for(n, 6 * self.num_classes, self.chunk_budget)
        total, count = fused_chunk_sum(
            chunk_terms, n, chunk, (embeddings, labels, weights, w), (True, True, True, False)
        )
        return total / count.clamp_min(1)


__all__ = ["LargeMarginSoftmaxLoss", "cos_multiple_angle", "large_margin_psi"]
