"""What each plain field of a config section may hold: its type, its range and what
``null`` means where it is allowed.

Every section dataclass (:mod:`dmlkit.config.schema`) checks its fields against
:data:`RULES` first thing in ``__post_init__``, so a bad value (``training.patience:
abc``, ``optimizer.loss_lr: -1``) is an error naming the key, the value and what is
expected, when the config is read, not a ``TypeError`` epochs into training. Fields
with richer values (class lists, image sizes, choices among names) have their own
checks in the schema; :data:`CUSTOM` lists them, so that every field is one or the other.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FieldRule:
    """A field holds a ``kind`` (bool, int, float or str) in ``[low, high]`` (``*_open``:
    bound excluded), or ``None`` where ``null`` says what that means. Numbers are finite."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    null: str | None = None
    meaning: str = ""

    def expected(self) -> str:
        """What the field takes, in words: ``an integer >= 1 (...), or null for ...``."""
        words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
        text = words[self.kind]
        if self.low is not None and self.high is not None:
            text += (f" in {'(' if self.low_open else '['}{_num(self.low)}, "
                     f"{_num(self.high)}{')' if self.high_open else ']'}")
        elif self.low is not None:
            text += f" {'>' if self.low_open else '>='} {_num(self.low)}"
        elif self.high is not None:
            text += f" {'<' if self.high_open else '<='} {_num(self.high)}"
        if self.meaning:
            text += f" ({self.meaning})"
        if self.null is not None:
            text += f", or null for {self.null}"
        return text

    def check(self, section: str, key: str, value: Any) -> Any:
        """``value`` as the field keeps it (numpy scalars become Python ones).

        Raises
        ------
        ValueError
            Naming ``section.key``, the value and what is expected.
        """
        if value is None and self.null is not None:
            return None
        kept = self._typed(value)
        if kept is None or not self._in_range(kept):
            raise ValueError(f"{section}.{key} must be {self.expected()}; got {value!r} "
                             f"({type(value).__name__})")
        return kept

    def _typed(self, value: Any) -> Any:
        if self.kind is bool:
            return value if isinstance(value, bool) else None
        if self.kind is str:
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
            return value if isinstance(value, str) else None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return None
        if self.kind is int:
            return int(value) if isinstance(value, numbers.Integral) else None
        if not math.isfinite(value):
            return None
        return value if isinstance(value, (int, float)) else float(value)

    def _in_range(self, value: Any) -> bool:
        if self.kind not in (int, float):
            return True
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


def _num(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


_INT1 = FieldRule(int, low=1)
#: the largest seed: torch's generators take any 64-bit seed, numpy's and Python's too
MAX_SEED = 2**63 - 1
_SEED = FieldRule(int, low=0, high=MAX_SEED)
_BOOL = FieldRule(bool)
_STR = FieldRule(str)

RULES: dict[str, dict[str, FieldRule]] = {
    "data": {
        "path": FieldRule(str, null="the dataset's default location"),
        "x_key": _STR,
        "labels_key": _STR,
        "test_fraction": FieldRule(float),  # (0, 1) with split: stratified, in the schema
        "max_per_class": FieldRule(int, low=1, meaning="items per class", null="no cap"),
        "max_heldout_per_class": FieldRule(int, low=1, meaning="items per class",
                                           null="no cap"),
        "seed": _SEED,
        "augment_shift": FieldRule(int, low=0, meaning="pixels"),
        "augment_hflip": _BOOL,
        "tuples": FieldRule(str, meaning="a CSV file of tuples", null="tuples drawn from "
                            "the labelled data"),
        "features": FieldRule(str, meaning="a .npy / .npz array", null="image paths"),
        "num_tuples": _INT1,
        "min_score": FieldRule(float, meaning="the lowest score of a positive pair",
                               null="the default (4.0 for STS-B, else 1.0)"),
        "sample_rate": FieldRule(int, low=1, meaning="Hz"),
        "crop_seconds": FieldRule(float, low=0, low_open=True),
        "trim_silence": _BOOL,
    },
    "optimizer": {
        "lr": FieldRule(float, low=0, low_open=True),
        "weight_decay": FieldRule(float, low=0),
        "momentum": FieldRule(float, low=0, high=1),
        "loss_lr": FieldRule(float, low=0, low_open=True,
                             meaning="the learning rate of loss parameters",
                             null="optimizer.lr"),
    },
    "schedule": {
        "warmup_epochs": FieldRule(float, low=0),
        "step_size": FieldRule(int, low=1, meaning="epochs"),
        "gamma": FieldRule(float, low=0, low_open=True),
        "min_lr_ratio": FieldRule(float, low=0, high=1),
    },
    "training": {
        "epochs": _INT1,
        "batch_size": _INT1,
        "seed": _SEED,
        "device": _STR,
        "amp": _BOOL,
        "val_fraction": FieldRule(float, low=0, high=1, high_open=True),
        "patience": FieldRule(int, low=1, meaning="epochs without a better validation score "
                              "before stopping", null="no early stopping"),
        "grad_clip": FieldRule(float, low=0, low_open=True, meaning="the largest gradient "
                               "norm", null="no clipping"),
        "progress": _BOOL,
        "num_threads": FieldRule(int, low=1, null="torch's default"),
        "grad_cache_chunk": FieldRule(int, low=1, meaning="items embedded at a time",
                                      null="whole batches"),
        "anchor_weight": FieldRule(float, low=0),
        "uniformity_weight": FieldRule(float, low=0),
    },
}
"""Section -> field -> rule."""

CUSTOM: dict[str, set[str]] = {
    "data": {"name", "part", "heldout_part", "image_size", "color", "split", "train_classes",
             "test_classes", "augment", "kind"},
    "optimizer": {"name"},
    "schedule": {"name"},
    "training": {"val_classes"},
}
"""Section -> the fields the schema checks by hand (choices, lists, mappings)."""


def check_fields(section: str, obj: Any) -> None:
    """Check (and normalize in place) every field of ``obj`` that has a rule."""
    rules = RULES[section]
    for f in dataclasses.fields(obj):
        rule = rules.get(f.name)
        if rule is not None:
            value = getattr(obj, f.name)
            if f.name == "device" and type(value).__name__ == "device":  # a torch.device
                value = str(value)
            setattr(obj, f.name, rule.check(section, f.name, value))


def check_val_classes(value: Any) -> None:
    """``training.val_classes``: None, a fraction in (0, 1), or a list of >= 2 class ids
    (or names). A list with a name is counted once the names are looked up in the data
    (an unknown or ambiguous name is the error then, not the count)."""
    if value is None:
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not 0.0 < value < 1.0:
            raise ValueError(
                f"training.val_classes as a fraction must be in (0, 1), got {value!r} "
                "(give a list to name class ids)"
            )
        return
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(c, str) or (isinstance(c, int) and not isinstance(c, bool)) for c in value
    ):
        raise TypeError(
            f"training.val_classes must be a fraction or a list of class ids (or class "
            f"names where the data has them), got {value!r}"
        )
    if len(set(value)) < 2 and not any(isinstance(c, str) for c in value):
        raise ValueError(
            f"training.val_classes {list(value)} leaves fewer than 2 classes for validation"
        )


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (a Python or numpy int; not a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def class_list(key: str, value: Any) -> list[int | str] | None:
    """``data.train_classes`` / ``test_classes``: None, or a non-empty list of class ids
    (integers >= 0) and class names (strings); numpy ints become ints."""
    example = "e.g. [0, 1, 2], or class names where the data has them: [cat, dog]"
    if value is None:
        return None
    if isinstance(value, range) or (hasattr(value, "tolist") and getattr(value, "ndim", 0) == 1):
        value = list(value.tolist() if hasattr(value, "tolist") else value)  # range, 1-D array
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"data.{key} must be a list of class ids or names ({example}); got "
                         f"{value!r} ({type(value).__name__})")
    if not value:
        raise ValueError(f"data.{key} is an empty list; name at least one class ({example})")
    bad = [c for c in value if not (isinstance(c, str) or (is_int(c) and c >= 0))]
    if bad:
        raise ValueError(f"data.{key} holds {bad[0]!r} ({type(bad[0]).__name__}), which is "
                         f"neither a class id (an integer >= 0) nor a class name; got {value!r}")
    return [c if isinstance(c, str) else int(c) for c in value]


def check_class_split(data: Any) -> None:
    """Refuse ``data.train_classes`` / ``test_classes`` (``data``: the data section) unless
    ``data.split`` is ``classes``: no other split reads them, so a run would train and
    evaluate on every class while its config names a class split."""
    given = [f"data.{key} {getattr(data, key)!r}" for key in ("train_classes", "test_classes")
             if getattr(data, key) is not None]
    if given and data.split != "classes":
        raise ValueError(f"{' and '.join(given)} need data.split: classes (the split is "
                         f"{data.split!r}, which holds out a test_fraction of every class and "
                         "ignores class lists); set data.split: classes, or remove "
                         f"{'it' if len(given) == 1 else 'them'}")


def coerce_scalar(section: str, key: str, value: Any, default: Any) -> Any:
    """Make YAML scalars match the field's default type (``1e-3`` parses as a string);
    fields that default to null go by their rule (:data:`RULES`), which then checks the
    value."""
    if value is None:
        return value
    if default is None:
        rule = RULES.get(section, {}).get(key)
        kind = rule.kind if rule is not None else None
        if kind is float and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value  # not a number: the field's rule names it
        if kind is int and isinstance(value, float) and value.is_integer():
            return int(value)
        return value
    try:
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError
            return value
        if isinstance(value, bool):  # (a YAML yes/true is no number: never 1)
            raise ValueError
        if isinstance(default, float):
            return float(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
    except (TypeError, ValueError):
        kind = type(default).__name__  # int, float, bool, str
        raise ValueError(f"{section}.{key} must be {'an' if kind[0] in 'aeiou' else 'a'} "
                         f"{kind}, got {value!r}") from None
    return value


#: sampler parameters the trainer supplies from the run itself, never from a config
SAMPLER_SUPPLIED = {"labels": "the training data's labels", "dataset": "the training data",
                    "model": "the model being trained"}


def check_sampler_supplied(spec: dict[str, Any] | None) -> None:
    """Refuse ``sampler.labels`` / ``dataset`` / ``model`` in a config: the trainer supplies
    them, and a config's own would replace the run's (made-up labels, a number as model)."""
    for key, what in SAMPLER_SUPPLIED.items():
        if spec is not None and key in spec:
            raise ValueError(f"sampler.{key} is supplied by the trainer ({what}); remove it "
                             "from the sampler section")


def check_parts_for_data(
    kind: str, sampler: tuple[str, type] | None, miner: tuple[str, type] | None
) -> None:
    """The configured sampler and miner (``(name, class)``, or None) against ``data.kind``.

    Tuple data (``pairs`` / ``triplets``) has no class labels: a sampler that batches or
    mines by label (a ``labels`` parameter, or ``needs_labels``) cannot draw from it, and
    no miner runs (each batch gives the loss its own tuples). Labelled data is mined by
    label: a miner that takes no labels (``takes_labels = False``: rows already packed as
    tuples) would ignore them.
    """
    if kind in ("pairs", "triplets"):
        if sampler is not None and ("labels" in inspect.signature(sampler[1].__init__).parameters
                                    or getattr(sampler[1], "needs_labels", False)):
            raise ValueError(f"sampler {sampler[0]!r} needs labels; data.kind {kind} has "
                             f"none: remove the sampler section ({kind} are batched at random)")
        if miner is not None:
            raise ValueError(f"data.kind {kind} gives the loss each batch's own {kind} (no "
                             f"class labels to mine by), so no miner runs; remove the miner "
                             f"section (miner {miner[0]!r})")
    elif miner is not None and not getattr(miner[1], "takes_labels", True):
        raise ValueError(label_free_miner(miner[0]))


#: the data keys of image augmentation, which no tuple run (data.kind pairs / triplets) applies
AUGMENT_KEYS = ("augment_shift", "augment_hflip", "augment")
#: the data keys a tuple file (``data.tuples``) run reads; the rest are for labelled data
TUPLE_FILE_KEYS = {"kind", "tuples", "features", "x_key", "image_size", "color",
                   "test_fraction", "seed"}


def check_tuple_file_keys(data: Any) -> None:
    """Refuse data keys that tuple data would ignore (``data``: the data section).

    With ``data.tuples`` the tuples come from that file and their items from
    ``data.features`` (or the image files it names): a labelled source's keys
    (``name``, ``path``, class lists, caps), ``num_tuples`` (the number of tuples drawn
    without a file), text and audio settings and augmentation (no tuple run augments)
    have no effect, nor ``image_size`` / ``color`` with features, nor ``x_key`` without.
    ``data.features`` without ``data.tuples`` is ignored too (tuples are then drawn from
    the labelled source), and augmentation keys are refused for drawn tuples as for a
    file (:data:`AUGMENT_KEYS`: no tuple run augments). Keys left at their defaults are
    not named."""
    if data.kind not in ("pairs", "triplets"):
        return
    if data.tuples is None:
        if data.features is not None:
            raise ValueError(f"data.features ({data.features}) gives the items of a tuple "
                             "file, but data.tuples is not set, so the tuples are drawn from "
                             f"the labelled source data.name {data.name!r}; set data.tuples "
                             "to the CSV of tuples, or remove data.features")
        augmenting = [f"data.{key}" for key in AUGMENT_KEYS
                      if getattr(data, key) != getattr(type(data)(), key)]
        if augmenting:
            raise ValueError(f"{', '.join(augmenting)} would be ignored: data.kind "
                             f"{data.kind} draws its {data.kind} from the labelled source "
                             "without augmenting them (no tuple run augments); remove "
                             f"{'it' if len(augmenting) == 1 else 'them'} from the data "
                             "section, or train with labels (data.kind: labels) to augment")
        return
    used = TUPLE_FILE_KEYS - ({"image_size", "color"} if data.features is not None
                              else {"x_key"})
    defaults = type(data)()
    ignored = [f.name for f in dataclasses.fields(data) if f.name not in used
               and getattr(data, f.name) != getattr(defaults, f.name)]
    if ignored:
        keys = ", ".join(f"data.{key}" for key in ignored)
        items = "data.features" if data.features is not None else "the image files it names"
        raise ValueError(f"data.tuples ({data.tuples}) gives the {data.kind} and {items} "
                         f"their items, so {keys} would be ignored; remove "
                         f"{'it' if len(ignored) == 1 else 'them'} from the data section")


def check_miner_for_loss(loss: Any, miner: dict[str, Any] | None) -> None:
    """Refuse a top-level miner with a ``cross_batch_memory`` loss (``loss``: its config,
    the memory also nested in another loss): the trainer gives the loss the miner's
    in-batch tuples as ``indices``, which replace the tuples the memory forms, so the
    memory would go unused; its own ``loss.miner`` mines the batch against the memory."""
    if miner is None:
        return
    memory = _memory_loss(loss)
    if memory is not None:
        top = loss.get("name") if isinstance(loss, dict) else loss
        raise ValueError(memory_with_miner(miner.get("name"), memory, top))


def _memory_loss(spec: Any) -> str | None:
    """The name of the first cross-batch-memory loss in the loss config ``spec`` (the
    losses it nests included), or None."""
    from dmlkit.losses.cross_batch_memory import CrossBatchMemory
    from dmlkit.registry import LOSSES

    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        return None
    try:
        cls = LOSSES.get(spec["name"])
    except ValueError:  # an unknown loss: building it says so
        return None
    if isinstance(cls, type) and issubclass(cls, CrossBatchMemory):
        return spec["name"]
    for key in ("loss", "losses"):
        nested = spec.get(key)
        if isinstance(nested, dict) and "name" not in nested:  # {loss name: config}
            nested = list(nested.values())
        for inner in nested if isinstance(nested, list) else [nested]:
            found = _memory_loss(inner)
            if found is not None:
                return found
    return None


def memory_with_miner(miner: Any, memory: Any, loss: Any) -> str:
    """Why a top-level ``miner`` cannot go with the cross-batch memory loss ``memory``
    (within ``loss``): the message config checks and the trainer's preflight give."""
    where, key = ((f"loss {loss!r}", "loss.miner") if memory == loss else
                  (f"the {memory!r} loss in loss {loss!r}", f"the {memory} entry's miner"))
    return (f"miner {miner!r} with {where}: a top-level miner's tuples come from the batch "
            "alone and replace the tuples the memory forms, so the memory would go unused; "
            f"give the miner to the memory loss instead ({key}: {{name: {miner}}} in the "
            "config, CrossBatchMemory(..., miner=...) in Python), which mines the batch "
            "against the memory, and remove the top-level miner (miner: null)")


def label_free_miner(name: str) -> str:
    """Why a miner that takes no labels (``takes_labels = False``) cannot train: the
    message config checks and the trainer's preflight give."""
    return (f"miner {name!r} takes no labels: it reads batches already packed as tuples "
            "(for loss(embeddings, indices=miner(embeddings)) in Python), which training "
            "never makes (labelled batches are mined by label; data.kind pairs / triplets "
            "batches bring their own tuples and need no miner); use a miner that mines by "
            "label (batch_hard, multi_similarity, ...) or none")


__all__ = ["AUGMENT_KEYS", "CUSTOM", "MAX_SEED", "label_free_miner", "FieldRule", "RULES",
           "SAMPLER_SUPPLIED",
           "check_class_split", "check_fields", "coerce_scalar",
           "check_miner_for_loss", "check_parts_for_data", "check_sampler_supplied",
           "check_tuple_file_keys", "check_val_classes", "class_list", "is_int",
           "memory_with_miner", "TUPLE_FILE_KEYS"]
