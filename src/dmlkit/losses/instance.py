"""Instance loss (Zheng et al., "Dual-Path Convolutional Image-Text Embeddings with
Instance Loss", ACM TOMM 2020, arXiv:1711.05535)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.cosine import CosineSimilarity
from dmlkit.functional.tuples import IndexTuple
from dmlkit.losses._rows import pack, sum_over_chunks, use_fused
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.registry import register_loss


@register_loss("instance")
class InstanceLoss(BaseMetricLoss):
    r"""Softmax cross-entropy over the batch's scaled cosine similarities.

    With :math:`S = \gamma\, \cos(x_i, x_j)` the ``(B, B)`` similarity logits and
    :math:`t_i \in \{0, \dots, U - 1\}` the rank of sample :math:`i`'s label among the
    :math:`U` distinct labels of the batch (``torch.unique(labels, return_inverse=True)``):

    .. math::

        L = -\frac{1}{B} \sum_i \log \frac{e^{S_{i t_i}}}{\sum_j e^{S_{ij}}}

    i.e. the batch itself is the classifier and column :math:`t` scores class :math:`t`;
    with one sample per class (labels = instance ids, the paper's setting) each sample
    must pick out itself. This is exactly pytorch-metric-learning's ``InstanceLoss``
    (same parameter, default and mean reduction). Needs labels; takes neither tuples
    nor ``ref_embeddings``. Rows are computed in chunks (memory O(chunk * B)).

    Parameters
    ----------
    gamma : float
        Scale :math:`\gamma` of the cosines.
    distance : CosineSimilarity, optional
        Only the cosine similarity is accepted.
    """

    requires_labels = True
    accepts_indices = False

    def __init__(self, gamma: float = 64.0, distance: BaseDistance | None = None) -> None:
        if distance is not None and not isinstance(distance, CosineSimilarity):
            raise TypeError(f"InstanceLoss needs a CosineSimilarity, got {type(distance).__name__}")
        super().__init__(distance=distance)
        if gamma <= 0:
            raise ValueError(f"InstanceLoss: gamma must be > 0, got {gamma}")
        self.gamma = float(gamma)

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
        if ref_embeddings is not None:
            raise ValueError("InstanceLoss does not use ref_embeddings")
        if labels is None or labels.dim() != 1:
            raise ValueError("InstanceLoss needs (n,) class labels")
        _, target = torch.unique(labels, return_inverse=True)  # (n,) in [0, U)
        x = self.distance.maybe_normalize(embeddings)  # (n, d)
        n = x.shape[0]

        def chunk_terms(start: int, stop: int, x_: Tensor) -> Tensor:
            logits = self.gamma * self.distance.compute_matrix(x_[start:stop], x_)  # (c, n)
            return pack(F.cross_entropy(logits, target[start:stop], reduction="sum"))

        if use_fused(x, x, labels, None):  # small (n, n): one matrix, plain autograd
            (total,) = chunk_terms(0, n, x)
        else:
            (total,) = sum_over_chunks(chunk_terms, n, 3 * n, x)
        return total / n


__all__ = ["InstanceLoss"]
