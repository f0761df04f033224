"""The best config of a study, written for the commands that read it later.

``best.yaml`` (the config ``dmlkit train`` runs and ``dmlkit crossval`` re-scores) and
``best.json`` (its score, parameters and per-fold curves) are rewritten by every worker
after every completed trial. Two rules keep them right:

- data paths are absolute, resolved as ``dmlkit train`` resolves them (relative to the
  working directory, where that file exists), so ``best.yaml`` reads the same data from
  any directory;
- a writer holds an exclusive lock (``.best.lock`` beside them) while it reads the best
  trial from the storage and replaces the files, so a worker that read the trials
  before another worker's better trial finished cannot overwrite that trial's files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dmlkit.config.schema import Config
from dmlkit.evaluation.evaluate import write_text

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
    fcntl = None  # type: ignore[assignment]

BEST_FILE = "best.yaml"
BEST_JSON = "best.json"
LOCK_FILE = ".best.lock"


def absolute_paths(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of a ``data`` section whose relative paths (``path``, ``tuples``,
    ``features``) that exist from the working directory are absolute: the rule of
    :func:`dmlkit.training.resolve_config`, which a run's ``config.yaml`` records."""
    from dmlkit.training.build import DATA_PATH_KEYS, absolute_path

    return {**data, **{key: absolute_path(data[key]) for key in DATA_PATH_KEYS if key in data}}


def absolute_data_paths(config: Config) -> Config:
    """A copy of ``config`` with its data paths absolute (:func:`absolute_paths`)."""
    raw = config.to_dict()
    raw["data"] = absolute_paths(raw["data"])
    return Config.from_dict(raw)


def best_of(trials: Iterable[Any]) -> Any | None:
    """The completed trial of highest value (the earliest of equal ones), else ``None``."""
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


@contextmanager
def best_lock(out_dir: Path) -> Iterator[None]:
    """Hold the exclusive lock on ``out_dir/.best.lock`` (waits for other writers)."""
    with open(out_dir / LOCK_FILE, "a") as handle:
        if fcntl is None:  # pragma: no cover
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def write_best(study: Any, config: Config, out_dir: Path, storage: str) -> Path | None:
    """Write the best completed trial's config (``best.yaml``) and summary (``best.json``).

    The best trial is read from the storage under the lock, so the files always hold the
    best of the trials finished before the last writer took the lock.

    Returns
    -------
    Path or None
        ``best.yaml``; ``None`` while no trial has completed.
    """
    with best_lock(out_dir):
        best = best_of(study.get_trials(deepcopy=False))
        if best is None:
            return None
        best_config = absolute_data_paths(Config.from_dict(best.user_attrs["config"]))
        if best_config.tune is not None:
            best_config.tune.space = {}  # the chosen point, not the space
        folds = config.tune.folds if config.tune is not None else "?"
        header = (
            f"# Best of study {study.study_name!r}: trial {best.number}, mean MAP@R "
            f"{best.value:.6f} over {folds} class-disjoint folds of the training classes.\n"
            f"# Re-score: dmlkit crossval {BEST_FILE}    Train: dmlkit train {BEST_FILE}\n"
        )
        path = out_dir / BEST_FILE
        atomic_write_text(path, header + best_config.to_yaml())
        summary = {
            "study": study.study_name, "storage": storage.split("@")[-1], "trial": best.number,
            "value": best.value, "params": best.params, "folds": best.user_attrs.get("folds"),
        }  # fmt: skip
        atomic_write_text(out_dir / BEST_JSON, json.dumps(summary, indent=2) + "\n")
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    write_text(text, path)


__all__ = [
    "BEST_FILE",
    "BEST_JSON",
    "absolute_data_paths",
    "absolute_paths",
    "atomic_write_text",
    "best_lock",
    "best_of",
    "write_best",
]
