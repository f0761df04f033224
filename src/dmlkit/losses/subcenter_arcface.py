"""Sub-center ArcFace (Deng et al., "Sub-center ArcFace: Boosting Face Recognition by
Large-scale Noisy Web Faces", ECCV 2020)."""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit._checks import check_int
from dmlkit.functional.distances import l2_normalize
from dmlkit.losses.arcface import ArcFaceLoss
from dmlkit.losses.weight_classifier import CosineMarginLoss, check_class_labels
from dmlkit.registry import register_loss


@register_loss("subcenter_arcface")
class SubCenterArcFaceLoss(ArcFaceLoss):
    """ArcFace with ``sub_centers`` weight vectors per class; a class's cosine is the max.

    ``cos t_c = max_k cos(x, W_{c,k})``, then the ArcFace margin and cross-entropy apply
    (see :class:`~dmlkit.losses.ArcFaceLoss`). Noisy samples can settle on a non-dominant
    sub-center instead of pulling the class's main one; :meth:`outliers` finds them.

    Parameters
    ----------
    num_classes : int
        Number of classes ``C``.
    embedding_size : int
        Embedding dimension ``D``.
    margin : float
        Angular margin in degrees.
    scale : float
        Logit scale.
    sub_centers : int
        Vectors per class ``K``.

    Attributes
    ----------
    W : nn.Parameter of shape (D, C * K)
        Column ``c * K + k`` is sub-center ``k`` of class ``c``: pytorch-metric-learning's
        name, shape and order (state dicts load across the two libraries); ``weight``
        is the ``(C * K, D)`` row view ``W.T``.

    Matches pytorch-metric-learning's ``SubCenterArcFaceLoss`` (value and gradient), mined
    tuples (``indices``) included: they weigh the samples as there.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        margin: float = 28.6,
        scale: float = 64.0,
        sub_centers: int = 3,
    ) -> None:
        check_int("sub_centers", sub_centers)
        CosineMarginLoss.__init__(self, num_classes, embedding_size, per_class=sub_centers)
        self._set_margin_and_scale(margin, scale)
        self.sub_centers = sub_centers

    @torch.no_grad()
    def outliers(self, embeddings: Tensor, labels: Tensor, threshold: float = 75.0) -> Tensor:
        """Indices of samples more than ``threshold`` degrees from their class's main sub-center.

        The dominant sub-center of a class is the one closest to most of its samples in
        ``embeddings``. Returns a sorted ``(k,)`` int64 tensor. ``labels`` must be class
        ids in ``[0, num_classes)`` (``ValueError`` otherwise).
        """
        if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"labels must have shape ({embeddings.shape[0]},), got {tuple(labels.shape)}"
            )
        check_class_labels(labels, self.num_classes)
        K = self.sub_centers
        w = l2_normalize(self.weight.to(embeddings.dtype))  # (C * K, D)
        w = w.view(self.num_classes, K, -1)  # (C, K, D)
        x = l2_normalize(embeddings)  # (n, D)
        cos = torch.einsum("nd,nkd->nk", x, w[labels])  # (n, K) cosines to own sub-centers
        best = cos.argmax(dim=1)  # (n,)
        votes = torch.zeros(self.num_classes, K, dtype=torch.long, device=x.device)
        votes.index_put_((labels, best), torch.ones_like(best), accumulate=True)  # (C, K)
        dominant = votes.argmax(dim=1)  # (C,)
        cos_dominant = cos.gather(1, dominant[labels][:, None]).squeeze(1)  # (n,)
        limit = torch.cos(torch.deg2rad(torch.tensor(threshold, dtype=x.dtype)))
        return torch.nonzero(cos_dominant < limit).flatten()
