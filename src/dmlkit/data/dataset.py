"""In-memory datasets: arrays plus int64 labels, and their subsets.

Labels are ``(n,)`` class ids, or ``(n, L)`` hierarchical labels (coarsest level first,
``L >= 2``), whose classes are their leaves: the distinct full label rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dmlkit._checks import first_few


def leaf_ids(labels: Tensor) -> Tensor:
    """The class of each item as one id, ``(n,)`` or ``(n, L)`` -> ``(n,)`` int64.

    ``(n,)`` labels are returned as they are; for ``(n, L)`` hierarchical labels the id
    of an item is the position of its label row (its leaf) among the distinct rows in
    sorted order, so per-class splits and counts work on hierarchical data too.
    """
    if labels.dim() == 1:
        return labels
    _, inverse = torch.unique(labels, dim=0, return_inverse=True)  # (n,)
    return inverse.reshape(-1).long()


#: the largest finite float32 value
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def check_float32_range(x: Tensor) -> None:
    """Refuse finite values of ``x`` beyond float32's range (about 3.4e38): as float32,
    the type inputs are held in, they would become infinite. NaN and infinite values
    pass here (the input checks name their rows)."""
    if x.dtype != torch.float64 or x.numel() == 0:
        return
    flat = x.reshape(x.shape[0], -1) if x.dim() >= 1 else x.reshape(1, -1)  # (n, d)
    big = (flat.abs() > FLOAT32_MAX) & torch.isfinite(flat)  # (n, d)
    rows = big.any(dim=1)  # (n,)
    if not bool(rows.any()):
        return
    bad = rows.nonzero().flatten().tolist()
    peak = float(flat[big].abs().max())
    raise ValueError(
        f"x holds values up to |x| = {peak:.3g} in {len(bad)} of {flat.shape[0]} items "
        f"({'row' if len(bad) == 1 else 'rows'} {first_few(bad)}): they exceed float32's "
        f"range ({FLOAT32_MAX:.2g}), in which inputs are held; rescale them (standardize, "
        "or divide by a large constant) before loading")


class LabelledItems:
    """What any labelled dataset derives from its ``labels``: ``(n,)`` class ids or
    ``(n, L)`` hierarchical labels, whose classes are the leaves (distinct rows)."""

    labels: Tensor

    @property
    def num_classes(self) -> int:
        """Number of distinct labels (leaf classes of ``(n, L)`` labels) present."""
        if self.labels.dim() == 2:
            return int(torch.unique(self.labels, dim=0).shape[0])
        return int(torch.unique(self.labels).numel())

    @property
    def classes(self) -> list:
        """Sorted distinct labels present (label-row tuples for ``(n, L)`` labels)."""
        if self.labels.dim() == 2:
            return [tuple(row) for row in torch.unique(self.labels, dim=0).tolist()]
        return torch.unique(self.labels).tolist()


class ArrayDataset(LabelledItems, Dataset):
    """A dataset held in memory: inputs ``x`` of shape ``(n, ...)`` and labels ``(n,)``
    or hierarchical labels ``(n, L)``.

    Images are stored as ``(n, C, H, W)`` float32 in ``[0, 1]``; vectors as ``(n, d)``.

    Parameters
    ----------
    x : array-like or Tensor of shape (n, ...)
        Inputs; floating arrays become float32, integer arrays are kept as given.
    labels : array-like or Tensor of shape (n,) or (n, L)
        Integer class labels, or hierarchical labels with ``L >= 2`` levels, coarsest
        first (stored as an int64 tensor).
    class_names : sequence of str, optional
        Name of each class id (``class_names[label]``).
    """

    def __init__(
        self,
        x: Tensor | np.ndarray | Sequence,
        labels: Tensor | np.ndarray | Sequence[int] | Sequence[Sequence[int]],
        class_names: Sequence[str] | None = None,
        paths: Sequence[str] | None = None,
    ) -> None:
        x_t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
        if x_t.is_floating_point():
            check_float32_range(x_t)
            x_t = x_t.float()
        if not isinstance(labels, Tensor) and np.asarray(labels).dtype.kind in "USO":
            raise TypeError("labels must be integer class ids; map class names to ids, e.g. "
                            "names, ids = np.unique(labels, return_inverse=True)")
        y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels)
        if y.dim() == 2 and y.dtype == torch.bool:
            raise TypeError(
                f"labels of shape {tuple(y.shape)} are bool multi-labels, which an "
                "ArrayDataset does not hold: give 1-D class ids (n,) or integer "
                "hierarchical labels (n, L)")
        if y.dim() not in (1, 2) or (y.dim() == 2 and y.shape[1] < 2):
            raise ValueError(
                f"labels must be 1-D class ids (n,) or hierarchical labels (n, L) with "
                f"L >= 2 levels, got shape {tuple(y.shape)}")
        if y.is_floating_point() and not torch.equal(y, y.round()):
            raise ValueError("labels must be integers, got non-integer floats")
        if x_t.dim() < 1 or x_t.shape[0] != y.shape[0]:
            raise ValueError(
                f"x has {x_t.shape[0] if x_t.dim() else 0} rows but labels has {y.shape[0]}"
            )
        self.x = x_t
        self.labels = y.long()
        if self.labels.numel() and int(self.labels.min()) < 0:
            raise ValueError(f"labels must be >= 0, got {int(self.labels.min())}")
        self.class_names = list(class_names) if class_names is not None else None
        #: the file each item was read from (image and audio folders), else None
        self.paths = None if paths is None else [str(p) for p in paths]
        if self.paths is not None and len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths for {len(self.labels)} items")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.x[index], self.labels[index]

    def get_batch(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        """``(x[indices], labels[indices])`` in one indexing operation (no per-item collate)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.x[idx], self.labels[idx]

    def subset(self, indices: Sequence[int] | Tensor | np.ndarray) -> ArrayDataset:
        """The items at ``indices`` (a copy), keeping ``class_names`` and ``paths``."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        paths = None if self.paths is None else [self.paths[i] for i in idx.tolist()]
        return ArrayDataset(self.x[idx], self.labels[idx], self.class_names, paths)

    def __repr__(self) -> str:
        return (
            f"ArrayDataset(n={len(self)}, x_shape={tuple(self.x.shape[1:])}, "
            f"num_classes={self.num_classes})"
        )


__all__ = ["FLOAT32_MAX", "ArrayDataset", "LabelledItems", "check_float32_range", "leaf_ids"]
