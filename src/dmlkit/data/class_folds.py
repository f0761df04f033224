"""Class-disjoint validation: hold out whole training classes, and K class-disjoint folds.

Metric learning is judged on classes it never saw, so model selection is too: the
validation side of every split here holds classes that are absent from its training
side. Both sides keep at least two classes (retrieval over a single class is trivially
perfect and says nothing).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dmlkit.data.dataset import ArrayDataset
from dmlkit.data.splits import named_ids, select_classes

MIN_CLASSES = 2
#: the fewest classes class folds can be made of: 2 folds of 2 validation classes, each
#: fold training on the other fold's 2
MIN_FOLD_CLASSES = 2 * MIN_CLASSES

HIERARCHICAL_FOLDS = (
    "class folds (dmlkit crossval, dmlkit tune) need (n,) class ids; with hierarchical "
    "(n, L) labels use dmlkit train with training.val_fraction (a validation part of "
    "every leaf class) and compare runs by their val_map_at_r"
)


def choose_val_classes(
    classes: Sequence[int], val_classes: float | Sequence[int], seed: int = 0,
    *, class_names: Sequence[str] | None = None,
) -> list[int]:
    """The validation classes that ``val_classes`` names among ``classes``.

    Parameters
    ----------
    classes : sequence of int
        The classes of the training data.
    val_classes : float or sequence of int
        A fraction in (0, 1): ``round(fraction * len(classes))`` classes drawn with a
        seeded generator; or the class ids themselves.
    seed : int
        Seed of the draw (fractions only).
    class_names : sequence of str, optional
        The data's class names (``class_names[id]``), shown beside the ids in errors.

    Returns
    -------
    list of int
        Sorted validation class ids.

    Raises
    ------
    ValueError
        A fraction outside (0, 1), ids not in ``classes`` or repeated, or a choice that
        leaves fewer than two classes for training or for validation.
    TypeError
        ``val_classes`` neither a number nor a sequence of integers.
    """
    present = sorted({int(c) for c in classes})
    if isinstance(val_classes, bool):
        raise TypeError(
            f"val_classes must be a fraction or a list of class ids, got {val_classes!r}"
        )
    if isinstance(val_classes, (float, int, np.floating, np.integer)):
        fraction = float(val_classes)
        if not 0.0 < fraction < 1.0:
            raise ValueError(
                f"val_classes as a fraction must be in (0, 1), got {val_classes!r} "
                "(give a list to name class ids)"
            )
        count = int(round(fraction * len(present)))
        rng = np.random.default_rng(seed)
        chosen = sorted(int(c) for c in rng.permutation(present)[:count])
        what = f"val_classes {val_classes} of {len(present)} classes"
    else:
        if isinstance(val_classes, str) or not all(
            isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in val_classes
        ):
            raise TypeError(
                f"val_classes must be a fraction or a list of class ids, got {val_classes!r}"
            )
        chosen = sorted(int(c) for c in val_classes)
        repeated = sorted({c for c in chosen if chosen.count(c) > 1})
        if repeated:
            times = ", ".join(f"{named_ids([c], class_names)[1:-1]} is listed "
                              f"{chosen.count(c)} times" for c in repeated)
            raise ValueError(f"val_classes {named_ids(list(val_classes), class_names)} "
                             f"repeats a class: {times}; list each class once")
        missing = sorted(set(chosen) - set(present))
        if missing:
            raise ValueError(f"val_classes {named_ids(missing, class_names)} are not among "
                             f"the training classes {named_ids(present, class_names)}")
        what = f"val_classes {named_ids(chosen, class_names)}"
    _check_sides(what, len(present) - len(chosen), len(chosen), present, class_names)
    return chosen


def _check_sides(what: str, n_train: int, n_val: int, present: list[int],
                 class_names: Sequence[str] | None = None) -> None:
    if n_val < MIN_CLASSES or n_train < MIN_CLASSES:
        raise ValueError(
            f"{what} leaves {n_train} class(es) for training and {n_val} for validation "
            f"(training classes: {named_ids(present, class_names)}); each side needs at "
            f"least {MIN_CLASSES}"
        )


def holdout_classes(
    data: ArrayDataset, val_classes: float | Sequence[int | str], seed: int = 0
) -> tuple[ArrayDataset, ArrayDataset]:
    """Split ``data`` into ``(train, val)`` with whole classes held out for validation.

    See :func:`choose_val_classes` for ``val_classes``; labels keep their ids.
    """
    if data.labels.dim() != 1:
        raise ValueError(
            "training.val_classes holds out (n,) class ids; with hierarchical (n, L) labels "
            "use training.val_fraction"
        )
    if isinstance(val_classes, (list, tuple)):
        from dmlkit.data.splits import class_ids  # names and ids, as data.train_classes takes

        val_classes = class_ids(data, val_classes, "training.val_classes")
    chosen = choose_val_classes(data.classes, val_classes, seed, class_names=data.class_names)
    rest = sorted(set(int(c) for c in data.classes) - set(chosen))
    return select_classes(data, rest), select_classes(data, chosen)


def class_folds(
    classes: Sequence[int], k: int, seed: int = 0, *, class_names: Sequence[str] | None = None
) -> list[tuple[list[int], list[int]]]:
    """``k`` class-disjoint folds: ``(train_classes, val_classes)`` per fold.

    The classes are shuffled with a seeded generator and dealt into ``k`` groups of
    near-equal size; fold ``i`` validates on group ``i`` and trains on the others, so
    every class is validated on exactly once. ``class_names`` (the data's) are shown
    beside the ids in errors.

    Raises
    ------
    ValueError
        ``k < 2``, fewer than :data:`MIN_FOLD_CLASSES` (4) classes, or so many folds
        that a fold would validate on fewer than two classes or train on fewer than two
        (``k`` at most ``len(classes) // 2``), or classes that
        are hierarchical label rows (``ArrayDataset.classes`` of ``(n, L)`` labels).
    """
    if any(isinstance(c, (tuple, list, np.ndarray)) for c in classes):
        raise ValueError(HIERARCHICAL_FOLDS)
    present = sorted({int(c) for c in classes})
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"the number of folds must be an int, got {k!r}")
    if k < 2:
        raise ValueError(f"class folds need k >= 2, got {k}")
    if len(present) < MIN_FOLD_CLASSES:
        raise ValueError(
            f"class folds need at least {MIN_FOLD_CLASSES} training classes (every fold "
            f"validates on at least {MIN_CLASSES} and trains on at least {MIN_CLASSES} "
            f"others), but the training data has {len(present)} "
            f"{named_ids(present, class_names)}; give more training classes "
            "(data.train_classes), or (validating on seen classes) dmlkit train with "
            "training.val_fraction"
        )
    if k > len(present) // MIN_CLASSES:
        raise ValueError(
            f"{k} class folds of {len(present)} classes {named_ids(present, class_names)} "
            f"would validate on fewer "
            f"than {MIN_CLASSES} classes; use at most {len(present) // MIN_CLASSES} folds"
        )
    order = np.random.default_rng(seed).permutation(present)
    groups = np.array_split(order, k)
    folds = []
    for group in groups:
        val = sorted(int(c) for c in group)
        train = sorted(set(present) - set(val))
        _check_sides(f"fold validating on {named_ids(val, class_names)}", len(train), len(val),
                     present, class_names)
        folds.append((train, val))
    return folds


__all__ = ["choose_val_classes", "holdout_classes", "class_folds", "MIN_CLASSES",
           "MIN_FOLD_CLASSES"]
