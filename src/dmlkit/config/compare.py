"""Where a config differs from a run's saved (resolved) config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dmlkit.config.schema import Config

#: settings that may differ between a run and the command that resumes it (where it runs,
#: how long: the checkpoint loads onto any device)
RESUMABLE = ("training.epochs", "training.progress", "training.device",
             "training.num_threads")
#: settings that name files (compared as the files they name)
_PATHS = ("data.path", "data.tuples", "data.features")
#: sections that are ``{name: ..., **params}`` configs of registered components
_COMPONENTS = ("model", "loss", "miner", "sampler")


def config_changes(given: Config, saved: Config, ignore: tuple[str, ...] = RESUMABLE
                   ) -> list[str]:
    """``["section.key: saved -> given", ...]`` for every setting of ``given`` that differs
    from ``saved``.

    ``saved`` is a run's resolved config: the parameters resolution filled in (input
    shapes, ``num_classes``) are keys the given config does not name, so only the keys a
    component (model, loss, miner, sampler) of ``given`` names are compared, in the
    component configs it nests too (the losses of a ``multiple_losses``).
    """
    a, b = given.to_dict(), saved.to_dict()
    paths = set(_PATHS) | {f"model.{key}" for key in _model_paths(a.get("model"))}
    changes: list[str] = []
    for section, value in a.items():
        old = b.get(section)
        if isinstance(value, dict) and isinstance(old, dict):
            keys = value if section in _COMPONENTS else {**old, **value}
            for key in keys:
                name = f"{section}.{key}"
                differs = (_path_differs if name in paths else
                           _component_differs if section in _COMPONENTS else _differs)
                if name not in ignore and differs(value.get(key), old.get(key)):
                    changes.append(f"{name}: {old.get(key)!r} -> {value.get(key)!r}")
        elif section not in ignore and _differs(value, old):
            changes.append(f"{section}: {old!r} -> {value!r}")
    return changes


def _component_differs(given: Any, saved: Any) -> bool:
    """Whether a component parameter differs, where nested component configs
    (``{"name": ...}`` mappings, or names) compare only on the keys ``given`` names."""
    if isinstance(given, str) and isinstance(saved, dict) and "name" in saved:
        given = {"name": given}  # a name that resolution expanded into a config
    if isinstance(given, dict) and isinstance(saved, dict):
        keys = given if "name" in given else {**saved, **given}
        return any(_component_differs(given.get(k), saved.get(k)) for k in keys)
    if isinstance(given, (list, tuple)) and isinstance(saved, (list, tuple)):
        return len(given) != len(saved) or any(
            _component_differs(g, s) for g, s in zip(given, saved, strict=True))
    return _differs(given, saved)


def _model_paths(spec: Any) -> tuple[str, ...]:
    """The file and folder settings of the model config ``spec`` (its class's
    ``path_settings``), which a run saves absolute."""
    from dmlkit.registry import MODELS

    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        return ()
    try:
        keys = getattr(MODELS.get(spec["name"]), "path_settings", ())
    except ValueError:  # an unknown model: building it says so
        return ()
    return tuple(keys) if isinstance(keys, (tuple, list)) else ()


def _path_differs(given: Any, saved: Any) -> bool:
    """Whether two file settings name different files: a run saves its data paths (and
    its model's files and folders) absolute, a config may give them relative to the
    working directory, or under ``~``."""
    if isinstance(given, str) and isinstance(saved, str) and given and saved:
        return (Path(given).expanduser().resolve()
                != Path(saved).expanduser().resolve())
    return _differs(given, saved)


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) != list(b)
    return a != b


__all__ = ["RESUMABLE", "config_changes"]
