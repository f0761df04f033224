"""dmlkit: deep metric learning, end to end.

Submodules are imported lazily so that ``import dmlkit`` (and the CLI's ``--help``)
stays fast; use ``dmlkit.losses``, ``dmlkit.miners`` and friends directly.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {
    "functional",
    "distances",
    "losses",
    "miners",
    "samplers",
    "models",
    "training",
    "classical",
    "evaluation",
    "index",
    "apps",
    "explain",
    "data",
    "config",
    "registry",
    "runs",
    "report",
    "service",
    "text",
    "tuning",
    "cli",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"dmlkit.{name}")
    raise AttributeError(f"module 'dmlkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The module's names and its subpackages (listed, not imported)."""
    return sorted(set(globals()) | _SUBMODULES)


__all__ = sorted(_SUBMODULES) + ["__version__"]
