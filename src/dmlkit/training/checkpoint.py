"""Atomic checkpoint files: write to a temporary file in the same folder, then rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from dmlkit._files import publish_mode


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` so that a crash never leaves a half-written file.

    The data goes to a temporary file next to ``path``, is flushed to disk, and replaces
    ``path`` with :func:`os.replace` (atomic on POSIX and Windows).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class CorruptFileError(ValueError):
    """A checkpoint or weights file is empty, truncated or not a torch file."""


def torch_load(path: str | Path, map_location: str | torch.device = "cpu",
               advice: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` with a one-line error for a bad file.

    An empty, truncated or foreign file raises :class:`CorruptFileError` naming the file,
    what is wrong with it and ``advice`` (what to do), never torch's raw error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}")
    size = path.stat().st_size
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # (junk bytes reach the unpickler as KeyError, IndexError, ...)
        what = "is empty (0 bytes)" if size == 0 else (
            f"is truncated or corrupt ({size} bytes; torch.load: "
            f"{str(err).splitlines()[0][:120]})")
        raise CorruptFileError(f"{path} {what}" + (f"; {advice}" if advice else "")) from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by the trainer (plain tensors and values only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = torch_load(
        path, map_location,
        "it cannot be resumed or loaded: start the run again (a new --out, or delete the "
        "run directory), or restore the file from a copy")
    if not isinstance(state, dict) or "model" not in state:
        raise CorruptFileError(f"{path} is not a dmlkit checkpoint (no 'model' entry)")
    return state


__all__ = ["CorruptFileError", "atomic_save", "load_checkpoint", "torch_load"]
