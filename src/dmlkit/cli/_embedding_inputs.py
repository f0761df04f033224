"""Checks of a ``.npz`` read by a command: embeddings handed where a run's model would embed
raw inputs, and rows of NaN or infinite values, named by file and row before any work; a
text file handed to ``dmlkit embed`` of a text run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: the array ``dmlkit embed`` writes its embeddings to
EMBEDDINGS = "embeddings"
#: the files of sentences that ``dmlkit text embed`` reads
TEXT_FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".txt")


def _array_names(path: Path) -> list[str]:
    """The names of the arrays of the ``.npz`` ``path``, without reading them (an empty,
    truncated or foreign file: the ``ValueError`` naming it of every ``.npz`` reader)."""
    import zipfile
    import zlib

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:
            return list(archive.files)
    except (OSError, EOFError, ValueError, AttributeError, zipfile.BadZipFile,
            zlib.error):
        from dmlkit.data.npz import read_arrays

        return list(read_arrays(path))  # (raises the ValueError naming the file)


def refuse_embeddings(spec: str | Path | None, x_key: str | None = None,
                      fix: str = "leave RUN_DIR out to use them as they are") -> None:
    """A ``ValueError`` when the ``--data`` ``spec`` given with a run directory is a
    ``.npz`` of embeddings (as ``dmlkit embed`` writes them: an ``'embeddings'`` array or a
    recorded ``model_sha256``) that the run's model would embed again as raw inputs.

    The inputs array is ``x_key`` (default ``'x'``, else ``'embeddings'`` where the file
    has no ``'x'``); ``fix`` says how to use the embeddings as they are. Anything else
    (another spec, a missing file) passes, for its reader to judge.
    """
    from dmlkit.index.provenance import EMBEDDINGS_MODEL_KEY

    path = Path(spec) if spec is not None else None
    if path is None or path.suffix.lower() != ".npz" or not path.is_file():
        return
    names = _array_names(path)
    key = x_key or ("x" if "x" in names or EMBEDDINGS not in names else EMBEDDINGS)
    if key == EMBEDDINGS and key in names:
        why = f"array {EMBEDDINGS!r}"
    elif EMBEDDINGS_MODEL_KEY in names:
        why = f"it records the {EMBEDDINGS_MODEL_KEY!r} of the model that embedded them"
    else:
        return
    raise ValueError(f"{path} holds embeddings ({why}), which RUN_DIR's model would embed "
                     f"again: {fix}, or give raw inputs as an 'x' array")


def refuse_text_files(spec: str | Path | None, run_dir: Path, out: Path) -> None:
    """A ``ValueError`` pointing to ``dmlkit text embed`` when the ``--data`` ``spec`` of
    ``dmlkit embed`` is a text data file (``.csv``, ``.tsv``, ``.jsonl``, ``.txt``) and
    ``run_dir`` a text run, whose model embeds the sentences that command reads. Anything
    else passes (a run that cannot be read: for the run loader to name)."""
    if spec is None or Path(spec).suffix.lower() not in TEXT_FILE_SUFFIXES:
        return
    from dmlkit.config.schema import TEXT_SOURCES
    from dmlkit.training.run_dir import saved_run_config

    try:
        config = saved_run_config(Path(run_dir))
    except (OSError, ValueError, TypeError, KeyError):
        return
    if config is None or config.data.name not in TEXT_SOURCES:
        return
    raise ValueError(f"{spec} is a file of sentences and {run_dir} a text run: embed them "
                     f"with dmlkit text embed {spec} --run {run_dir} -o {out}")


def check_finite_inputs(x: Any, path: Path, key: str) -> None:
    """A ``ValueError`` naming the file, the array and the rows (numbered as in the file)
    when array ``key`` of ``path`` holds NaN or infinite values."""
    from dmlkit.apps.embedding import check_finite_rows

    check_finite_rows(x, str(path) if path.suffix.lower() == ".npy" else f"{path}: {key!r}")


__all__ = ["EMBEDDINGS", "TEXT_FILE_SUFFIXES", "check_finite_inputs", "refuse_embeddings",
           "refuse_text_files"]
