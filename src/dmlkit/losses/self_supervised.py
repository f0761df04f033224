"""Self-supervised wrapper: two views of one item are its positives."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dmlkit.functional.distances import check_embeddings
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.registry import register_loss


@register_loss("self_supervised")
class SelfSupervisedLoss(BaseMetricLoss):
    """Turn any tuple loss into a self-supervised one: augmented views share an item id.

    Three call forms:

    * ``loss(view1, view2)`` or ``loss(view1, ref_embeddings=view2)`` — two ``(B, dim)``
      tensors, row ``i`` of each is a view of item ``i``;
    * ``loss(embeddings)`` — one ``(2B, dim)`` tensor, ``cat([view1, view2])``;
    * ``loss(embeddings, item_ids)`` — any number of views, ``item_ids`` ``(n,)`` say
      which rows are views of the same item (this is the inner loss itself).

    With ``symmetric=True`` the inner loss sees the ``2B`` views with ids
    ``[0..B-1, 0..B-1]``, so every view is an anchor (SimCLR's NT-Xent when the inner
    loss is :class:`NTXentLoss`). With ``symmetric=False`` view 1 gives the anchors and
    view 2 the references (``ref_embeddings``). This is pytorch-metric-learning's
    ``SelfSupervisedLoss``. ``indices`` pass through to the inner loss (they index the
    concatenated views, or view 1 / view 2 when not symmetric) alike in the two-view
    forms; ``ref_labels`` go only with item ids (the third form).

    Parameters
    ----------
    loss : BaseMetricLoss
        The inner loss.
    symmetric : bool
        See above.
    """

    def __init__(self, loss: BaseMetricLoss, symmetric: bool = True) -> None:
        super().__init__(distance=None)
        if not isinstance(loss, BaseMetricLoss):
            raise ValueError(f"loss must be a BaseMetricLoss, got {type(loss).__name__}")
        self.loss = loss
        self.symmetric = symmetric
        self.distance = loss.distance
        self.accepts_indices = loss.accepts_indices

    def forward(  # type: ignore[override]
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        *,
        indices: Any = None,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        if isinstance(labels, Tensor) and labels.dim() == 2 and torch.is_floating_point(labels):
            if ref_embeddings is not None or ref_labels is not None:
                raise ValueError(
                    "SelfSupervisedLoss got the second view positionally: pass no "
                    "ref_embeddings or ref_labels with it"
                )
            view1, view2 = embeddings, labels  # loss(view1, view2)
        elif labels is not None:  # item ids given: the inner loss as is
            return self.loss(
                embeddings,
                labels,
                indices=indices,
                ref_embeddings=ref_embeddings,
                ref_labels=ref_labels,
            )
        elif ref_labels is not None:
            raise ValueError(
                "SelfSupervisedLoss views take no ref_labels (row i of each view is item i): "
                "pass item ids as labels to give a reference set"
            )
        elif ref_embeddings is not None:
            view1, view2 = embeddings, ref_embeddings  # loss(view1, ref_embeddings=view2)
        else:  # loss(cat([view1, view2]))
            check_embeddings(embeddings)
            if embeddings.shape[0] % 2:
                raise ValueError(
                    f"concatenated views need an even batch, got {embeddings.shape[0]} rows"
                )
            half = embeddings.shape[0] // 2
            view1, view2 = embeddings[:half], embeddings[half:]
        check_embeddings(view1, "view1 embeddings")
        check_embeddings(view2, "view2 embeddings")
        if view1.shape != view2.shape:
            raise ValueError(
                f"the two views must have equal shapes, got {tuple(view1.shape)} "
                f"and {tuple(view2.shape)}"
            )
        ids = torch.arange(view1.shape[0], device=view1.device)  # (B,)
        if self.symmetric:
            both = torch.cat([view1, view2], dim=0)  # (2B, d)
            return self.loss(both, torch.cat([ids, ids]), indices=indices)
        # a distinct ref_labels object: view 2 is a reference set even when it is view 1
        # itself (the batch as its own reference would drop the diagonal positives)
        return self.loss(
            view1, ids, indices=indices, ref_embeddings=view2, ref_labels=ids.clone()
        )
