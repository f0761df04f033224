"""VICReg: variance-invariance-covariance regularization (Bardes, Ponce & LeCun, ICLR 2022)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from dmlkit.functional.distances import check_embeddings
from dmlkit.functional.tuples import IndexTuple
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.registry import register_loss


@register_loss("vicreg")
class VICRegLoss(BaseMetricLoss):
    r"""Self-supervised loss of two views ``Z`` (``embeddings``) and ``Z'`` (``ref_embeddings``).

    Row :math:`i` of both is a view of item :math:`i`; no labels, no tuples:

    .. math::

        L = \lambda\, s(Z, Z') + \mu\,[v(Z) + v(Z')] + \nu\,[c(Z) + c(Z')]

    with the invariance :math:`s = \frac{1}{n d}\sum_{i,k} (z_{ik} - z'_{ik})^2`, the
    variance hinge :math:`v(Z) = \frac{1}{2d} \sum_k [1 - \sqrt{\mathrm{Var}(z_{\cdot k})
    + \epsilon}]_+` (unbiased variance; the 1/2 averages the two views) and the
    covariance :math:`c(Z) = \frac{1}{d} \sum_{k \ne l} C(Z)_{kl}^2` with
    :math:`C(Z) = \frac{1}{n-1} \tilde Z^\top \tilde Z` of the centered :math:`\tilde Z`.
    Same parameters, defaults and value as pytorch-metric-learning's ``VICRegLoss``.

    Call as ``loss(embeddings, ref_embeddings=other_view)``. Embeddings are used as they
    are (no normalization, no distance).

    Parameters
    ----------
    invariance_lambda, variance_mu, covariance_v : float
        :math:`\lambda`, :math:`\mu`, :math:`\nu`.
    eps : float
        :math:`\epsilon` under the square root.
    """

    #: called as ``loss(embeddings, ref_embeddings=view2)``, never with labels
    takes_labels = False
    #: rows pair with rows of the second view, never with tuples
    accepts_indices = False

    def __init__(
        self,
        invariance_lambda: float = 25.0,
        variance_mu: float = 25.0,
        covariance_v: float = 1.0,
        eps: float = 1e-4,
    ) -> None:
        super().__init__(distance=None)
        self.invariance_lambda = float(invariance_lambda)
        self.variance_mu = float(variance_mu)
        self.covariance_v = float(covariance_v)
        self.eps = float(eps)

    def forward(  # type: ignore[override]
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        *,
        indices: Any = None,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        if isinstance(labels, Tensor) and labels.shape == embeddings.shape and \
                torch.is_floating_point(labels) and ref_embeddings is None:
            labels, ref_embeddings = None, labels  # loss(view1, view2), as SelfSupervisedLoss
        if labels is not None or ref_labels is not None:
            raise ValueError("VICRegLoss takes no labels: pass the second view as ref_embeddings")
        if indices is not None:
            raise ValueError("VICRegLoss does not use tuple indices")
        if ref_embeddings is None:
            raise ValueError("VICRegLoss needs ref_embeddings (the second view of each row)")
        check_embeddings(embeddings)
        check_embeddings(ref_embeddings, "ref_embeddings")
        if ref_embeddings.shape != embeddings.shape:
            raise ValueError(
                f"the two views must have equal shapes, got {tuple(embeddings.shape)} "
                f"and {tuple(ref_embeddings.shape)}"
            )
        n = embeddings.shape[0]
        if n == 0:
            return self.zero_loss(embeddings) + ref_embeddings.sum() * 0.0
        if n == 1:
            raise ValueError("VICRegLoss needs at least 2 rows (a variance per dimension), got 1")
        z, z2 = embeddings, ref_embeddings
        if z.dtype in (torch.float16, torch.bfloat16):
            z, z2 = z.float(), z2.float()
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.compute_loss(z, None, None, z2.to(z.dtype), None)

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        z, z2 = embeddings, ref_embeddings  # (n, d) each
        invariance = ((z - z2) ** 2).mean()
        variance = self._variance(z) + self._variance(z2)
        covariance = self._covariance(z) + self._covariance(z2)
        return (
            self.invariance_lambda * invariance
            + self.variance_mu * variance
            + self.covariance_v * covariance
        )

    def _variance(self, z: Tensor) -> Tensor:
        std = torch.sqrt(z.var(dim=0) + self.eps)  # (d,)
        return (F.relu(1.0 - std) / 2.0).mean()

    @staticmethod
    def _covariance(z: Tensor) -> Tensor:
        n, d = z.shape
        zc = z - z.mean(dim=0)  # (n, d)
        cov = zc.T @ zc / (n - 1)  # (d, d)
        off = cov.pow(2).sum() - cov.diagonal().pow(2).sum()
        return off / d


__all__ = ["VICRegLoss"]
