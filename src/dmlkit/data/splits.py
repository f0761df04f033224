"""Class-disjoint splits (seen vs unseen classes) and seeded stratified sample splits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dmlkit.data.dataset import ArrayDataset, leaf_ids


def class_split(
    data: ArrayDataset,
    train_classes: Sequence[int],
    test_classes: Sequence[int] | None = None,
) -> tuple[ArrayDataset, ArrayDataset]:
    """Split by class: items of ``train_classes`` vs items of ``test_classes``.

    The zero-shot protocol of deep metric learning: the metric is evaluated on classes
    never seen in training. ``test_classes`` defaults to every other class present.

    Raises
    ------
    ValueError
        If the two class sets overlap, a class is absent from ``data``, or a side is empty.
    """
    present = set(data.classes)
    train_set = {int(c) for c in train_classes}
    test_set = present - train_set if test_classes is None else {int(c) for c in test_classes}
    overlap = sorted(train_set & test_set)
    if overlap:
        raise ValueError(f"train_classes and test_classes overlap on {overlap}")
    for name, cls in (("train_classes", train_set), ("test_classes", test_set)):
        missing = sorted(cls - present)
        if missing:
            raise ValueError(f"{name} {missing} are not in the data (classes: {sorted(present)})")
        if not cls:
            raise ValueError(f"{name} is empty")
    return select_classes(data, sorted(train_set)), select_classes(data, sorted(test_set))


def select_classes(data: ArrayDataset, classes: Sequence[int]) -> ArrayDataset:
    """The items whose label is in ``classes`` (labels keep their original ids)."""
    if data.labels.dim() != 1:
        raise ValueError(
            "a split by classes needs (n,) class labels; hierarchical (n, L) labels split "
            "stratified (by leaf)"
        )
    labels = data.labels.numpy()
    keep = np.flatnonzero(np.isin(labels, np.asarray(list(classes), dtype=np.int64)))
    return data.subset(keep)


def stratified_indices(
    labels: Sequence[int] | np.ndarray, test_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of item indices: ``(train_idx, test_idx)``, both sorted.

    Each class contributes ``round(count * test_fraction)`` items to the test side, at
    least one to each side when it has two or more items.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    labels_np = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train_idx: list[np.ndarray] = []
    test_idx: list[np.ndarray] = []
    for c in np.unique(labels_np):
        members = rng.permutation(np.flatnonzero(labels_np == c))
        n_test = int(round(len(members) * test_fraction))
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        test_idx.append(members[:n_test])
        train_idx.append(members[n_test:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(test_idx))


def stratified_split(
    data: ArrayDataset, test_fraction: float = 0.5, seed: int = 0
) -> tuple[ArrayDataset, ArrayDataset]:
    """Seeded stratified split of the samples: every class on both sides, same proportions."""
    train_idx, test_idx = stratified_indices(leaf_ids(data.labels).numpy(), test_fraction, seed)
    return data.subset(train_idx), data.subset(test_idx)


def limit_per_class(data: ArrayDataset, max_per_class: int, seed: int = 0) -> ArrayDataset:
    """At most ``max_per_class`` items of each class, chosen with a seeded generator."""
    if max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
    labels = leaf_ids(data.labels).numpy()  # (n,) one id per class (leaf)
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:max_per_class] for c in np.unique(labels)]
    return data.subset(np.sort(np.concatenate(keep)))


__all__ = [
    "class_split",
    "select_classes",
    "stratified_indices",
    "stratified_split",
    "limit_per_class",
]
