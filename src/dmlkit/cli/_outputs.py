"""Where a command may write: the rule every ``--out`` (and ``--save``) is checked by
before any work.

An output file can become a file (it is no directory, and no folder above it is a file:
:func:`check_output_file`), an output folder a folder (:func:`check_output_dir`). An
output never replaces one of the command's own inputs (``--data t.csv --out t.csv``
would leave only the scores; inside an input that is a run directory only the run's own
files are refused), never replaces a run directory's own files (its config, weights,
metrics, log: :func:`dmlkit.runs.run_files.check_not_run_file`, the rule ``dmlkit report``
and ``dmlkit export`` apply too), and never lies inside a directory dmlkit saved (an index, a fitted
kit, an embedding store: one whose ``manifest.json`` names a ``dmlkit-*`` format), whose
files are checked against that manifest and which a later save replaces whole. A folder
of outputs (``dmlkit explain --out DIR``) is, in addition, never a run directory itself.
Each refusal is a one-line ``ValueError`` naming the option and what to do.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
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


def check_output_file(path: Path, what: str = "file", option: str = "--out") -> None:
    """Raise a ``ValueError`` when ``path`` (given as ``option``) cannot become a file:
    it is a directory, or a folder above it is a file."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a directory; give a {what} name")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {path}: {parent} is a file, not a directory")
            return


def check_output_dir(path: Path, option: str = "--out") -> None:
    """Raise a ``ValueError`` when ``path`` (given as ``option``) cannot become a
    directory (it, or a folder above it, is a file)."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{option} {path}: {parent} is a file, not a directory")
            return


def check_not_input(path: Path, option: str, inputs: Mapping[str, Path | None]) -> None:
    """Refuse ``path`` (given as ``option``) when it is one of ``inputs`` (``{"the --data
    file": PATH, ...}``; ``None`` entries are skipped) or lies inside one that is a
    directory, or that does not exist yet (a folder the command will save, such as
    ``--save DIR``, replaced whole by that save): writing there would replace or change
    what the command reads or writes. Inside an input that is a run directory only its
    own files are refused (the run-file rule, :func:`check_not_run_file`): a run's folder
    holds outputs of other commands too."""
    from dmlkit.runs.run_files import is_run_dir

    real = Path(path).resolve()
    for what, source in inputs.items():
        if source is None:
            continue
        src = Path(source).resolve()
        if real == src:
            raise ValueError(f"{option} {path} is {what}; writing there would replace it: "
                             "give another name")
        # (one not there yet counts as a folder: an output inside it would make it one, and
        # a directory the command saves, such as --save, is replaced whole by the save)
        if (src.is_dir() or not src.exists()) and _inside(real, src) and not is_run_dir(src):
            raise ValueError(f"{option} {path} lies inside {what} {source}; writing there "
                             "would change it: give a path outside it")


def check_not_run_file(path: Path, option: str = "--out",
                       run_dir: Path | None = None, allow: Collection[str] = ()) -> None:
    """Refuse ``path`` when it is one of a run directory's own files, or of ``run_dir``'s
    (:func:`dmlkit.runs.run_files.check_not_run_file`, ``option`` naming it); names in
    ``allow`` are the command's own file in ``run_dir`` (``evaluation.json`` for
    ``dmlkit evaluate``) and pass there."""
    from dmlkit.runs import run_files

    run_files.check_not_run_file(path, option, run_dir=run_dir, allow=allow)


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
                      inputs: Mapping[str, Path | None] | None = None, *,
                      what: str = "file", run_dir: Path | None = None,
                      allow: Collection[str] = ()) -> None:
    """Refuse an output file ``path`` that cannot become a file (:func:`check_output_file`,
    ``what`` naming the file it should be), is one of ``inputs`` (or lies inside one), is
    one of a run directory's own files (of ``run_dir``'s too, the run the command reads;
    names in ``allow`` pass in ``run_dir``: the command's own file there), or lies inside
    a saved directory (see the module)."""
    check_output_file(Path(path), what, option)
    check_not_input(path, option, inputs or {})
    check_not_run_file(path, option, run_dir, allow)
    check_outside_saved(path, option)


def existing_inputs(specs: Mapping[str, str | Path | None]) -> dict[str, Path | None]:
    """The ``inputs`` of :func:`check_output_path` among data specs that may name a file
    or folder, or something else (a dataset name, a run's split): only those that exist
    on disk are inputs (a missing one would count as a folder to be written)."""
    return {what: Path(spec) if spec is not None and Path(spec).exists() else None
            for what, spec in specs.items()}


def check_output_folder(path: Path, option: str = "--out",
                        inputs: Mapping[str, Path | None] | None = None, *,
                        own_format: str | None = None, example: str = "explain") -> None:
    """Refuse an output folder ``path`` that cannot become a folder
    (:func:`check_output_dir`), is one of ``inputs`` (or lies inside one), a run
    directory (``example`` naming a folder to suggest in it), a saved directory (but one
    of ``own_format``: the command's own earlier output, which it continues or
    replaces), or lies inside a saved directory."""
    from dmlkit.runs.run_files import is_run_dir

    check_output_dir(Path(path), option)
    check_not_input(path, option, inputs or {})
    if is_run_dir(path):
        raise ValueError(f"{option} {path} is a run directory; its outputs would be written "
                         f"among the run's own files: give another folder (e.g. "
                         f"{Path(path) / example})")
    found = saved_format(path)
    if found is not None and found != own_format:
        raise ValueError(f"{option} {path} is a saved {found} directory whose files are "
                         f"checked against its {MANIFEST}; writing there would break it: "
                         "give another folder")
    check_outside_saved(path, option)


def check_own_folder(path: Path, own: Collection[str], what: str,
                     option: str = "--out") -> None:
    """Refuse an existing folder ``path`` (given as ``option``) that holds anything but the
    files named in ``own``: a command whose folder of outputs has no ``manifest.json``
    writes into a new or empty folder, or replaces its own earlier output there (``what``,
    e.g. ``"fitted metric (components.npy, metric.json)"``), as ``dmlkit index build``
    replaces an earlier index and refuses a folder of other files
    (:func:`dmlkit.index.io.check_replaceable`)."""
    from dmlkit._checks import first_few

    path = Path(path)
    if not path.is_dir():
        return
    others = sorted(p.name for p in path.iterdir() if p.name not in own)
    if others:
        raise ValueError(f"{option} {path} holds other files ({first_few(others)}), not only "
                         f"an earlier {what}; writing there would mix the outputs with them: "
                         "give a new or empty folder, or remove them first")


__all__ = ["check_not_input", "check_not_run_file", "check_outside_saved", "check_output_dir",
           "check_output_file", "check_output_folder", "check_output_path", "check_own_folder",
           "existing_inputs", "saved_format"]
