"""Center loss (Wen et al., "A Discriminative Feature Learning Approach for Deep Face
Recognition", ECCV 2016)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dmlkit.distances.euclidean import EuclideanDistance
from dmlkit.losses.weight_classifier import WeightClassifierLoss
from dmlkit.registry import register_loss


@register_loss("center")
class CenterLoss(WeightClassifierLoss):
    """Pull each embedding toward a learnable center of its class.

    ``L = 1/(2B) sum_i |x_i - c_{y_i}|^2`` (the paper's eq. 2, averaged over the batch).
    It only compacts classes; it does not separate them, so use it next to a
    discriminative loss, as a weighted sum::

        softmax = NormalizedSoftmaxLoss(num_classes=C, embedding_size=D)
        center = CenterLoss(num_classes=C, embedding_size=D, normalize_embeddings=True)
        loss = softmax(x, y) + 0.01 * center(x, y)   # lambda = 0.01

    Both losses' parameters go to the optimizer with the model's. The paper updates
    centers with their own rate ``alpha``; to reproduce it put ``center.centers`` in a
    separate parameter group (SGD's gradient here is ``sum_{i: y_i = j} (c_j - x_i) / B``).
    Set ``normalize_embeddings=True`` to pair it with a loss on the unit sphere
    (normalized-softmax, ArcFace, CosFace): embeddings and centers are then normalized.

    Parameters
    ----------
    num_classes : int
        Number of classes ``C``.
    embedding_size : int
        Embedding dimension ``D``.
    normalize_embeddings : bool
        L2-normalize embeddings and centers first.

    Attributes
    ----------
    centers : nn.Parameter of shape (C, D)
        Class centers (standard-normal initialized).

    pytorch-metric-learning has no center loss; this is checked against the formula.
    """

    def __init__(
        self, num_classes: int, embedding_size: int, normalize_embeddings: bool = False
    ) -> None:
        super().__init__(
            num_classes,
            embedding_size,
            distance=EuclideanDistance(squared=True, normalize_embeddings=normalize_embeddings),
        )
        self.normalize_embeddings = bool(normalize_embeddings)
        self.centers = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.centers)

    def class_loss(
        self, embeddings: Tensor, labels: Tensor, weights: Tensor | None = None
    ) -> Tensor:  # (takes no mined tuples: weights is None)
        own = self.centers.to(embeddings.dtype)[labels]  # (B, D)
        return 0.5 * self.distance.pairwise(embeddings, own).mean()  # (B,) -> scalar
