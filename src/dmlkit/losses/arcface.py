"""ArcFace / additive angular margin loss (Deng et al., CVPR 2019; arXiv 1801.07698)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dmlkit.functional.distances import l2_normalize
from dmlkit.losses._rows import with_grads
from dmlkit.losses.weight_classifier import CosineMarginLoss
from dmlkit.registry import register_loss


def cos_plus_angle(cos: Tensor, angle: float) -> Tensor:
    """``cos(acos(cos) + angle)`` for the target logit, stable and monotone in the angle.

    Computed as ``c cos m - sqrt(1 - c^2) sin m`` with ``1 - c^2`` clamped at the dtype's
    smallest normal number, so the value is exact and the gradient finite even at
    ``|c| = 1`` (where ``acos`` has none: pytorch-metric-learning's gradient is NaN there).
    Where ``theta + m`` would pass ``pi`` (``c < -cos m``) the logit continues linearly as
    ``c - m sin m`` so it keeps decreasing with the angle (ArcFace's "easy margin" fix).
    """
    c = cos.clamp(-1.0, 1.0)  # (c,)
    sin = torch.sqrt((1.0 - c * c).clamp_min(torch.finfo(c.dtype).tiny))  # (c,)
    shifted = c * math.cos(angle) - sin * math.sin(angle)  # (c,)
    fallback = c - angle * math.sin(angle)  # (c,)
    return torch.where(c >= -math.cos(angle), shifted, fallback)


@register_loss("arcface")
class ArcFaceLoss(CosineMarginLoss):
    """Cross-entropy over ``scale * cos`` with an additive angular margin on the target.

    ``L = -1/B sum_i log( e^{s cos(t_i + m)} /
    (e^{s cos(t_i + m)} + sum_{c != y_i} e^{s cos t_c}) )``
    where ``t_c`` is the angle between ``x_i`` and the normalized class weight ``W_c``.
    For ``t_i > pi - m`` the target logit is ``cos t_i - m sin m`` (keeps it monotone).

    Parameters
    ----------
    num_classes : int
        Number of classes ``C``.
    embedding_size : int
        Embedding dimension ``D``.
    margin : float
        Angular margin ``m`` in **degrees** (28.6 degrees ~ 0.5 rad, the paper's value).
    scale : float
        Logit scale ``s``.

    Attributes
    ----------
    W : nn.Parameter of shape (D, C)
        Class weights in pytorch-metric-learning's name and layout (state dicts load
        across the two libraries); ``weight`` is the ``(C, D)`` row view ``W.T``.

    Mined tuples (``indices``) weigh the samples as in pytorch-metric-learning (see
    :class:`~dmlkit.losses.weight_classifier.WeightClassifierLoss`). Matches
    pytorch-metric-learning's ``ArcFaceLoss`` (value and gradient) away from
    ``|cos| = 1``, where this one keeps a finite gradient.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        margin: float = 28.6,
        scale: float = 64.0,
    ) -> None:
        super().__init__(num_classes, embedding_size)
        self._set_margin_and_scale(margin, scale)

    def _set_margin_and_scale(self, margin: float, scale: float) -> None:
        if not 0 <= margin < 180:
            raise ValueError(f"margin must be an angle in degrees in [0, 180), got {margin}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.margin = float(margin)
        self.scale = float(scale)

    @property
    def margin_radians(self) -> float:
        return math.radians(self.margin)

    def target_logit(self, cos_target: Tensor) -> Tensor:  # (c,)
        return cos_plus_angle(cos_target, self.margin_radians)

    def scale_logits(self, logits: Tensor, x: Tensor) -> Tensor:  # (c, C)
        return logits.mul_(self.scale)

    def class_loss(
        self, embeddings: Tensor, labels: Tensor, weights: Tensor | None = None
    ) -> Tensor:
        n, n_cls = embeddings.shape[0], self.weight.shape[0]
        wants_grad = (
            torch.is_grad_enabled()
            and not torch.is_inference_mode_enabled()
            and (embeddings.requires_grad or self.W.requires_grad)
        )
        if type(self) is not ArcFaceLoss or n * n_cls > self.chunk_budget or not wants_grad:
            # (the one pass below is for training: it computes the gradient with the value)
            return super().class_loss(embeddings, labels, weights)
        # one pass: softmax cross-entropy and its closed-form gradient w.r.t. the cosines
        xn = l2_normalize(embeddings)  # (n, D)
        wn = l2_normalize(self.weight.to(embeddings.dtype))  # (C, D)
        s = self.scale
        with torch.no_grad():
            xd, wd = xn.detach(), wn.detach()
            with torch.enable_grad():
                ct = (xd * wd[labels]).sum(dim=1).requires_grad_(True)  # (n,) target cosines
                tl = self.target_logit(ct)  # (n,)
                (dtl,) = torch.autograd.grad(tl.sum(), ct)  # (n,): elementwise derivative
            tl = tl.detach()
            logits = (xd @ wd.T).scatter_(1, labels[:, None], tl[:, None]).mul_(s)  # (n, C)
            lse = torch.logsumexp(logits, dim=1)  # (n,)
            per_sample = lse - s * tl  # (n,)
            # d loss / d cos = s w_i / n (softmax - onehot), times d target / d cos on the
            # target (w_i: the mined tuples' weight of sample i, else 1)
            row = torch.full_like(per_sample, s / n) if weights is None else weights * (s / n)
            loss = (per_sample if weights is None else per_sample * weights).mean()
            g = logits.sub_(lse[:, None]).exp_().mul_(row[:, None])  # (n, C)
            g_t = (g.gather(1, labels[:, None]).squeeze(1) - row) * dtl  # (n,)
            g.scatter_(1, labels[:, None], g_t[:, None])
            gx, gw = g @ wd, g.T @ xd  # (n, D), (C, D)
        return with_grads(loss, xn, wn, gx, gw)
