"""Batch compositions a search space can sample, checked against the folds before any trial.

A sampler setting the folds cannot use (``m_per_class`` with ``batch_size`` not a
multiple of ``m``, or ``batch_size // m`` classes per batch where a fold trains on fewer
classes) would otherwise fail trial after trial. :func:`check_batches` builds the
configured sampler, as a trial's training builds it, on each fold's training labels for
every combination of the searched sampler settings.
"""

from __future__ import annotations

import copy
import inspect
import json
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from torch import Tensor

from dmlkit.config.schema import Config
from dmlkit.config.tune import condition_holds, is_int_range, set_path
from dmlkit.data.splits import named_ids

#: an int range of at most this many reachable values is checked value by value
MAX_RANGE_VALUES = 64
#: at most this many distinct sampler settings are built (then the check stops)
MAX_SETTINGS = 1024


def range_values(spec: dict[str, Any]) -> list[Any]:
    """The values of one parameter spec that :func:`check_batches` tries: every choice;
    every reachable value of an int range (``low``, ``low + step``, ... up to ``high``)
    of at most :data:`MAX_RANGE_VALUES` values, else its two lowest and two highest
    reachable values; a float range's ``low`` and ``high``."""
    if "choices" in spec:
        return list(spec["choices"])
    low, high = spec["low"], spec["high"]
    if not is_int_range(spec):
        return [low, high]
    step = 1 if spec.get("log") else int(spec.get("step", 1))
    top = low + (high - low) // step * step
    count = (top - low) // step + 1
    if count <= MAX_RANGE_VALUES:
        return list(range(low, top + 1, step))
    return sorted({low, low + step, top - step, top})


def sampler_settings(config: Config) -> Iterator[tuple[dict[str, Any] | None, dict[str, Any]]]:
    """``(sampler section, the searched values that made it)`` for every combination of
    the space's ``sampler`` paths (:func:`range_values` of each), in the space's order.

    A path whose ``when`` reads only ``sampler`` keys is sampled as that condition says;
    one whose ``when`` reads other paths is tried both sampled and not. Without searched
    sampler paths, the config's own sampler. Distinct settings only, at most
    :data:`MAX_SETTINGS`.
    """
    space = config.tune.space if config.tune is not None else {}
    items = [(p, s) for p, s in space.items() if p.partition(".")[0] == "sampler"]
    seen: set[str] = set()
    start = {"sampler": copy.deepcopy(config.sampler)}
    for raw, chosen in _combinations(start, {}, items):
        key = json.dumps(raw["sampler"], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        yield raw["sampler"], chosen
        if len(seen) >= MAX_SETTINGS:
            return


def _combinations(raw: dict[str, Any], chosen: dict[str, Any],
                  items: list[tuple[str, dict[str, Any]]]
                  ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    if not items:
        yield raw, chosen
        return
    (path, spec), rest = items[0], items[1:]
    when = spec.get("when") or {}
    if all(p.partition(".")[0] == "sampler" for p in when):
        apply, skip = condition_holds(raw, when), not condition_holds(raw, when)
    else:  # decided by paths outside the sampler: either may happen
        apply, skip = True, True
    if skip:
        yield from _combinations(raw, chosen, rest)
    if not apply:
        return
    for value in range_values(spec):
        nxt = copy.deepcopy(raw)
        try:
            set_path(nxt, path, copy.deepcopy(value))
        except ValueError:  # e.g. an unknown sampler name: check_space names it
            continue
        yield from _combinations(nxt, {**chosen, path: value}, rest)


def check_batches(config: Config, fold_labels: Sequence[Tensor], *,
                  class_names: Sequence[str] | None = None) -> None:
    """Refuse sampler settings a fold cannot train with, before any trial.

    Every setting of :func:`sampler_settings` is built, as training builds it, on the
    training labels of each fold (``fold_labels``, one ``(n,)`` tensor per fold; the
    data's ``class_names`` are shown beside the ids in the error): the
    sampler's own rules decide (``m_per_class``: ``batch_size`` a multiple of ``m``, and
    no more classes per batch than the fold trains on). Int ranges of more than
    :data:`MAX_RANGE_VALUES` values are checked at their reachable extremes only, so a
    value between them can still fail its trial; samplers that mine with the model
    (``offline_hard_negative``) and loss-dependent rules (a one-class batch for a pair
    loss) are left to the trial.

    Raises
    ------
    ValueError
        Naming the searched values, the sampler they make, and the fold's classes.
    """
    from dmlkit.registry import SAMPLERS
    from dmlkit.training.build import build_sampler

    for sampler, chosen in sampler_settings(config):
        if not isinstance(sampler, dict) or "name" not in sampler:
            continue  # no sampler: random batches of training.batch_size
        try:
            params = inspect.signature(SAMPLERS.get(sampler["name"]).__init__).parameters
        except ValueError:
            continue  # an unknown name: check_space names it
        if "dataset" in params or "model" in params:
            continue
        trial = copy.copy(config)
        trial.sampler = sampler
        for labels in fold_labels:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    build_sampler(trial, labels, len(labels))
            except (ValueError, TypeError) as err:
                values = ", ".join(f"{k}={v!r}" for k, v in chosen.items())
                which = f"the searched values {values} make " if chosen else "the config has "
                classes = sorted(int(c) for c in labels.unique())
                raise ValueError(
                    f"tune.space: {which}sampler {sampler}, which a fold training on "
                    f"{len(classes)} classes {named_ids(classes, class_names)} cannot batch: "
                    f"{err}; change the "
                    "sampler's choices or ranges (a fold trains on the training classes "
                    "of the other folds)") from None


__all__ = ["MAX_RANGE_VALUES", "MAX_SETTINGS", "check_batches", "range_values",
           "sampler_settings"]
