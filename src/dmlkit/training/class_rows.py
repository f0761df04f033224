"""Class rows: where a class's parameters sit in a loss that holds one row per class.

Losses with per-class parameters (``normalized_softmax``, ``arcface``, ``proxy_anchor``,
``margin``'s per-class beta, ...) index a ``(num_classes, dim)`` table by label. A run
sizes that table by the number of distinct training labels and gives the loss each
label's position among them (sorted), its row, so that how classes are numbered (0..9,
0, 1000, ..., or ids of 10 digits) never changes what a run allocates or learns.

The sorted class ids are kept in the run's checkpoint under :data:`CLASS_IDS_KEY`;
checkpoints written before class rows existed lack it: their loss was sized by the
largest label (``max + 1``) and indexed by the label itself, and a resume goes on so.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

#: the checkpoint entry holding the sorted class ids (row ``i``: class ``ids[i]``)
CLASS_IDS_KEY = "class_ids"


def class_ids_of(labels: Any) -> Tensor | None:
    """The sorted distinct class ids of ``(n,)`` integer ``labels`` (int64, CPU), or
    ``None`` for labels of other kinds (hierarchical ``(n, L)``, multi-label bool, none),
    which no loss indexes by class row."""
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.dtype == torch.bool:
        return None
    if labels.is_floating_point() or labels.is_complex():
        return None
    return torch.unique(labels.detach().cpu().long())  # (C,) sorted


def run_class_ids(labels: Tensor, checkpoint: dict[str, Any] | None
                  ) -> tuple[Tensor | None, int | None]:
    """``(class_ids, num_classes)`` of a run training on ``labels`` (all its training
    items': every process of a torchrun job computes the same): a new run's loss gets
    one row per distinct label; a resumed run's checkpoint written before class rows
    existed (no :data:`CLASS_IDS_KEY`) goes on as it was sized, ``max + 1`` rows indexed
    by the labels themselves (``class_ids`` None); a later one with the ids it recorded.
    Labels no loss indexes by row (hierarchical, multi-label) keep ``max + 1``."""
    ids = class_ids_of(labels)
    if checkpoint is not None:  # a resume: the rows its loss was trained with
        ids = None if ids is None else as_class_ids(checkpoint.get(CLASS_IDS_KEY))
    if ids is None:
        return None, int(labels.max()) + 1 if len(labels) else None
    return ids, int(ids.numel())


def as_class_ids(value: Any) -> Tensor | None:
    """A checkpoint's :data:`CLASS_IDS_KEY` entry as sorted int64 ids (None stays None)."""
    if value is None:
        return None
    ids = torch.as_tensor(value, dtype=torch.long).cpu().flatten()
    if ids.numel() > 1 and not bool((ids[1:] > ids[:-1]).all()):
        raise ValueError("class_ids must be distinct and sorted ascending (torch.unique "
                         "of the training labels)")
    return ids


def resumed_class_ids(given: Tensor | None, checkpoint: dict[str, Any], where: Any
                      ) -> Tensor | None:
    """The class ids a trainer resumed from ``checkpoint`` (read from ``where``) goes on
    with: the checkpoint's, which its loss's rows were trained with (none: the labels as
    they are); a ``ValueError`` when the trainer was ``given`` others."""
    saved = as_class_ids(checkpoint.get(CLASS_IDS_KEY))
    if given is not None and saved is not None and not torch.equal(given, saved):
        raise ValueError(
            f"{where} was trained with other class ids ({len(saved)} classes) than the "
            f"{len(given)} given (class_ids): resume on the run's own training data")
    return saved


def as_rows(labels: Any, class_ids: Tensor | None) -> Any:
    """``labels`` as the loss takes them: their rows (:func:`label_rows`) with
    ``class_ids``, as they are without (or when they are not a tensor: none)."""
    if class_ids is None or not isinstance(labels, Tensor):
        return labels
    if labels.dim() != 1 or labels.dtype == torch.bool or labels.is_floating_point():
        raise ValueError(f"class_ids map (n,) integer class labels to rows; got labels of "
                         f"shape {tuple(labels.shape)} and dtype {labels.dtype}")
    return label_rows(labels, class_ids)


def label_rows(labels: Tensor, class_ids: Tensor) -> Tensor:
    """``(n,)`` class ids as their rows: positions in the sorted ``class_ids`` (on the
    labels' device, int64). A label that is not among ``class_ids`` (no row of the loss
    is its) is a ``ValueError`` naming it."""
    ids = class_ids.to(labels.device)
    values = labels.long()
    rows = torch.searchsorted(ids, values)  # (n,)
    if not len(ids):
        bad = values
    else:
        bad = values[ids[rows.clamp(max=len(ids) - 1)] != values]
    if bad.numel():
        raise ValueError(
            f"label {int(bad[0])} is not one of the {len(ids)} classes of the training "
            "data the loss's class rows were made for: train on the same labels (a "
            "class of its own needs a new run)")
    return rows
