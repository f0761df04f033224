"""The ``tune:`` section of a config: a search space and how ``dmlkit tune`` searches it.

::

    tune:
      folds: 3                  # class-disjoint folds of the TRAINING classes
      seed: 0                   # assigns classes to folds; seeds the search
      space:                    # dotted config paths; applied in this order
        loss:                   # a whole component: one of these
          choices: [{name: triplet_margin, margin: 0.1}, multi_similarity]
        loss.margin: {low: 0.05, high: 0.4, when: {loss.name: triplet_margin}}
        optimizer.lr: {low: 1.0e-4, high: 1.0e-2, log: true}
        model.dim: {choices: [32, 64, 128]}
        miner: {choices: [null, batch_hard]}
        sampler.m: {choices: [4, 8]}
        training.epochs: {low: 2, high: 6}

A parameter is ``{choices: [...]}`` (categorical: numbers, strings, null, or whole
component mappings; a string that is a number, as YAML leaves ``1e-3``, is that number,
in ``when`` too; ``true``/``false`` not among numbers) or ``{low, high}`` with optional
``log`` or ``step`` (a step divides ``high - low``, so that ``high`` is sampled; integers when
``low``, ``high`` and ``step`` all are, except for a setting that takes fractional
numbers, e.g. ``model.dropout: {low: 0, high: 0.5}``: its type says so, and it is
sampled as ``{low: 0.0, high: 0.5}``). ``when: {path: value or [values]}`` samples it only when
the config built so far matches (each of its values must be one the path can then hold).
Setting a component's ``name`` keeps only the keys the new component accepts; a
``loss.name`` (any ``<component>.name``) takes names only, a component with parameters is
a choice of the whole component (``loss: {choices: [..., {name: ..., key: value}]}``).
Paths that choose the data, its classes or the items read of it (``data.seed``, the
``max_per_class`` caps, ...: :data:`FROZEN`) cannot be tuned; ``training.patience`` is
searched only with ``objective: best_epoch`` (with ``final`` each fold trains every epoch).
"""

from __future__ import annotations

import copy
import inspect
import json
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from dmlkit._suggest import did_you_mean

SEARCH_ALGORITHMS = ("tpe", "random")
OBJECTIVES = ("final", "best_epoch")
PRUNERS = ("median", "none")
SECTIONS = ("model", "loss", "miner", "sampler", "optimizer", "schedule", "training", "data")
COMPONENTS = ("model", "loss", "miner", "sampler")
#: paths never searched: they choose which items are read (the source, its split and
#: classes, the seeded caps and subsets, the tuples or crops made of it, their labels) or
#: which of them validate, and every trial must be scored on the same items
FROZEN = {
    "data": {"name", "path", "part", "heldout_part", "split", "test_fraction", "train_classes",
             "test_classes", "kind", "tuples", "features", "x_key", "labels_key", "seed",
             "max_per_class", "max_heldout_per_class", "num_tuples", "min_score",
             "crop_seconds", "trim_silence"},
    "training": {"val_classes", "val_fraction", "seed", "device", "progress"},
}  # fmt: skip
_SPEC_KEYS = {"choices", "low", "high", "log", "step", "when"}


@dataclass
class TuneConfig:
    """How ``dmlkit tune`` searches (see the module docstring for ``space``).

    Attributes
    ----------
    folds : int
        Class-disjoint folds of the training classes; the objective is their mean MAP@R.
    seed : int
        Seed of the fold assignment and of the first worker's search.
    objective : {"final", "best_epoch"}
        Score each fold's model after its last epoch (what ``dmlkit train`` of the best
        config trains), or at its best epoch (what ``training.val_classes`` keeps).
    algorithm : {"tpe", "random"}
        Optuna's sampler: tree-structured Parzen estimator or random search.
    startup_trials : int
        Random trials before TPE models the results, and complete trials before pruning
        starts.
    pruner : {"median", "none"}
        ``median`` stops a trial after an epoch ``e`` when it is strictly below the median
        of the study's complete trials' mean fold MAP@R at epoch ``e``. What is compared
        follows ``objective``: with ``final`` the trial's mean fold MAP@R at epoch ``e``
        itself (a trial that falls below the median is stopped, however well it began);
        with ``best_epoch`` its best one at epochs ``1..e`` (Optuna's MedianPruner: a
        fall after a good epoch does not stop it, the good epoch is its score).
        ``none`` never stops a trial early.
    warmup_epochs : int
        Epochs of every trial that are never pruned (the first pruned can be epoch
        ``warmup_epochs + 1``; the last epoch never is, its trial is complete).
    storage : str, optional
        SQLAlchemy URL of the study (default: a SQLite file in the tuning directory); a
        SQLite file is recorded by its absolute path, in-memory SQLite is refused.
    study_name : str, optional
        Default: the config's ``name``.
    heartbeat_seconds : int
        A running trial's heartbeat period; one silent for four periods belongs to a dead
        worker (on another machine) and is marked failed.
    space : dict
        Dotted config path -> parameter spec.
    """

    folds: int = 3
    seed: int = 0
    objective: str = "final"
    algorithm: str = "tpe"
    startup_trials: int = 5
    pruner: str = "median"
    warmup_epochs: int = 1
    storage: str | None = None
    study_name: str | None = None
    heartbeat_seconds: int = 30
    space: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("folds", "seed", "startup_trials", "warmup_epochs", "heartbeat_seconds"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"tune.{key} must be an int, got {value!r}")
        if self.folds < 2:
            raise ValueError(f"tune.folds must be >= 2, got {self.folds}")
        if self.startup_trials < 0 or self.warmup_epochs < 0 or self.heartbeat_seconds < 1:
            raise ValueError("tune.startup_trials, warmup_epochs must be >= 0, heartbeat >= 1")
        if self.algorithm not in SEARCH_ALGORITHMS:
            raise ValueError(
                f"tune.algorithm must be one of {list(SEARCH_ALGORITHMS)}, got {self.algorithm!r}"
            )
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"tune.objective must be one of {list(OBJECTIVES)}, got {self.objective!r}"
            )
        if self.pruner not in PRUNERS:
            raise ValueError(f"tune.pruner must be one of {list(PRUNERS)}, got {self.pruner!r}")
        if not isinstance(self.space, dict):
            raise TypeError(f"tune.space must be a mapping of paths to specs, got {self.space!r}")
        self.space = {str(path): _check_spec(str(path), spec) for path, spec in self.space.items()}

    @classmethod
    def from_dict(cls, raw: Any) -> TuneConfig:
        if isinstance(raw, TuneConfig):
            return raw
        if not isinstance(raw, dict):
            raise TypeError(f"section 'tune' must be a mapping, got {raw!r}")
        names = list(inspect.signature(cls).parameters)
        unknown = sorted(set(raw) - set(names))
        if unknown:
            raise ValueError(f"unknown key(s) {unknown} in section 'tune'; allowed: {names}"
                             + did_you_mean(unknown, names))
        return cls(**raw)


def _number(path: str, key: str, value: Any) -> int | float:
    parsed = _parsed_number(value)
    if parsed is not None:
        return parsed
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"tune.space[{path!r}].{key} must be a number, got {value!r}")
    return value


def _parsed_number(value: Any) -> float | None:
    """The number a string holds that YAML left a string (YAML 1.1 reads ``1e-4``, without
    a dot, as one), read as ``low`` and ``high`` are; ``None`` for anything else (a name,
    and ``nan`` or ``inf``, which no range or choice means)."""
    if not isinstance(value, str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _choice_value(value: Any) -> Any:
    """A choice (or a ``when`` value) as the config will hold it: a string that is a
    number (:func:`_parsed_number`) becomes that number; anything else is kept."""
    parsed = _parsed_number(value)
    return value if parsed is None else parsed


def _check_spec(path: str, spec: Any) -> dict[str, Any]:
    """Validate one parameter spec; return it with numbers parsed."""
    section, _, key = path.partition(".")
    if section not in SECTIONS:
        raise ValueError(f"tune.space path {path!r} must start with one of {list(SECTIONS)}")
    if not key and section not in COMPONENTS:
        raise ValueError(f"tune.space path {path!r} needs a key, e.g. {section}.<key>")
    if key in FROZEN.get(section, ()):
        raise ValueError(
            f"tune.space path {path!r} cannot be tuned: it chooses the data, its classes, "
            "the items read of them or the validation, which must stay the same in every "
            "trial for scores to be comparable; set it in the config instead"
        )
    if "." in key:
        raise ValueError(f"tune.space path {path!r} is nested too deep (section.key at most)")
    if not isinstance(spec, dict):
        raise TypeError(
            f"tune.space[{path!r}] must be a mapping ({{choices: ...}} or "
            f"{{low: ..., high: ...}}), got {spec!r}"
        )
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} in tune.space[{path!r}]; allowed: {sorted(_SPEC_KEYS)}"
            + did_you_mean(unknown, _SPEC_KEYS)
        )
    spec = dict(spec)
    if "choices" in spec:
        if {"low", "high", "log", "step"} & set(spec):
            raise ValueError(f"tune.space[{path!r}] has both choices and a range")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"tune.space[{path!r}].choices must be a non-empty list")
        choices = spec["choices"] = [_choice_value(c) for c in choices]  # 1e-3: a number
        if key == "name" and any(isinstance(c, (dict, list)) for c in choices):
            hint = (f"; a {section} with its parameters is a choice of the whole "
                    f"component: {section}: {{choices: [name, {{name: ..., key: value}}]}}"
                    if section in COMPONENTS else
                    f"; search its parameters as paths of their own ({section}.<key>)")
            raise ValueError(
                f"tune.space[{path!r}].choices holds {_first_mapping(choices)!r}, but "
                f"{path!r} takes names only (strings){hint}")
        numbers = [c for c in choices if isinstance(c, (int, float))]
        if any(isinstance(c, bool) for c in numbers) and not all(
                isinstance(c, bool) for c in numbers):  # (True == 1: one choice of two)
            raise TypeError(
                f"tune.space[{path!r}].choices mixes true/false with numbers: {choices}; "
                "true and false are not numbers (true would be taken for 1, false for 0): "
                "give numbers only, or true and false only")
        labels = [choice_label(c) for c in choices]
        if len(set(labels)) != len(labels):
            raise ValueError(f"tune.space[{path!r}].choices repeats a value: {choices}")
    elif "low" in spec and "high" in spec:
        low = spec["low"] = _number(path, "low", spec["low"])
        high = spec["high"] = _number(path, "high", spec["high"])
        if not low < high:
            raise ValueError(f"tune.space[{path!r}] needs low < high, got {low} and {high}")
        if "log" in spec and not isinstance(spec["log"], bool):  # ('false' is truthy)
            raise TypeError(f"tune.space[{path!r}].log must be true or false, got "
                            f"{spec['log']!r}")
        if spec.get("log") and low <= 0:
            raise ValueError(f"tune.space[{path!r}] log range needs low > 0, got {low}")
        if "step" in spec:
            spec["step"] = _check_step(path, low, high, _number(path, "step", spec["step"]),
                                       bool(spec.get("log")))
    else:
        raise ValueError(f"tune.space[{path!r}] needs choices, or low and high")
    when = spec.get("when")
    if when is not None and not isinstance(when, dict):
        raise TypeError(f"tune.space[{path!r}].when must map paths to values, got {when!r}")
    if when is not None:  # its values match the choices, numbers read alike
        spec["when"] = {
            cond: [_choice_value(v) for v in wanted] if isinstance(wanted, list)
            else _choice_value(wanted) for cond, wanted in when.items()}
    return spec


def _check_step(path: str, low: float, high: float, step: float, log: bool) -> float:
    """Refuse a ``step`` that is not positive, comes with ``log``, or does not divide
    ``high - low`` (Optuna would then replace ``high`` by the last multiple below it, with
    a warning in every trial: ``high`` never sampled). Numbers are compared as the decimals
    they are written as, as Optuna does (``0.3 - 0.1`` is ``0.2``, twice ``0.1``)."""
    if step <= 0:
        raise ValueError(f"tune.space[{path!r}].step must be > 0, got {step}")
    if log:
        raise ValueError(
            f"tune.space[{path!r}].step cannot be used with log: true (a log range is "
            "sampled without a grid): drop step or log")
    lo, size = Decimal(str(low)), Decimal(str(step))
    width = Decimal(str(high)) - lo
    if width % size:
        below = lo + (width // size) * size
        fits = [b for b in (below, below + size) if b > lo]
        raise ValueError(
            f"tune.space[{path!r}]: (high - low) = {_plain(width)} is not a multiple of step "
            f"{_plain(size)}: use high: {' or '.join(_plain(b) for b in fits)} (or a step "
            "that divides it), so that every sampled value lies on the grid and high is "
            "one of them")
    return step


def _plain(number: Decimal) -> str:
    """A decimal as written in a config: ``0.25``, ``14``, ``0.0001`` (no exponent)."""
    return format(number.normalize(), "f")


def _first_mapping(choices: list[Any]) -> Any:
    return next(c for c in choices if isinstance(c, (dict, list)))


def is_int_range(spec: dict[str, Any]) -> bool:
    """Whether a ``{low, high}`` spec samples integers."""
    return all(
        isinstance(spec.get(k), int) and not isinstance(spec.get(k), bool) for k in ("low", "high")
    ) and isinstance(spec.get("step", 1), int)


def choice_label(choice: Any) -> Any:
    """The value a categorical choice is stored as: itself, or JSON for a mapping/list."""
    if choice is None or isinstance(choice, (bool, int, float, str)):
        return choice
    return json.dumps(choice, sort_keys=True)


def get_path(raw: dict[str, Any], path: str) -> Any:
    """The value at ``section.key`` of a config dict (``None`` where a part is missing)."""
    section, _, key = path.partition(".")
    value = raw.get(section)
    if not key:
        return value
    return value.get(key) if isinstance(value, dict) else None


def condition_holds(raw: dict[str, Any], when: dict[str, Any] | None) -> bool:
    """Whether every ``path: value or [values]`` of ``when`` matches ``raw``."""
    for path, wanted in (when or {}).items():
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if get_path(raw, path) not in allowed:
            return False
    return True


def set_path(raw: dict[str, Any], path: str, value: Any) -> None:
    """Set ``section.key`` (or a whole section) of a config dict in place.

    A component section (``model``, ``loss``, ``miner``, ``sampler``) set to a name string
    becomes ``{name: ...}``; any other top-level key (``name``) takes the value as it is.
    A new ``name`` for a loss or a miner drops the old component's parameters (the same
    name means different things there: a triplet ``margin`` is a distance, ArcFace's an
    angle in degrees, CosFace's a cosine); for a model or a sampler it keeps those the
    new registered class accepts (``dim``, ``batch_size``, ``m`` mean the same across
    them). Set the new component's parameters after its name.
    """
    section, _, key = path.partition(".")
    if not key:
        is_component = section in COMPONENTS and isinstance(value, str)
        raw[section] = {"name": value} if is_component else copy.deepcopy(value)
        return
    current = raw.get(section)
    if current is None:
        if section in COMPONENTS and key != "name":
            raise ValueError(f"{path!r} is set but the config has no {section!r} section")
        current = {}
    current = dict(current)
    if key == "name" and section in COMPONENTS and current.get("name") != value:
        if section in ("loss", "miner"):
            current = {}
        else:
            accepted = _accepted_keys(section, value)
            current = {k: v for k, v in current.items() if k in accepted}
    current[key] = value
    raw[section] = current


def _accepted_keys(section: str, name: str) -> set[str]:
    from dmlkit.registry import LOSSES, MINERS, MODELS, SAMPLERS

    registry = {"model": MODELS, "loss": LOSSES, "miner": MINERS, "sampler": SAMPLERS}[section]
    return set(inspect.signature(registry.get(name).__init__).parameters) - {"self"}


__all__ = [
    "TuneConfig",
    "choice_label",
    "condition_holds",
    "get_path",
    "is_int_range",
    "set_path",
]
