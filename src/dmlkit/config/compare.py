"""Where a config differs from a run's saved (resolved) config."""

from __future__ import annotations

from typing import Any

from dmlkit.config.schema import Config

#: settings that may differ between a run and the command that resumes it
RESUMABLE = ("training.epochs", "training.progress")


def config_changes(given: Config, saved: Config, ignore: tuple[str, ...] = RESUMABLE
                   ) -> list[str]:
    """``["section.key: saved -> given", ...]`` for every setting of ``given`` that differs
    from ``saved``.

    ``saved`` is a run's resolved config: the parameters resolution filled in (input
    shapes, ``num_classes``) are keys the given config does not name, so only the keys a
    component (model, loss, miner, sampler) of ``given`` names are compared.
    """
    a, b = given.to_dict(), saved.to_dict()
    changes: list[str] = []
    for section, value in a.items():
        old = b.get(section)
        if isinstance(value, dict) and isinstance(old, dict):
            keys = value if section in ("model", "loss", "miner", "sampler") else {**old, **value}
            for key in keys:
                name = f"{section}.{key}"
                if name not in ignore and _differs(value.get(key), old.get(key)):
                    changes.append(f"{name}: {old.get(key)!r} -> {value.get(key)!r}")
        elif section not in ignore and _differs(value, old):
            changes.append(f"{section}: {old!r} -> {value!r}")
    return changes


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) != list(b)
    return a != b


__all__ = ["RESUMABLE", "config_changes"]
