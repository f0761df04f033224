"""SphereFace / A-Softmax (Liu et al., "SphereFace: Deep Hypersphere Embedding for Face
Recognition", CVPR 2017; arXiv 1704.08063)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dmlkit.losses.weight_classifier import CosineMarginLoss
from dmlkit.registry import register_loss


def cos_multiple_angle(cos: Tensor, m: int) -> Tensor:
    """``cos(m * acos(cos))`` as a polynomial in ``cos`` (smooth, no ``acos`` in the graph).

    ``cos(m t) = sum_n (-1)^n C(m, 2n) cos^{m-2n} t (1 - cos^2 t)^n``.
    """
    sin_sq = 1.0 - cos * cos  # (c,)
    out = torch.zeros_like(cos)
    for n in range(m // 2 + 1):
        out = out + (-1) ** n * math.comb(m, 2 * n) * cos ** (m - 2 * n) * sin_sq**n
    return out


@register_loss("sphereface")
class SphereFaceLoss(CosineMarginLoss):
    """Cross-entropy over ``scale * |x| * cos`` with a multiplicative angular margin.

    The target logit uses ``psi(t) = (-1)^k cos(m t) - 2k`` with ``k = floor(m t / pi)``
    instead of ``cos t``: a monotone extension of ``cos(m t)`` beyond ``pi / m`` (A-Softmax,
    eq. 6-7). Class weights are L2-normalized, embeddings are not: logits are scaled by
    the embedding norm (and by ``scale``).

    ``L = -1/B sum_i log( e^{s |x_i| psi(t_i)} /
    (e^{s |x_i| psi(t_i)} + sum_{c != y_i} e^{s |x_i| cos t_c}) )``

    Parameters
    ----------
    num_classes : int
        Number of classes ``C``.
    embedding_size : int
        Embedding dimension ``D``.
    margin : int
        Integer angular multiplier ``m`` (>= 1; the paper uses 4).
    scale : float
        Extra logit scale ``s``.

    Attributes
    ----------
    W : nn.Parameter of shape (D, C)
        Class weights in pytorch-metric-learning's name and layout (state dicts load
        across the two libraries); ``weight`` is the ``(C, D)`` row view ``W.T``.

    Matches pytorch-metric-learning's ``SphereFaceLoss`` (value and gradient), mined
    tuples (``indices``) included: they weigh the samples as there. Like it,
    this omits the paper's softmax/A-softmax annealing (``lambda``) used early in training.
    """

    def __init__(
        self, num_classes: int, embedding_size: int, margin: int = 4, scale: float = 1.0
    ) -> None:
        super().__init__(num_classes, embedding_size)
        if isinstance(margin, bool) or not float(margin).is_integer() or margin < 1:
            raise ValueError(f"margin must be an integer >= 1, got {margin!r}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.margin = int(margin)
        self.scale = float(scale)

    def target_logit(self, cos_target: Tensor) -> Tensor:  # (c,)
        with torch.no_grad():
            angle = torch.acos(cos_target.clamp(-1.0, 1.0))  # (c,)
            k = torch.floor(angle * self.margin / math.pi)  # (c,) piece of [k pi/m, (k+1) pi/m]
            sign = 1.0 - 2.0 * torch.remainder(k, 2.0)  # (-1)^k
        return sign * cos_multiple_angle(cos_target, self.margin) - 2.0 * k

    def scale_logits(self, logits: Tensor, x: Tensor) -> Tensor:  # (c, C), (c, D)
        return logits * x.norm(dim=1, keepdim=True) * self.scale  # by |x_i| (c, 1)
