"""Label relations and masks.

Every "same or different" decision in dmlkit goes through :func:`same_label`, so a new
kind of label is one function. Supported label kinds:

* class labels: ``(n,)`` integer tensor; same = equal;
* hierarchical labels: ``(n, L)`` integer tensor, coarsest level first; same = equal at
  every level (use :func:`same_label_at_level` for a coarser relation);
* multi-labels: ``(n, C)`` bool tensor; same = share at least one label.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_labels(labels: Tensor, n: int, name: str = "labels") -> Tensor:
    """Raise a clear error unless ``labels`` is a label tensor for ``n`` items; return it
    with integer ids as int64 (``uint8`` or ``int32`` ids would index tables wrongly: a
    ``uint8`` index is a mask to torch)."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() not in (1, 2):
        raise ValueError(f"{name} must have shape (n,) or (n, L), got {tuple(labels.shape)}")
    if labels.shape[0] != n:
        raise ValueError(f"{name} has length {labels.shape[0]} but there are {n} embeddings")
    if torch.is_floating_point(labels) or torch.is_complex(labels):
        raise TypeError(f"{name} must be an integer or bool tensor, got dtype {labels.dtype}")
    if labels.dim() == 1 and labels.dtype == torch.bool:
        raise TypeError(f"{name} of shape (n,) must be integer class ids, not bool")
    if labels.dtype != torch.bool and labels.dtype != torch.int64:
        return labels.long()
    return labels


def same_label(labels_a: Tensor, labels_b: Tensor | None = None) -> Tensor:
    """All-pairs "same" relation, ``(n, ...), (m, ...) -> (n, m)`` bool."""
    labels_b = labels_a if labels_b is None else labels_b
    if labels_a.dim() != labels_b.dim():
        raise ValueError(
            f"label kinds differ: shapes {tuple(labels_a.shape)} and {tuple(labels_b.shape)}"
        )
    if labels_a.dim() == 1:
        return labels_a[:, None] == labels_b[None, :]  # (n, m)
    if labels_a.shape[1] != labels_b.shape[1]:
        raise ValueError(
            f"label widths differ: {labels_a.shape[1]} and {labels_b.shape[1]} columns"
        )
    if labels_a.dtype == torch.bool:  # multi-label: share any
        return (labels_a.float() @ labels_b.float().T) > 0  # (n, m)
    return (labels_a[:, None, :] == labels_b[None, :, :]).all(dim=2)  # (n, m)


def same_label_at_level(labels_a: Tensor, labels_b: Tensor | None, level: int) -> Tensor:
    """Hierarchical relation: equal on levels ``0..level`` (0 = coarsest), ``(n, m)`` bool."""
    labels_b = labels_a if labels_b is None else labels_b
    if labels_a.dim() != 2:
        raise ValueError("same_label_at_level needs hierarchical labels of shape (n, L)")
    if not 0 <= level < labels_a.shape[1]:
        raise ValueError(f"level must be in [0, {labels_a.shape[1] - 1}], got {level}")
    a = labels_a[:, : level + 1]
    b = labels_b[:, : level + 1]
    return (a[:, None, :] == b[None, :, :]).all(dim=2)


def pos_neg_masks(
    labels: Tensor,
    ref_labels: Tensor | None = None,
    *,
    exclude_self: bool | None = None,
    row_offset: int = 0,
) -> tuple[Tensor, Tensor]:
    """Positive and negative masks ``(n, m)`` for query labels against reference labels.

    When ``ref_labels`` is None the reference set is the batch itself and item ``i`` is
    never its own positive; ``exclude_self`` forces that choice either way. For a chunk
    of rows ``row_offset`` is the batch index of the chunk's first row, so row ``i`` is
    item ``row_offset + i`` (pass the full batch's labels as ``ref_labels`` then).
    """
    same = same_label(labels, ref_labels)  # (n, m)
    neg = ~same
    if exclude_self is None:
        exclude_self = ref_labels is None
    if exclude_self:
        same = same & ~self_mask(same.shape[0], same.shape[1], row_offset, same.device)
    return same, neg


def self_mask(n_rows: int, n_cols: int, row_offset: int = 0, device=None) -> Tensor:
    """``(n_rows, n_cols)`` bool mask, True where column == row_offset + row."""
    rows = torch.arange(n_rows, device=device) + row_offset
    cols = torch.arange(n_cols, device=device)
    return rows[:, None] == cols[None, :]


__all__ = ["check_labels", "same_label", "same_label_at_level", "pos_neg_masks", "self_mask"]
