"""P2SGrad loss (Zhang, Zhao, Yan, Yu, Ding & Wang, "P2SGrad: Refined Gradients for
Optimizing Deep Face Models", CVPR 2019)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dmlkit._checks import check_int
from dmlkit.losses.weight_classifier import WeightClassifierLoss
from dmlkit.registry import register_loss

#: columns of ``weight`` shorter than this are scaled up by its inverse, not normalized
_RENORM_MAX = 1e-5
_RENORM_INV = 1e5
#: weight dtypes whose unit columns are unit only to about 1e-3 (rounding)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _renormed_columns(weight: Tensor) -> Tensor:
    """Columns to unit length: ``renorm(2, 1, 1e-5) * 1e5``, as the paper's code.

    ``torch.renorm`` scales a column of norm ``r > 1e-5`` by ``1e-5 / (r + 1e-7)``, so
    the result is ``r / (r + 1e-7)`` long: unit up to 1e-7 relative; shorter columns are
    only multiplied by 1e5. Float16 and bfloat16 weights are rescaled in float32 and
    rounded back (in float16 the ``1e-5``-long intermediate columns are subnormal, which
    leaves wide columns several percent off unit length).
    """
    if weight.dtype in _LOW_PRECISION:
        return weight.float().renorm(2, 1, _RENORM_MAX).mul_(_RENORM_INV).to(weight.dtype)
    return weight.renorm(2, 1, _RENORM_MAX).mul_(_RENORM_INV)


@register_loss("p2s_grad")
class P2SGradLoss(WeightClassifierLoss):
    r"""Mean squared error between class cosines and the one-hot target.

    .. math::

        L = \frac{1}{nC} \sum_{i=1}^{n} \sum_{c=1}^{C}
            \big(\cos\theta_{ic} - [c = y_i]\big)^2,
        \qquad \cos\theta_{ic} = \frac{x_i \cdot W_c}{\lVert x_i\rVert}

    with unit-length class vectors :math:`W_c` (the columns of ``weight``) and the cosine
    clamped to :math:`[-1, 1]`. Its gradient is the paper's eq. 11, the cosine-based
    softmax gradient with the probability replaced by the cosine. Before every call the
    columns of ``weight`` are rescaled to unit length in place (no gradient), as in
    pytorch-metric-learning's ``P2SGradLoss``, which this matches (labels only: no
    mined tuples, no reference set).

    Parameters
    ----------
    descriptors_dim : int
        Embedding dimension ``D``.
    num_classes : int
        Number of classes ``C``.

    Attributes
    ----------
    weight : nn.Parameter of shape (D, C)
        Class vectors as columns (the library's layout and name), initialized uniform in
        ``[-1, 1]`` and normalized.
    """

    def __init__(self, descriptors_dim: int, num_classes: int) -> None:
        check_int("descriptors_dim", descriptors_dim)
        super().__init__(num_classes, descriptors_dim)
        self.descriptors_dim = descriptors_dim
        self.weight = nn.Parameter(torch.empty(descriptors_dim, num_classes))
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            self.weight.copy_(_renormed_columns(self.weight))

    def _cosines(self, x: Tensor, w: Tensor) -> Tensor:
        x_norm = x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)  # (c, 1)
        return ((x @ w) / x_norm).clamp(-1.0, 1.0)  # (c, C)

    def logits(self, embeddings: Tensor) -> Tensor:
        """Class cosines ``(n, C)`` (the scores for prediction)."""
        return self._cosines(embeddings, self.weight.to(embeddings.dtype))

    def class_loss(
        self, embeddings: Tensor, labels: Tensor, weights: Tensor | None = None
    ) -> Tensor:
        with torch.no_grad():
            # a state update outside autograd: new storage, so that graphs of earlier
            # calls keep the values they saved
            self.weight.data = _renormed_columns(self.weight.data)
            # (embeddings arrive promoted to float32: the weight's dtype sets the rounding)
            low = self.weight.dtype in _LOW_PRECISION
            norms = (self.weight.float() if low else self.weight).norm(dim=0)  # (C,)
            rtol = 1e-2 if low else 1e-5
            if not bool(((norms - 1.0).abs() < rtol).all()):
                bad = int(torch.argmax((norms - 1.0).abs()))
                raise ValueError(
                    f"class vector {bad} of P2SGradLoss.weight has norm {float(norms[bad]):.3g} "
                    "and cannot be normalized (all but zero)"
                )
        w = self.weight.to(embeddings.dtype)  # (D, C)

        def chunk_terms(
            xc: Tensor, lc: Tensor, _wc: Tensor, w_: Tensor
        ) -> tuple[Tensor, Tensor]:  # (no mined tuples: _wc is ones)
            cos = self._cosines(xc, w_)  # (c, C)
            target = torch.zeros_like(cos).scatter_(1, lc[:, None], 1.0)  # (c, C) one-hot
            return ((cos - target) ** 2).sum(), torch.tensor(cos.numel(), device=xc.device)

        total, count = self.chunked_row_sum(
            chunk_terms, embeddings, labels, None, w, elems_per_row=4 * self.num_classes
        )
        return total / count.clamp_min(1)


__all__ = ["P2SGradLoss"]
