"""CosFace / large margin cosine loss (Wang et al., CVPR 2018; arXiv 1801.09414)."""

from __future__ import annotations

from torch import Tensor

from dmlkit.losses.weight_classifier import CosineMarginLoss
from dmlkit.registry import register_loss


@register_loss("cosface")
class CosFaceLoss(CosineMarginLoss):
    """Cross-entropy over ``scale * cos`` with an additive cosine margin on the target.

    ``L = -1/B sum_i log( e^{s (cos t_i - m)} /
    (e^{s (cos t_i - m)} + sum_{c != y_i} e^{s cos t_c}) )``
    where ``t_c`` is the angle between ``x_i`` and the normalized class weight ``W_c``.

    Parameters
    ----------
    num_classes : int
        Number of classes ``C``.
    embedding_size : int
        Embedding dimension ``D``.
    margin : float
        Cosine margin ``m`` subtracted from the target-class cosine.
    scale : float
        Logit scale ``s``.

    Attributes
    ----------
    W : nn.Parameter of shape (D, C)
        Class weights in pytorch-metric-learning's name and layout (state dicts load
        across the two libraries); ``weight`` is the ``(C, D)`` row view ``W.T``.

    Matches pytorch-metric-learning's ``CosFaceLoss`` (value and gradient), mined
    tuples (``indices``) included: they weigh the samples as there.
    """

    def __init__(
        self, num_classes: int, embedding_size: int, margin: float = 0.35, scale: float = 64.0
    ) -> None:
        super().__init__(num_classes, embedding_size)
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.margin = float(margin)
        self.scale = float(scale)

    def target_logit(self, cos_target: Tensor) -> Tensor:  # (c,)
        return cos_target - self.margin

    def scale_logits(self, logits: Tensor, x: Tensor) -> Tensor:  # (c, C)
        return logits.mul_(self.scale)
