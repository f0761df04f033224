"""A run directory's own files, and the one rule that keeps every writer off them.

A run directory is a ``config.yaml`` beside saved weights (``model.pt`` or
``checkpoint.pt``); train, evaluate, report and tune keep their files there
(:data:`RUN_FILES`), and tune keeps its study and best config in its own folder
(:data:`TUNE_FILES`). No output of another command (an export, a report under another
name, scores, a summary) may replace one of them: :func:`check_not_run_file` is that rule,
used alike by the export (:mod:`dmlkit.runs.export`), the HTML report
(:mod:`dmlkit.report.html`) and the command line's output checks.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

#: the files a run directory keeps (written by train, evaluate, report and tune), its
#: trainer's lock among them
RUN_FILES = frozenset({"config.yaml", "model.pt", "checkpoint.pt", "metrics.json",
                       "train.log", "evaluation.json", "report.html", "best.yaml",
                       "best.json", "baseline.json", ".train.lock"})
#: the files ``dmlkit tune`` keeps in its ``--out`` folder: the study, the best config
#: and its summary, and the lock their writers share
TUNE_FILES = frozenset({"study.db", "best.yaml", "best.json", ".best.lock"})
#: lock files, whose replacement would let two writers in at once wherever they lie
LOCK_FILES = frozenset({".train.lock", ".best.lock"})


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a run directory (a ``config.yaml`` beside saved weights)."""
    path = Path(path)
    return (path / "config.yaml").is_file() and any(
        (path / name).is_file() for name in ("model.pt", "checkpoint.pt"))


def run_file_owner(path: str | Path, run_dir: str | Path | None = None,
                   allow: Collection[str] = ()) -> Path | None:
    """The run directory whose own file ``path`` is (resolved), or ``None``.

    ``path`` is a run's own file when its name is one of :data:`RUN_FILES` and the folder
    holding it is a run directory, or is ``run_dir`` (the run a command works on, even
    before its weights exist). Names in ``allow`` are the writer's own file in
    ``run_dir`` (``report.html`` for the report) and pass there.
    """
    real = Path(path).resolve()
    if real.name not in RUN_FILES:
        return None
    own = run_dir is not None and real.parent == Path(run_dir).resolve()
    if own and real.name in allow:
        return None
    locked = real.name in LOCK_FILES and (real.exists() or (real.parent / "config.yaml").is_file())
    return real.parent if own or locked or is_run_dir(real.parent) else None


def tune_file_owner(path: str | Path) -> Path | None:
    """The ``dmlkit tune`` output folder whose own file ``path`` is (resolved), or
    ``None``: its name is one of :data:`TUNE_FILES` and the folder holding it holds one
    of them already (a study, a best config, their lock), or it is a lock file that
    exists."""
    real = Path(path).resolve()
    if real.name not in TUNE_FILES:
        return None
    if any((real.parent / name).exists() for name in TUNE_FILES) or (
            real.name in LOCK_FILES and real.exists()):
        return real.parent
    return None


def check_not_run_file(path: str | Path, label: str = "", *,
                       run_dir: str | Path | None = None, allow: Collection[str] = (),
                       fix: str = "give another name or a path outside the run") -> None:
    """Raise a one-line ``ValueError`` when ``path`` is a run directory's own file
    (:func:`run_file_owner`): ``"{label} {path} is the run directory RUN's own NAME;
    {fix}"``, ``label`` naming where the path came from (an option, or nothing), or a
    ``dmlkit tune`` folder's (:func:`tune_file_owner`), whatever ``allow`` holds."""
    where = f"{label} {path}" if label else str(path)
    run = run_file_owner(path, run_dir, allow)
    if run is not None:
        raise ValueError(f"{where} is the run directory {run}'s own {Path(path).resolve().name}; "
                         f"{fix}")
    tune = tune_file_owner(path)
    if tune is not None:
        raise ValueError(f"{where} is the dmlkit tune folder {tune}'s own "
                         f"{Path(path).resolve().name}; {fix}")


__all__ = ["LOCK_FILES", "RUN_FILES", "TUNE_FILES", "check_not_run_file", "is_run_dir",
           "run_file_owner", "tune_file_owner"]
