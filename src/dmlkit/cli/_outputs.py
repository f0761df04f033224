"""Where a command may write: the rule every ``--out`` (and ``--save``) is checked by
before any work.

An output never replaces one of the command's own inputs (``--data t.csv --out t.csv``
would leave only the scores), never replaces a run directory's own files (its config,
weights, metrics, log: :data:`~dmlkit.runs.export.RUN_FILES`, the rule ``dmlkit report
--out`` applies), and never lies inside a directory dmlkit saved (an index, a fitted
kit, an embedding store: one whose ``manifest.json`` names a ``dmlkit-*`` format), whose
files are checked against that manifest and which a later save replaces whole. A folder
of outputs (``dmlkit explain --out DIR``) is, in addition, never a run directory itself.
Each refusal is a one-line ``ValueError`` naming the option and what to do.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

#: the file that marks a directory saved by dmlkit (see :mod:`dmlkit.index.io`)
MANIFEST = "manifest.json"


def saved_format(path: Path) -> str | None:
    """The ``dmlkit-*`` format named by the ``manifest.json`` of directory ``path``, or
    ``None`` when it holds none (or an unreadable one)."""
    mpath = Path(path) / MANIFEST
    if not mpath.is_file():
        return None
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    return found if isinstance(found, str) and found.startswith("dmlkit-") else None


def _inside(path: Path, folder: Path) -> bool:
    """Whether the resolved ``path`` is ``folder`` or lies below it."""
    return path == folder or folder in path.parents


def check_not_input(path: Path, option: str, inputs: Mapping[str, Path | None]) -> None:
    """Refuse ``path`` (given as ``option``) when it is one of ``inputs`` (``{"the --data
    file": PATH, ...}``; ``None`` entries are skipped) or lies inside one that is a
    directory: writing there would replace or change what the command reads."""
    real = Path(path).resolve()
    for what, source in inputs.items():
        if source is None:
            continue
        src = Path(source).resolve()
        if real == src:
            raise ValueError(f"{option} {path} is {what}; writing there would replace it: "
                             "give another name")
        if src.is_dir() and _inside(real, src):
            raise ValueError(f"{option} {path} lies inside {what} {source}; writing there "
                             "would change it: give a path outside it")


def check_not_run_file(path: Path, option: str = "--out") -> None:
    """Refuse ``path`` when it is one of a run directory's own files
    (:data:`~dmlkit.runs.export.RUN_FILES` beside a run's config and weights)."""
    from dmlkit.runs.export import RUN_FILES, is_run_dir

    real = Path(path).resolve()
    if real.name in RUN_FILES and is_run_dir(real.parent):
        raise ValueError(f"{option} {path} is the run directory {real.parent}'s own "
                         f"{real.name}; give another name or a path outside the run")


def check_outside_saved(path: Path, option: str = "--out") -> None:
    """Refuse ``path`` when a folder above it is a directory dmlkit saved (an index, a
    fitted kit, an embedding store: :func:`saved_format`)."""
    for folder in Path(path).resolve().parents:
        found = saved_format(folder)
        if found is not None:
            raise ValueError(
                f"{option} {path} lies inside {folder}, a saved {found} directory whose "
                f"files are checked against its {MANIFEST} (and replaced whole by the next "
                "save); writing there would break it: give a path outside it")


def check_output_path(path: Path, option: str = "--out",
                      inputs: Mapping[str, Path | None] | None = None) -> None:
    """Refuse an output file ``path`` that is one of ``inputs`` (or lies inside one), one
    of a run directory's own files, or lies inside a saved directory (see the module)."""
    check_not_input(path, option, inputs or {})
    check_not_run_file(path, option)
    check_outside_saved(path, option)


def check_output_folder(path: Path, option: str = "--out",
                        inputs: Mapping[str, Path | None] | None = None) -> None:
    """Refuse an output folder ``path`` that is one of ``inputs`` (or lies inside one), a
    run directory, a saved directory, or lies inside a saved directory."""
    from dmlkit.runs.export import is_run_dir

    check_not_input(path, option, inputs or {})
    if is_run_dir(path):
        raise ValueError(f"{option} {path} is a run directory; its outputs would be written "
                         f"among the run's own files: give another folder (e.g. "
                         f"{Path(path) / 'explain'})")
    found = saved_format(path)
    if found is not None:
        raise ValueError(f"{option} {path} is a saved {found} directory whose files are "
                         f"checked against its {MANIFEST}; writing there would break it: "
                         "give another folder")
    check_outside_saved(path, option)


__all__ = ["check_not_input", "check_not_run_file", "check_outside_saved",
           "check_output_folder", "check_output_path", "saved_format"]
