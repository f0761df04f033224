"""Class-disjoint splits (seen vs unseen classes) and seeded stratified sample splits."""

from __future__ import annotations

import numbers
import unicodedata
from collections.abc import Sequence

import numpy as np

from dmlkit.data.dataset import ArrayDataset, leaf_ids


def class_split(
    data: ArrayDataset,
    train_classes: Sequence[int | str],
    test_classes: Sequence[int | str] | None = None,
) -> tuple[ArrayDataset, ArrayDataset]:
    """Split by class: items of ``train_classes`` vs items of ``test_classes``.

    The zero-shot protocol of deep metric learning: the metric is evaluated on classes
    never seen in training. ``test_classes`` defaults to every other class present.
    Classes are ids, or names where ``data`` has ``class_names`` (:func:`class_ids`).

    Raises
    ------
    ValueError
        If the two class sets overlap, a class is absent from ``data``, or a side is empty.
    TypeError
        If a class is neither an integer id nor a name.
    """
    present = set(data.classes)
    train_set = set(class_ids(data, train_classes, "train_classes"))
    test_set = (present - train_set if test_classes is None
                else set(class_ids(data, test_classes, "test_classes")))
    overlap = sorted(train_set & test_set)
    if overlap:
        raise ValueError(f"data.train_classes and data.test_classes overlap on "
                         f"{named_ids(overlap, data.class_names)}")
    for name, cls in (("data.train_classes", train_set), ("data.test_classes", test_set)):
        missing = sorted(cls - present)
        if missing:
            raise ValueError(f"{name} {named_ids(missing, data.class_names)} are not in the data"
                             f"{_without_items(data, missing)} (classes: "
                             f"{named_ids(sorted(present), data.class_names)})")
        if not cls:
            raise ValueError(f"{name} is empty")
    return select_classes(data, sorted(train_set)), select_classes(data, sorted(test_set))


def class_ids(data: ArrayDataset, classes: Sequence[int | str], key: str = "classes"
              ) -> list[int]:
    """The class ids ``classes`` names: integer ids as they are, names (strings) looked up
    in ``data.class_names`` (image and audio folders: the sub-folder names).

    Raises
    ------
    ValueError
        A name that is not one of ``data.class_names``, or a name where ``data`` has
        none (the message lists the valid ids and names).
    TypeError
        A class that is neither an integer nor a string (``0.5``, ``True``).
    """
    names = data.class_names
    key = key if "." in key else f"data.{key}"  # (a key of another section: as given)
    check_folder_ids(data, classes, key)
    out: list[int] = []
    for c in classes:
        if isinstance(c, str):
            if names is None:
                raise ValueError(
                    f"{key} names the class {c!r}, but the data has no class names; "
                    f"give class ids: {sorted(data.classes)}")
            out.append(_name_id(names, c, data, key))
        elif isinstance(c, numbers.Integral) and not isinstance(c, bool):
            out.append(int(c))
        else:
            raise TypeError(f"{key} holds {c!r} ({type(c).__name__}), which is neither "
                            f"a class id (an integer) nor a class name")
    return out


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def _name_id(names: Sequence[str], name: str, data: ArrayDataset, key: str) -> int:
    """The id of the class ``name``, compared Unicode-normalised (NFC), so a folder named
    ``café`` in decomposed form (as macOS archives store names) is the config's ``café``."""
    if name in names:
        return list(names).index(name)
    found = [i for i, n in enumerate(names) if _nfc(n) == _nfc(name)]
    if not found:
        raise ValueError(f"{key}: no class named {name!r}; the classes are "
                         f"{named_ids(sorted(data.classes), data.class_names)}")
    if len(found) > 1:
        raise ValueError(
            f"{key}: the class name {name!r} matches classes {found}, whose names differ "
            "only in Unicode normalisation; rename one of them")
    return found[0]


def check_folder_ids(data: ArrayDataset, classes: Sequence[int | str], key: str) -> None:
    """Refuse integer ``classes`` that could mean two different class folders.

    The class ids of image and audio folders (data read from files, ``data.paths``)
    follow the sorted sub-folder names, as torchvision's ``ImageFolder`` numbers them, so
    with folders ``0`` ... ``11`` id 2 is the folder ``10``. An integer ``c`` of
    ``classes`` is ambiguous where a folder is named ``c`` but its id is not ``c`` (the
    id picks another folder, or ``c`` is no id at all): a ``ValueError`` names the folder
    each such id is and shows the list written with folder names (the folder ``c`` for an
    ambiguous ``c``, the folder an unambiguous id denotes), which reads as intended; where
    the folder ``c`` is no class of ``data`` (``training.val_classes`` picks among the
    training classes) but id ``c`` is, the list shows the folder the id picks.
    Integers no folder is named after are ids (folders ``19``, ``26``, ``27``, ``103``:
    id 0 is the folder ``103``). Other data (``.npz`` ``class_names`` are given per
    label) pass.
    """
    names, classes = data.class_names, list(classes)
    if names is None or data.paths is None:
        return

    def ambiguous(c: object) -> bool:
        return (isinstance(c, numbers.Integral) and not isinstance(c, bool)
                and str(c) in names and names.index(str(c)) != c)

    odd: list[str] = []
    for c in dict.fromkeys(int(c) for c in classes if ambiguous(c)):
        odd.append(f"id {c} is the folder {names[c]!r}" if 0 <= c < len(names) else
                   f"{c} is no class id (the folder {str(c)!r} is id {names.index(str(c))})")
    if not odd:
        return

    present = set(data.classes) if data.labels.dim() == 1 else None

    def id_only(c: object) -> bool:  # an ambiguous c whose folder is no class of the data
        return (ambiguous(c) and present is not None and 0 <= int(c) < len(names)
                and int(c) in present and names.index(str(c)) not in present)

    def as_name(c: int | str) -> str:
        if isinstance(c, str) or (ambiguous(c) and not id_only(c)):
            return f'"{c}"'  # the folder named so
        if isinstance(c, numbers.Integral) and 0 <= c < len(names):
            return f'"{names[int(c)]}"'  # the folder the id denotes
        return repr(c)

    shown = ", ".join(odd[:3]) + (f" and {len(odd) - 3} more" if len(odd) > 3 else "")
    absent = [repr(str(c)) for c in dict.fromkeys(int(c) for c in classes if id_only(c))]
    if absent:  # the example writes what the ids pick: the folders named so are no choice
        among = "training" if key.startswith("training.") else "data's"
        shown += (f" (the folder{'s' if len(absent) > 1 else ''} {', '.join(absent)} "
                  f"{'are' if len(absent) > 1 else 'is'} not among the {among} classes)")
    strings = ", ".join(as_name(c) for c in classes[:8]) + (", ..." if len(classes) > 8 else "")
    raise ValueError(
        f"{key} {classes}: class ids follow the sorted folder names "
        f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}), so {shown}; to mean "
        f"folders by name, write the names as strings, e.g. {key.rpartition('.')[2]}: "
        f"[{strings}]")


def _without_items(data: ArrayDataset, missing: Sequence[int]) -> str:
    """For a message on ``missing`` classes: which of them are named classes of ``data``
    that hold no items (an empty class folder), else ``""``."""
    names = data.class_names
    empty = [names[i] for i in missing if names is not None and 0 <= i < len(names)]
    if not empty:
        return ""
    paths = data.paths
    what, items = (("class", "items") if paths is None else
                   ("folder", "WAV files" if paths and paths[0].lower().endswith(".wav")
                    else "images"))
    return (f": the {what}{'s' if len(empty) > 1 else ''} "
            f"{', '.join(repr(n) for n in empty)} hold{'s' if len(empty) == 1 else ''} "
            f"no {items}")


def named_ids(ids: Sequence[int], names: Sequence[str] | None) -> str:
    """Class ids for a message: ``[2 (pullover), 6 (trouser)]`` where the data has class
    names (image and audio folders, ``.npz`` files with ``class_names``), else ``[2, 6]``
    (and ``3``, not ``3 (3)``, where a name is its id)."""
    ids = [int(i) for i in ids]
    if names is None or all(0 <= i < len(names) and names[i] == str(i) for i in ids):
        return str(ids)
    return "[" + ", ".join(
        f"{i} ({names[i]})" if 0 <= i < len(names) and names[i] != str(i) else str(i)
        for i in ids
    ) + "]"


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
    "check_folder_ids",
    "class_ids",
    "class_split",
    "named_ids",
    "select_classes",
    "stratified_indices",
    "stratified_split",
    "limit_per_class",
]
