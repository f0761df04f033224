"""Atomic run files: write to a temporary file in the same folder, flush it to disk, then
rename it over the file; a write that fails is one :class:`WriteError` naming the file."""

from __future__ import annotations

import errno
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

from dmlkit._files import publish_mode


class WriteError(OSError):
    """A file could not be written: ``filename`` names the file (not its temporary file),
    ``strerror`` the cause (``No space left on device``)."""

    def __str__(self) -> str:
        reason = self.strerror or "write failed"
        return f"cannot write {self.filename}: {reason[:1].lower()}{reason[1:]}"


def write_error(err: BaseException, path: str | Path) -> WriteError | None:
    """``err``, raised while writing ``path``, as a :class:`WriteError` naming ``path``:
    the first ``OSError`` with an errno in its chain (torch's save fails with a
    ``RuntimeError`` "unexpected pos" after the disk-full ``OSError``), or torch's own
    write failure; ``None`` for anything else (an interrupt, a bug)."""
    if isinstance(err, WriteError):
        return err
    seen, cause = set(), err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno is not None:
            return WriteError(cause.errno, cause.strerror or os.strerror(cause.errno), str(path))
        cause = cause.__cause__ or cause.__context__
    if isinstance(err, RuntimeError) and any(
            word in str(err) for word in ("inline_container", "PytorchStreamWriter")):
        return WriteError(errno.EIO, f"write failed (torch.save: {torch_reason(err, 160)})",
                          str(path))
    return None


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then deliver them (to the handlers
    in place before): an interrupt that lands inside a write (torch's serializer) would
    otherwise fail it half-way instead of stopping the run after it. Off the main thread
    (where Python cannot set handlers) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler is None or handler is signal.SIG_IGN:
            continue  # (a handler Python did not install cannot be put back; ignored: none)
        previous[sig] = signal.signal(sig, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(received):
            signal.raise_signal(sig)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a temporary file next to ``path``, flush it to disk and
    replace ``path`` with it (:func:`os.replace`, atomic on POSIX and Windows), so that a
    crash never leaves a half-written ``path``. On failure the temporary file is removed
    and a failed write raises :class:`WriteError` naming ``path``. Ctrl-C and SIGTERM
    arriving meanwhile take effect once the file is in place
    (:func:`interrupts_deferred`)."""
    with interrupts_deferred():
        _atomic_write(Path(path), write)


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        failure = write_error(err, path) if isinstance(err, Exception) else None
        if failure is None or failure is err:
            raise
        raise failure from err


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` so that a crash never leaves a half-written file
    (:func:`atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically, as :func:`atomic_save` writes."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def torch_reason(err: BaseException, limit: int = 120) -> str:
    """The gist of torch's error ``err`` in at most about ``limit`` characters, never cut
    mid-word: its first line when that fits, else its first sentence (with the
    unpickler's reason where torch gives one: ``Weights only load failed
    (WeightsUnpickler error: Unsupported operand 70)``), else the first line cut at a
    word boundary with an ellipsis."""
    text = str(err).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if isinstance(err, (KeyError, IndexError)) and text.strip("'\"").lstrip("-").isdigit():
        # (junk bytes: the unpickler looked up a number, which says nothing to a reader)
        return f"not a PyTorch file ({type(err).__name__} {text} in its unpickler)"
    first = lines[0]
    if len(first) <= limit:
        return first
    end = first.find(". ")
    sentence = first[:end + 1] if end >= 0 else ""
    if sentence and len(sentence) <= limit:
        marker = "WeightsUnpickler error:"
        at = text.find(marker)
        if at >= 0:  # "...error: \n\nUnsupported operand 70\n\nCheck the documentation..."
            rest = [line.strip() for line in text[at + len(marker):].split("\n\n")]
            why = next((line for line in rest if line), "")
            detail = f" ({marker} {' '.join(why.split())})" if why else ""
            if len(sentence) + len(detail) <= 2 * limit:
                return sentence.rstrip(".") + detail
        return sentence
    cut = first[:limit].rsplit(" ", 1)[0].rstrip(" ,;:")
    return cut + "\u2026"


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
    if isinstance(map_location, (str, torch.device)) and torch.device(map_location).type == "cpu":
        map_location = "cpu"  # (torch cannot restore onto an indexed "cpu:0")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # (junk bytes reach the unpickler as KeyError, IndexError, ...)
        what = "is empty (0 bytes)" if size == 0 else (
            f"is truncated or corrupt ({size} bytes; torch.load: {torch_reason(err)})")
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


__all__ = ["CorruptFileError", "WriteError", "atomic_save", "atomic_write", "atomic_write_text",
           "interrupts_deferred",
           "load_checkpoint", "torch_load", "torch_reason", "write_error"]
