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
from dmlkit.training.checks import idle_patience
from dmlkit.tuning.storage import absolute_storage, same_storage

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
    best of the trials finished before the last writer took the lock. ``best.yaml`` is a
    config ``dmlkit train`` accepts: a ``training.patience`` it could not use (the config
    validates on nothing; the folds validated on their own classes) is left out, and the
    header says so and how ``dmlkit crossval`` re-scores the trial with it.

    Raises
    ------
    FileExistsError
        ``out_dir`` holds the best files of another study (:func:`check_best_owner`).

    Returns
    -------
    Path or None
        ``best.yaml``; ``None`` while no trial has completed.
    """
    with best_lock(out_dir):
        check_best_owner(out_dir, study.study_name, storage)
        best = best_of(study.get_trials(deepcopy=False))
        if best is None:
            return None
        best_config = absolute_data_paths(Config.from_dict(best.user_attrs["config"]))
        if best_config.tune is not None:
            best_config.tune.space = {}  # the chosen point, not the space
            if best_config.tune.storage:  # a file to share: no user or password in it
                best_config.tune.storage = safe_storage(
                    absolute_storage(best_config.tune.storage))
        folds = config.tune.folds if config.tune is not None else "?"
        rescore = f"dmlkit crossval {BEST_FILE}"
        note = ""
        tc = best_config.training
        if idle_patience(tc):
            objective = best_config.tune.objective if best_config.tune is not None else "final"
            note = (
                f"# training.patience {tc.patience} is left out: dmlkit train of this config "
                "validates on nothing (set training.val_classes to stop early on held-out\n"
                "# classes); the folds validated on their own classes"
                + (" and stopped with it.\n" if objective == "best_epoch" else
                   ", trained every epoch (objective 'final').\n"))
            if objective == "best_epoch":
                rescore += f" --set training.patience={tc.patience}"
            tc.patience = None
        header = (
            f"# Best of study {study.study_name!r}: trial {best.number}, mean MAP@R "
            f"{best.value:.6f} over {folds} class-disjoint folds of the training classes.\n"
            f"# Re-score: {rescore}    Train: dmlkit train {BEST_FILE}\n" + note
        )
        path = out_dir / BEST_FILE
        write_text(header + best_config.to_yaml(), path)
        summary = {
            "study": study.study_name, "storage": safe_storage(absolute_storage(storage)),
            "trial": best.number,
            "value": best.value, "params": best.params, "folds": best.user_attrs.get("folds"),
        }  # fmt: skip
        write_text(json.dumps(summary, indent=2) + "\n", out_dir / BEST_JSON)
    return path


def safe_storage(url: str) -> str:
    """A storage URL as messages, ``best.json`` and ``best.yaml`` show it: without user
    and password, and otherwise whole (scheme, host, port, path and query kept, so it
    still opens the study: ``postgresql://u:p@h:5432/db`` -> ``postgresql://h:5432/db``).
    A URL without credentials (``sqlite:///abs/path.db``) is returned unchanged."""
    from urllib.parse import urlsplit

    try:
        netloc = urlsplit(url).netloc
    except ValueError:  # (an unparsable URL: keep what follows the last "@")
        netloc = ""
    if "@" in netloc:
        return url.replace(netloc, netloc.rsplit("@", 1)[1], 1)
    if "@" in url:  # not scheme://user:password@host: show no part that may be a password
        return url.split("@")[-1]
    return url


def check_best_owner(out_dir: Path, study_name: str, storage: str) -> None:
    """Refuse to write the best files of one study over another study's.

    ``out_dir/best.json`` names the study (and storage) whose best it holds; a different
    one is an error, so a second study never destroys a first one's result.

    Raises
    ------
    FileExistsError
        Naming both studies and what to do.
    """
    try:
        owner = json.loads((out_dir / BEST_JSON).read_text())
    except (OSError, ValueError):
        return  # no best files yet (or none this module wrote)
    if not isinstance(owner, dict):
        return
    theirs = (owner.get("study"), owner.get("storage"))
    mine = (study_name, safe_storage(absolute_storage(storage)))
    if theirs[0] is None:
        return
    if theirs[0] == study_name and (not theirs[1] or same_storage(theirs[1], mine[1])
                                    or theirs[1] == storage.split("@")[-1]):
        return  # (the last: as an older dmlkit wrote the storage, without its scheme)
    overwrite = (f"writing there would overwrite that study's {BEST_FILE} and {BEST_JSON}: "
                 "give this study its own --out (the default, runs/<study>-tune, is one "
                 "folder per study)")
    if theirs[0] == study_name:
        raise FileExistsError(
            f"{out_dir} holds the best config of study {study_name!r} stored in "
            f"{theirs[1]}, but this study {study_name!r} is stored in {mine[1]} (another "
            f"storage); {overwrite}, or join that study with --storage {theirs[1]} --resume")
    raise FileExistsError(
        f"{out_dir} holds the best config of study {theirs[0]!r} ({theirs[1]}), not of "
        f"study {study_name!r} ({mine[1]}); {overwrite}")


__all__ = [
    "BEST_FILE",
    "BEST_JSON",
    "absolute_data_paths",
    "absolute_paths",
    "best_lock",
    "best_of",
    "check_best_owner",
    "safe_storage",
    "write_best",
]
