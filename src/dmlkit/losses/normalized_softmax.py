"""Normalized softmax loss (Zhai & Wu, "Classification is a Strong Baseline for Deep
Metric Learning", BMVC 2019; arXiv 2018)."""

from __future__ import annotations

from torch import Tensor

from dmlkit.losses.weight_classifier import CosineMarginLoss
from dmlkit.registry import register_loss


@register_loss("normalized_softmax")
class NormalizedSoftmaxLoss(CosineMarginLoss):
    """Cross-entropy over ``cos(x_i, W_c) / temperature`` with L2-normalized class weights.

    ``L = -1/B sum_i log softmax_c(cos(x_i, W_c) / T)[y_i]``; embeddings and the rows of
    ``weight`` are L2-normalized, so each row of ``weight`` acts as a class proxy.

    Parameters
    ----------
    num_classes : int
        Number of classes ``C``; labels must lie in ``[0, C)``.
    embedding_size : int
        Embedding dimension ``D``.
    temperature : float
        Softmax temperature ``T`` (> 0).

    Attributes
    ----------
    W : nn.Parameter of shape (D, C)
        Class weights in pytorch-metric-learning's name and layout (state dicts load
        across the two libraries); ``weight`` is the ``(C, D)`` row view ``W.T``.

    Matches pytorch-metric-learning's ``NormalizedSoftmaxLoss`` (value and gradient), mined
    tuples (``indices``) included: they weigh the samples as there.
    """

    def __init__(self, num_classes: int, embedding_size: int, temperature: float = 0.05) -> None:
        super().__init__(num_classes, embedding_size)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def scale_logits(self, logits: Tensor, x: Tensor) -> Tensor:  # (c, C)
        return logits.div_(self.temperature)
