"""Turn a ``tune.space`` and an Optuna trial into a trial's config."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Protocol

from torch import Tensor

from dmlkit.config.schema import Config
from dmlkit.config.tune import (
    COMPONENTS,
    choice_label,
    condition_holds,
    get_path,
    is_int_range,
    set_path,
)


class Suggester(Protocol):
    """The part of ``optuna.Trial`` a search space needs."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int: ...

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...


def suggest(trial: Suggester, path: str, spec: dict[str, Any], *,
            fractional: bool = False) -> Any:
    """Sample the value of one parameter (named by its ``path``); a range of integers
    samples integers unless the setting is ``fractional`` (:func:`takes_fractions`)."""
    if "choices" in spec:
        choices = spec["choices"]
        labels = [choice_label(c) for c in choices]
        label = trial.suggest_categorical(path, labels)
        return copy.deepcopy(choices[labels.index(label)])
    log = bool(spec.get("log", False))
    if is_int_range(spec) and not fractional:
        return trial.suggest_int(path, spec["low"], spec["high"], step=spec.get("step", 1), log=log)
    step = spec.get("step")
    return trial.suggest_float(
        path, float(spec["low"]), float(spec["high"]),
        step=None if step is None else float(step), log=log,
    )  # fmt: skip


def trial_config(config: Config, trial: Suggester) -> tuple[Config, dict[str, Any]]:
    """The config of one trial and the values it chose (path -> value).

    Parameters are sampled in the order of ``config.tune.space``; one whose ``when``
    does not match the config built so far is skipped. The result is checked against
    the registries, so an impossible combination raises ``ValueError`` naming it.
    """
    if config.tune is None or not config.tune.space:
        raise ValueError("the config has no tune.space to search (see dmlkit.config.tune)")
    raw = config.to_dict()
    chosen: dict[str, Any] = {}
    for path, spec in config.tune.space.items():
        if not condition_holds(raw, spec.get("when")):
            continue
        fractional = is_int_range(spec) and takes_fractions(raw, path)
        value = suggest(trial, path, spec, fractional=fractional)
        set_path(raw, path, value)
        chosen[path] = value
    try:
        result = Config.from_dict(raw)
        result.check()
    except (TypeError, KeyError, ValueError) as err:
        raise ValueError(f"the trial's parameters {chosen} make an invalid config: {err}") from err
    return result, chosen


class _Opaque:
    """A value no plain type hint accepts (only ``Any`` or a class checked elsewhere)."""


def takes_fractions(raw: dict[str, Any], path: str) -> bool:
    """Whether the setting at ``path`` of the config ``raw`` takes fractional numbers: the
    type of its section's field or of its component's constructor parameter accepts
    ``0.5`` (``float``, ``float | None``; not ``int``, nor an untyped parameter). Such a
    setting searched as ``{low: 0, high: 1}`` is sampled as floats in ``[0, 1]``, not as
    the integers 0 and 1."""
    import typing

    from dmlkit.config.param_types import matches

    section, _, key = path.partition(".")
    if not key:
        return False
    try:
        if section in COMPONENTS:
            from dmlkit.registry import LOSSES, MINERS, MODELS, SAMPLERS

            spec = raw.get(section)
            name = spec.get("name") if isinstance(spec, dict) else spec
            registry = {"model": MODELS, "loss": LOSSES, "miner": MINERS,
                        "sampler": SAMPLERS}[section]
            hint = typing.get_type_hints(registry.get(name).__init__).get(key)
        else:
            hint = typing.get_type_hints(typing.get_type_hints(Config)[section]).get(key)
    except Exception:  # noqa: BLE001 - an unknown name or unresolvable hints: as written
        return False
    return hint is not None and matches(0.5, hint) and not matches(_Opaque(), hint)


class _ProbeTrial:
    """A :class:`Suggester` at one corner of the space (``end`` 0: every range at its
    ``low`` and every choice at its first; 1: ``high`` and last; 2: a point inside each
    range), but for the ``pinned`` choices."""

    def __init__(self, end: int, pinned: dict[str, Any] | None = None) -> None:
        self.end, self.pinned = end, pinned or {}

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self.pinned.get(name, list(choices)[-1 if self.end == 1 else 0])

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1,
                    log: bool = False) -> int:
        return (low, high, low)[self.end]

    def suggest_float(self, name: str, low: float, high: float, *,
                      step: float | None = None, log: bool = False) -> float:
        # ends, and a point inside that no integer setting would take
        return (low, high, low + 0.37 * (high - low))[self.end]


def check_space(config: Config, fold_labels: Sequence[Tensor] | None = None, *,
                class_names: Sequence[str] | None = None) -> None:
    """Find a search space's mistakes before the first trial: configs at the corners of
    the space (and at every choice of every categorical parameter) are built and checked
    (unknown component keys, an int setting given a float range, an unknown name);
    ``training.patience`` is searched only with ``tune.objective: best_epoch``; every
    ``when`` must name a path that the config sets or the space searches, and each of its
    values one that path can hold when the parameter is sampled (a choice searched before
    it, or the config's fixed value). With ``fold_labels`` (each fold's training labels)
    every combination of the searched sampler settings is built on every fold
    (:func:`~dmlkit.tuning.batches.check_batches`; int ranges of many values at their
    reachable extremes only).

    Raises
    ------
    ValueError
        Naming the parameter values that make an invalid config.
    """
    if config.tune is None or not config.tune.space:
        return
    raw = config.to_dict()
    space = config.tune.space
    if "training.patience" in space and config.tune.objective != "best_epoch":
        raise ValueError(
            f"tune.space searches training.patience, but tune.objective is "
            f"{config.tune.objective!r}: each fold then trains all training.epochs (as dmlkit "
            "train of the best config does: it has no validation classes), so patience would "
            "stop nothing; set tune.objective: best_epoch (each fold scored at its best "
            "epoch, patience stopping it early), or search training.epochs instead")
    paths = list(space)
    for i, path in enumerate(paths):  # a new loss / miner name drops the old parameters
        section, _, key = path.partition(".")
        if section in ("loss", "miner") and key not in ("", "name"):
            renamed = [p for p in paths[i + 1:] if p in (section, f"{section}.name")]
            if renamed:
                raise ValueError(
                    f"tune.space lists {path!r} before {renamed[0]!r}: a new {section} "
                    f"name drops the old {section}'s parameters, so the sampled value would "
                    f"be lost; list {renamed[0]!r} first")
    for path, spec in space.items():
        for cond in (spec.get("when") or {}):
            if not any(_touches(q, cond) for q in space) and get_path(raw, cond) is None:
                raise ValueError(
                    f"tune.space[{path!r}].when refers to {cond!r}, which the config does not "
                    f"set and the space does not search: the parameter would never be tried")
    _check_conditions(raw, space)
    probe_configs(config)
    if fold_labels is not None:
        from dmlkit.tuning.batches import check_batches

        check_batches(config, fold_labels, class_names=class_names)


def probe_configs(config: Config) -> list[tuple[Config, dict[str, Any]]]:
    """``(config, chosen values)`` at the corners of the space (every range at its ends
    and at a point inside; every choice of every categorical parameter), each checked.

    Raises
    ------
    ValueError
        Naming the parameter values that make an invalid config.
    """
    space = config.tune.space if config.tune is not None else {}
    probes = [_ProbeTrial(0), _ProbeTrial(1), _ProbeTrial(2)]
    for path, spec in space.items():
        if "choices" in spec:
            labels = [choice_label(c) for c in spec["choices"]]
            probes += [_ProbeTrial(0, {path: label}) for label in labels[1:-1] or labels]
    configs = []
    for probe in probes:
        try:
            configs.append(trial_config(config, probe))
        except ValueError as err:
            raise ValueError(f"tune.space: {err}") from None
    return configs


def check_parts(config: Config, example: Any, num_classes: int) -> None:
    """Build the model, loss and miner of every corner of the space
    (:func:`probe_configs`), their data-dependent sizes filled in from ``example`` (one
    training item) and ``num_classes`` as each fold fills them, so a value their
    constructors refuse (``model.dropout: 1``, ``model.dim: 0``, ``model.hidden: [0]``)
    is an error before the first trial, not the failure of every trial that draws it.
    Only the parts the space can change are built, each distinct one once, with a
    scoped random state (the study's draws are unchanged).

    Raises
    ------
    ValueError
        Naming the parameter values and the part that refuses them.
    """
    import json

    from dmlkit.training.build import build_loss, build_miner, build_model, resolve_config
    from dmlkit.training.rng import rng_scope

    space = config.tune.space if config.tune is not None else {}
    searched = {path.partition(".")[0] for path in space}
    sections = [s for s in ("model", "loss", "miner")
                if s in searched or (s == "loss" and "model" in searched)]  # (its sizes)
    builders = {"model": build_model, "loss": build_loss, "miner": build_miner}
    built: set[str] = set()
    for probe, chosen in probe_configs(config) if sections else ():
        try:
            with rng_scope(0):
                resolved = resolve_config(probe, example, num_classes)  # (may build one)
                for section in sections:
                    key = json.dumps([section, getattr(resolved, section)], sort_keys=True,
                                     default=str)
                    if key not in built:
                        builders[section](resolved)
                        built.add(key)
        except (ValueError, TypeError) as err:
            raise ValueError(f"tune.space: the trial's parameters {chosen} make an invalid "
                             f"config: {err}") from None


def _check_conditions(raw: dict[str, Any], space: dict[str, Any]) -> None:
    """Refuse a ``when`` value its path can never hold when the parameter is sampled
    (a typo of a choice, or a fixed config value that differs)."""
    items = list(space.items())
    for i, (path, spec) in enumerate(items):
        for cond, wanted in (spec.get("when") or {}).items():
            possible = possible_values(raw, items[:i], cond)
            if possible is None:
                _check_range_condition(path, cond, wanted, raw, items[:i])
                continue
            for value in wanted if isinstance(wanted, list) else [wanted]:
                if value in possible:
                    continue
                searched = any(_touches(q, cond) for q, _ in items[:i])
                where = (f"{cond!r} is one of {possible} when it is sampled" if searched else
                         f"{cond!r} is {possible[0]!r} (fixed in the config, not searched "
                         "before it)")
                what = ("can never hold" if not isinstance(wanted, list) else
                        f"lists {value!r}, which can never be")
                raise ValueError(
                    f"tune.space[{path!r}].when: {{{cond}: {wanted!r}}} {what}: {where}; fix "
                    "the value, or the parameter is never tried")


def _check_range_condition(path: str, cond: str, wanted: Any, raw: dict[str, Any],
                           before: list[tuple[str, dict[str, Any]]]) -> None:
    """Refuse a ``when`` value that a range searched at ``cond`` itself can never give
    (outside ``[low, high]``, or not a number; a whole number for an integer range),
    unless the path may also keep its config value (its range has a ``when`` too)."""
    setters = [(q, spec) for q, spec in before if _touches(q, cond)]
    if not setters or setters[-1][0] != cond or "low" not in setters[-1][1]:
        return
    spec = setters[-1][1]
    low, high = spec["low"], spec["high"]
    integer = is_int_range(spec)
    kept = get_path(raw, cond) if spec.get("when") else _NOTHING
    for value in wanted if isinstance(wanted, list) else [wanted]:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value == kept or (number and low <= value <= high
                             and (not integer or float(value).is_integer())):
            continue
        kind = "whole numbers" if integer else "numbers"
        raise ValueError(
            f"tune.space[{path!r}].when: {{{cond}: {wanted!r}}} can never hold {value!r}: "
            f"{cond!r} is searched over {kind} in [{low}, {high}]; fix the value, or the "
            "parameter is never tried")


_NOTHING = object()


def _touches(setter: str, path: str) -> bool:
    """Whether sampling the space path ``setter`` may change the value at ``path``: the
    path itself, its whole component, a new ``name`` of it, or a key of a whole ``path``."""
    s_section, _, s_key = setter.partition(".")
    p_section, _, p_key = path.partition(".")
    return setter == path or (s_section == p_section and (not s_key or not p_key
                                                          or s_key == "name"))


def possible_values(raw: dict[str, Any], before: list[tuple[str, dict[str, Any]]],
                    path: str) -> list[Any] | None:
    """The values ``path`` can hold once the space entries ``before`` are sampled on the
    config ``raw``; ``None`` where they cannot be listed (a range, or a new component
    name that keeps or drops the key)."""
    section, _, key = path.partition(".")
    values = [get_path(raw, path)]
    for setter, spec in before:
        if not _touches(setter, path):
            continue
        whole = not setter.partition(".")[2]
        if "choices" not in spec or (setter != path and not whole):
            return None
        new = list(spec["choices"])
        if whole and setter != path:  # a whole component: the value its choice holds
            new = [{"name": c} if isinstance(c, str) else c for c in new]
            new = [c.get(key) if isinstance(c, dict) else None for c in new]
        elif whole:
            new = [{"name": c} if isinstance(c, str) else c for c in new]
        values = new if not spec.get("when") else values + new
    unique: list[Any] = []
    for value in values:
        if value not in unique:
            unique.append(value)
    return unique


class FixedTrial:
    """A :class:`Suggester` that returns given values (to rebuild a trial's config)."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def _get(self, name: str) -> Any:
        if name not in self.params:
            raise ValueError(f"no value given for tune parameter {name!r}")
        return self.params[name]

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        value = self._get(name)
        if value not in choices:
            raise ValueError(f"{name}: {value!r} is not one of {choices}")
        return value

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        return int(self._get(name))

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        return float(self._get(name))


__all__ = ["FixedTrial", "Suggester", "check_parts", "check_space", "possible_values",
           "probe_configs", "suggest", "takes_fractions", "trial_config"]
