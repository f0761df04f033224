"""Turn a ``tune.space`` and an Optuna trial into a trial's config."""

from __future__ import annotations

import copy
from typing import Any, Protocol

from dmlkit.config.schema import Config
from dmlkit.config.tune import choice_label, condition_holds, get_path, is_int_range, set_path


class Suggester(Protocol):
    """The part of ``optuna.Trial`` a search space needs."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int: ...

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...


def suggest(trial: Suggester, path: str, spec: dict[str, Any]) -> Any:
    """Sample the value of one parameter (named by its ``path``)."""
    if "choices" in spec:
        choices = spec["choices"]
        labels = [choice_label(c) for c in choices]
        label = trial.suggest_categorical(path, labels)
        return copy.deepcopy(choices[labels.index(label)])
    log = bool(spec.get("log", False))
    if is_int_range(spec):
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
        value = suggest(trial, path, spec)
        set_path(raw, path, value)
        chosen[path] = value
    try:
        result = Config.from_dict(raw)
        result.check()
    except (TypeError, KeyError, ValueError) as err:
        raise ValueError(f"the trial's parameters {chosen} make an invalid config: {err}") from err
    return result, chosen


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


def check_space(config: Config) -> None:
    """Find a search space's mistakes before the first trial: configs at the corners of
    the space (and at every choice of every categorical parameter) are built and checked
    (unknown component keys, an int setting given a float range, an unknown name), and
    every ``when`` must name a path that the config sets or the space searches.

    Raises
    ------
    ValueError
        Naming the parameter values that make an invalid config.
    """
    if config.tune is None or not config.tune.space:
        return
    raw = config.to_dict()
    space = config.tune.space
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
            if cond not in space and get_path(raw, cond) is None:
                raise ValueError(
                    f"tune.space[{path!r}].when refers to {cond!r}, which the config does not "
                    f"set and the space does not search: the parameter would never be tried")
    probes = [_ProbeTrial(0), _ProbeTrial(1), _ProbeTrial(2)]
    for path, spec in space.items():
        if "choices" in spec:
            labels = [choice_label(c) for c in spec["choices"]]
            probes += [_ProbeTrial(0, {path: label}) for label in labels[1:-1] or labels]
    for probe in probes:
        try:
            trial_config(config, probe)
        except ValueError as err:
            raise ValueError(f"tune.space: {err}") from None


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


__all__ = ["FixedTrial", "Suggester", "check_space", "suggest", "trial_config"]
