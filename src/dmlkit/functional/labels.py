"""Label relations and masks.

Every "same or different" decision in dmlkit goes through :func:`same_label`, so a new
kind of label is one function. Supported label kinds:

* class labels: ``(n,)`` integer tensor; same = equal;
* hierarchical labels: ``(n, L)`` integer tensor, coarsest level first; same = equal at
  every level (use :func:`same_label_at_level` for a coarser relation);
* multi-labels: ``(n, C)`` bool tensor; same = share at least one label.

Two label tensors compared with each other must be of one kind: bool multi-labels and
integer labels never mix, and ``(n, L)`` / ``(n, C)`` tensors need the same width.
"""

from __future__ import annotations

import torch
from torch import Tensor


def check_labels(
    labels: Tensor, n: int, name: str = "labels", *, allow_empty_rows: bool = True
) -> Tensor:
    """Raise a clear error unless ``labels`` is a label tensor for ``n`` items.

    Parameters
    ----------
    labels : Tensor
        ``(n,)`` integer class ids, ``(n, L)`` integer hierarchical labels or ``(n, C)``
        bool multi-labels.
    n : int
        Number of items the labels belong to.
    name : str
        Name of the argument, for the messages.
    allow_empty_rows : bool
        Whether a multi-label row may be all False (an item with no label). Retrieval
        accepts such items (a query without a relevant reference is skipped, a reference
        is relevant to no query); training does not (``False``): an item with no label
        is not "same" as itself under "share any label", so it has no positive and would
        be its own negative.

    Returns
    -------
    Tensor
        ``labels``, with integer ids as int64 (``uint8`` or ``int32`` ids would index
        tables wrongly: a ``uint8`` index is a mask to torch).

    Raises
    ------
    TypeError
        Not a tensor, floating or complex dtype, or bool ``(n,)`` labels.
    ValueError
        Wrong number of dimensions or rows, zero columns, or (``allow_empty_rows=False``)
        a multi-label row without any label.
    """
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
    _check_width(labels, name)
    if not allow_empty_rows and labels.dtype == torch.bool:
        empty = ~labels.any(dim=1)  # (n,)
        if bool(empty.any()):
            rows = empty.nonzero().flatten()
            raise ValueError(
                f"{name}: {rows.numel()} of {n} multi-label rows hold no label (first: row "
                f"{int(rows[0])}); an item with no label has no positive and is not the "
                "same as itself under 'share any label', so it cannot be trained on: drop "
                "those items or give each a label"
            )
    if labels.dtype != torch.bool and labels.dtype != torch.int64:
        return labels.long()
    return labels


def _check_width(labels: Tensor, name: str) -> None:
    """``(n, 0)`` labels hold no label at all: every relation on them is meaningless."""
    if labels.dim() == 2 and labels.shape[1] == 0:
        raise ValueError(
            f"{name} has shape {tuple(labels.shape)}: (n, L) hierarchical or (n, C) "
            "multi-labels need at least one column"
        )


def _check_same_kind(labels_a: Tensor, labels_b: Tensor) -> None:
    """Both bool multi-labels or both integer labels, of one shape per row."""
    if labels_a.dim() != labels_b.dim():
        raise ValueError(
            f"label kinds differ: shapes {tuple(labels_a.shape)} and {tuple(labels_b.shape)}"
        )
    is_bool_a, is_bool_b = labels_a.dtype == torch.bool, labels_b.dtype == torch.bool
    if is_bool_a != is_bool_b:
        raise ValueError(
            f"label kinds differ: dtypes {labels_a.dtype} and {labels_b.dtype} (bool "
            "multi-labels cannot be compared with integer labels)"
        )
    _check_width(labels_a, "labels_a")
    _check_width(labels_b, "labels_b")
    if labels_a.dim() == 2 and labels_a.shape[1] != labels_b.shape[1]:
        raise ValueError(
            f"label widths differ: {labels_a.shape[1]} and {labels_b.shape[1]} columns"
        )


def same_label(labels_a: Tensor, labels_b: Tensor | None = None) -> Tensor:
    """All-pairs "same" relation, ``(n, ...), (m, ...) -> (n, m)`` bool.

    Raises
    ------
    ValueError
        When the two tensors are of different kinds (``(n,)`` vs ``(n, L)``, bool vs
        integer), of different widths, or have zero columns.
    """
    labels_b = labels_a if labels_b is None else labels_b
    _check_same_kind(labels_a, labels_b)
    if labels_a.dim() == 1:
        return labels_a[:, None] == labels_b[None, :]  # (n, m)
    if labels_a.dtype == torch.bool:  # multi-label: share any
        return (labels_a.float() @ labels_b.float().T) > 0  # (n, m)
    return (labels_a[:, None, :] == labels_b[None, :, :]).all(dim=2)  # (n, m)


def same_label_at_level(labels_a: Tensor, labels_b: Tensor | None, level: int) -> Tensor:
    """Hierarchical relation: equal on levels ``0..level`` (0 = coarsest), ``(n, m)`` bool.

    Raises
    ------
    ValueError
        Unless both tensors are integer ``(n, L)`` / ``(m, L)`` hierarchical labels with
        the same ``L`` and ``0 <= level < L``.
    """
    labels_b = labels_a if labels_b is None else labels_b
    for name, labels in (("labels_a", labels_a), ("labels_b", labels_b)):
        if labels.dim() != 2 or labels.dtype == torch.bool or torch.is_floating_point(labels):
            raise ValueError(
                "same_label_at_level needs integer hierarchical labels of shape (n, L); "
                f"{name} has shape {tuple(labels.shape)} and dtype {labels.dtype}"
            )
        _check_width(labels, name)
    if labels_a.shape[1] != labels_b.shape[1]:
        raise ValueError(
            f"labels_a have {labels_a.shape[1]} levels but labels_b have {labels_b.shape[1]}"
        )
    if not 0 <= level < labels_a.shape[1]:
        raise ValueError(f"level must be in [0, {labels_a.shape[1] - 1}], got {level}")
    a = labels_a[:, : level + 1]  # (n, level + 1)
    b = labels_b[:, : level + 1]  # (m, level + 1)
    return (a[:, None, :] == b[None, :, :]).all(dim=2)  # (n, m)


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

    An item is never its own negative as long as every label row relates to itself,
    which holds for class and hierarchical labels and for multi-label rows holding at
    least one label (what ``check_labels(..., allow_empty_rows=False)`` ensures).
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
