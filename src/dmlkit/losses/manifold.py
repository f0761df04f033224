"""Manifold loss (Aziere & Todorovic, "Ensemble Deep Manifold Similarity Learning using Hard
Proxies", CVPR 2019)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from dmlkit._checks import check_int
from dmlkit.distances.base import BaseDistance
from dmlkit.distances.cosine import CosineSimilarity
from dmlkit.functional.distances import l2_normalize
from dmlkit.functional.tuples import IndexTuple
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.losses.weight_classifier import check_class_labels
from dmlkit.registry import register_loss


def _hinge_softplus(scores: Tensor, own: Tensor, margin: float) -> Tensor:
    """``mean_i log(1 + sum_{k != own_i, v_ik >= 0} exp(v_ik))``.

    ``v_ik = scores_ik - scores_i,own_i + margin``; ``scores`` ``(n, K)``, ``own`` ``(n,)``.
    """
    v = scores - scores.gather(1, own[:, None]) + margin  # (n, K)
    keep = (v >= 0) & (torch.arange(scores.shape[1], device=scores.device) != own[:, None])
    terms = torch.where(keep, torch.exp(torch.where(keep, v, 0.0)), 0.0)  # (n, K)
    return torch.log1p(terms.sum(dim=1)).mean()


@register_loss("manifold")
class ManifoldLoss(BaseMetricLoss):
    r"""Proxy loss in the manifold similarity of a random walk over embeddings and proxies.

    Embeddings and the ``K`` proxies form a graph with affinities
    :math:`S_{uv} = e^{2\max(0, \cos(z_u, z_v))}` (zero diagonal), normalized
    :math:`\bar S = D^{-1/2} S D^{-1/2}`; the random walk with restart gives the manifold
    similarities :math:`F = (1 - \alpha)(I - \alpha \bar S)^{-1}`. With each embedding's
    proxy (meta-class) :math:`y_i` and margin :math:`\mu`:

    .. math::

        L^{int} = \frac1n \sum_i \log\Big(1 + \sum_{k \ne y_i}
                 [v_{ik} \ge 0]\, e^{v_{ik}}\Big),\quad
        v_{ik} = F_{i,k} - F_{i,y_i} + \mu,

    :math:`L^{ctx}` the same with :math:`F_{i,k}` replaced by the cosine between the rows
    of :math:`F` of embedding :math:`i` and proxy :math:`k`, and
    :math:`L = L^{int} + \lambda_C L^{ctx}` (:math:`\lambda_C = \infty`: the context loss
    alone).

    Meta-classes are the ``labels`` (ids in ``[0, K)``), or a 1-D tensor passed as
    ``indices`` (pytorch-metric-learning's ``ManifoldLoss`` convention; that library
    draws them at random when none are given, see :meth:`random_meta_classes`). Matches
    that loss in value and gradients; there :math:`\lambda_C = \infty` gives NaN. No
    reference-set form (ValueError).

    Parameters
    ----------
    l : int
        Embedding dimension.
    K : int
        Number of proxies.
    lambdaC : float
        Weight :math:`\lambda_C \ge 0` of the context loss; ``inf``: the context loss
        alone.
    alpha : float
        Random-walk parameter :math:`\alpha \in (0, 1)`.
    margin : float
        Margin :math:`\mu`.
    distance : CosineSimilarity, optional
        Only the cosine similarity is accepted.

    Attributes
    ----------
    proxies : nn.Parameter of shape (K, l)
        Standard-normal initialized, as in the library.

    Notes
    -----
    The inverse of an ``(n + K, n + K)`` matrix couples every sample with every other:
    memory and time are O((n + K)^2) and O((n + K)^3); there is no chunked form.
    """

    requires_labels = True
    accepts_indices = False
    infinite_ok = frozenset({"lambdaC"})  # inf: the context loss alone

    def __init__(
        self,
        l: int,  # noqa: E741 (the library's name)
        K: int = 50,  # noqa: N803
        lambdaC: float = 1.0,  # noqa: N803
        alpha: float = 0.8,
        margin: float = 5e-4,
        distance: BaseDistance | None = None,
    ) -> None:
        if distance is not None and not isinstance(distance, CosineSimilarity):
            raise TypeError(f"ManifoldLoss needs a CosineSimilarity, got {type(distance).__name__}")
        super().__init__(distance=distance)
        self.l = check_int("l", l)
        self.K = check_int("K", K)
        if not lambdaC >= 0:
            raise ValueError(f"lambdaC must be >= 0, got {lambdaC}")
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.lambdaC = float(lambdaC)
        self.alpha = float(alpha)
        self.margin = float(margin)
        self.proxies = nn.Parameter(torch.randn(K, l))

    @staticmethod
    def default_distance() -> BaseDistance:
        return CosineSimilarity()

    @staticmethod
    def random_meta_classes(
        n: int, K: int, generator: torch.Generator | None = None  # noqa: N803
    ) -> Tensor:
        """``(n,)`` meta-classes covering every proxy once, the rest uniform, shuffled.

        The assignment pytorch-metric-learning draws when given none; needs ``n >= K``.
        """
        if n < K:
            raise ValueError(f"random meta-classes need n >= K, got n={n}, K={K}")
        rest = torch.randint(0, K, (n - K,), generator=generator)
        meta = torch.cat([torch.arange(K), rest])  # (n,)
        return meta[torch.randperm(n, generator=generator)]

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        *,
        indices: Any = None,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        if isinstance(indices, Tensor):  # meta-classes in the library's slot
            if labels is not None:
                raise ValueError(
                    "give ManifoldLoss its meta-classes as labels or as indices, not both"
                )
            labels, indices = indices, None
        return super().forward(
            embeddings,
            labels,
            indices=indices,
            ref_embeddings=ref_embeddings,
            ref_labels=ref_labels,
        )

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        if ref_embeddings is not None:
            raise ValueError("ManifoldLoss does not use ref_embeddings")
        if labels is None:
            raise ValueError("ManifoldLoss needs meta-class labels")
        check_class_labels(labels, self.K, "K", "proxies (one per class or meta-class)")
        if embeddings.shape[1] != self.l:
            raise ValueError(f"embeddings have dim {embeddings.shape[1]}, but l={self.l}")
        n = embeddings.shape[0]
        z = torch.cat([embeddings, self.proxies.to(embeddings.dtype)])  # (n + K, l)
        zn = self.distance.maybe_normalize(z)
        s = torch.exp(self.distance.compute_matrix(zn, zn).clamp_min(0.0) / 0.5)  # (n+K, n+K)
        eye = torch.eye(n + self.K, dtype=s.dtype, device=s.device)
        s = s * (1.0 - eye)  # no self-affinity
        d_inv_sqrt = s.sum(dim=1).rsqrt()  # (n + K,)
        s_bar = d_inv_sqrt[:, None] * s * d_inv_sqrt[None, :]  # (n + K, n + K)
        f = (1.0 - self.alpha) * torch.linalg.inv(eye - self.alpha * s_bar)  # (n + K, n + K)
        f_emb, f_prox = f[:n], f[n:]  # (n, n + K), (K, n + K)
        # cosines of the rows (F.cosine_similarity's eps: norms clamped at 1e-8), as a product
        ctx = l2_normalize(f_emb, eps=1e-8) @ l2_normalize(f_prox, eps=1e-8).T  # (n, K)
        loss_ctx = _hinge_softplus(ctx, labels, self.margin)
        if math.isinf(self.lambdaC):
            return loss_ctx
        loss_int = _hinge_softplus(f_emb[:, n:], labels, self.margin)
        return loss_int + self.lambdaC * loss_ctx


__all__ = ["ManifoldLoss"]
