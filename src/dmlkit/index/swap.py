"""Saving a directory in place (:func:`dmlkit.index.io.write_index_dir`): one save at a
time per directory, the swap that publishes it, and what an interrupted save leaves.

A save writes a hidden temporary sibling ``.NAME.tmp-PID-*``, sets the previous save
aside as ``.NAME.old-PID`` (with a random suffix where that is taken), renames the
temporary into place and removes the set-aside one, all while holding an exclusive lock
of ``NAME``: threads of one process wait on a per-path ``threading.Lock``, separate
processes on an ``fcntl.flock`` of a lock file beside the directory (``.NAME.lock``,
made when a save starts and removed when it ends). Where ``fcntl`` is missing (Windows),
or the lock file cannot be made (a read-only folder, where no save can succeed anyway),
only the thread lock is taken. Loads take no lock: they read one whole save while
another is swapped in (:func:`dmlkit.index.io.read_consistent`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # (not POSIX: threads of this process still wait for each other)
    fcntl = None  # type: ignore[assignment]

MANIFEST = "manifest.json"

_registry_lock = threading.Lock()
_thread_locks: dict[str, threading.Lock] = {}

#: tries to lock a lock file that other savers keep removing and making again
_LOCK_TRIES = 1000


def lock_path(path: str | Path) -> Path:
    """The lock file of saves into ``path``: ``.NAME.lock`` beside it."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def _key(path: Path) -> str:
    try:
        parent = path.parent.resolve()
    except OSError:
        parent = path.parent.absolute()
    return str(parent / path.name)


def _thread_lock(path: Path) -> threading.Lock:
    key = _key(path)
    with _registry_lock:
        return _thread_locks.setdefault(key, threading.Lock())


def _lock_file(path: Path) -> int | None:
    """An open descriptor holding ``flock`` of ``path``'s lock file, or ``None`` when no
    file lock can be taken. A lock file its holder removed before this one locked it
    is let go and the new one is locked instead."""
    if fcntl is None:
        return None
    target = lock_path(path)
    for _ in range(_LOCK_TRIES):
        try:
            fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held, now = os.fstat(fd), os.stat(target)
        except FileNotFoundError:  # (removed by the saver before us)
            os.close(fd)
            continue
        except OSError:
            os.close(fd)
            return None
        if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
            return fd
        os.close(fd)  # (removed and made again: lock the file that is there now)
    return None


@contextlib.contextmanager
def save_lock(path: str | Path) -> Iterator[None]:
    """Hold the exclusive save lock of ``path`` (its parent folder must exist for the
    lock file; without it only threads of this process are kept apart)."""
    path = Path(path)
    with _thread_lock(path):
        fd = _lock_file(path) if path.parent.is_dir() else None
        try:
            yield
        finally:
            if fd is not None:
                with contextlib.suppress(OSError):  # (removed while locked: no one waits)
                    os.unlink(lock_path(path))
                os.close(fd)


def _aside_name(path: Path) -> Path:
    """A free name to set the previous save of ``path`` aside under: ``.NAME.old-PID``,
    or ``.NAME.old-PID-RANDOM`` where that is taken (a folder that could not be removed)."""
    aside = path.parent / f".{path.name}.old-{os.getpid()}"
    while os.path.lexists(aside):
        aside = path.parent / f".{path.name}.old-{os.getpid()}-{secrets.token_hex(6)}"
    return aside


def swap_in(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path`` (the caller holds :func:`save_lock`), setting a previous
    save aside (:func:`_aside_name`) and removing it after. When the rename fails, the
    previous save is put back (or removed, where ``path`` holds a whole save after all)."""
    aside = None
    try:
        if path.exists():
            target = _aside_name(path)
            os.replace(path, target)
            aside = target
        os.replace(tmp, path)
    except BaseException:
        if aside is not None:
            if not os.path.lexists(path):
                with contextlib.suppress(OSError):
                    os.replace(aside, path)
            elif (path / MANIFEST).is_file():
                shutil.rmtree(aside, ignore_errors=True)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _writer_pid(name: str) -> int | None:
    """The process id in a ``.NAME.tmp-PID-*`` / ``.NAME.old-PID[-*]`` name, if any."""
    text = name.rsplit(".tmp-", 1)[-1].rsplit(".old-", 1)[-1].split("-")[0]
    return int(text) if text.isdigit() else None


def _in_progress(name: str, locked: bool) -> bool:
    """Whether the temporary or set-aside directory ``name`` may belong to a running save:
    its writer's process is alive, except for a set-aside one of this process where the
    caller holds the save lock (this process's saves of the path all wait for that lock,
    so none of them is between its swaps)."""
    pid = _writer_pid(name)
    if pid is None:
        return True  # (not named by a save: never touched)
    if pid == os.getpid():
        return not (locked and ".old-" in name)
    return _alive(pid)


def remove_stale_temps(path: str | Path, *, locked: bool = False) -> list[Path]:
    """Remove the hidden ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` siblings of ``path``
    left by a writer that was killed (``kill -9``, power loss) or failed before it could
    clean up.

    Only directories whose process id is no longer running are touched (with ``locked``,
    the caller holds the save lock of ``path``: set-aside ones of this process too, left
    by a save that failed to clean up, as none of its saves can be mid-swap); an old
    index set aside by a writer killed mid-swap is put back when ``path`` is missing.
    Returns the directories removed.
    """
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    recover_set_aside(path, locked=locked)  # killed mid-swap: the previous index first
    for pattern in (f".{path.name}.tmp-*", f".{path.name}.old-*"):
        for stale in path.parent.glob(pattern):
            if _in_progress(stale.name, locked):
                continue
            if ".old-" in stale.name and not path.exists():
                continue  # (an incomplete set-aside save, the only copy: left for its owner)
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
    return removed


def recover_set_aside(path: str | Path, *, locked: bool = False) -> Path | None:
    """Put back the previous save of a missing ``path`` that a writer killed mid-swap
    left set aside as ``.NAME.old-PID-*`` (see :func:`write_index_dir`): returns ``path``
    when one was moved back; else the set-aside directory found (its writer is still
    running, or it cannot be moved), or ``None`` when there is none. ``locked``: the
    caller holds the save lock of ``path`` (see :func:`remove_stale_temps`)."""
    path = Path(path)
    if path.exists() or not path.parent.is_dir():
        return None
    found = None
    for old in sorted(path.parent.glob(f".{path.name}.old-*")):
        if not (old / MANIFEST).is_file():
            continue
        found = old
        if _in_progress(old.name, locked):
            continue  # a save in progress is about to replace it itself
        try:
            os.replace(old, path)
        except OSError:
            continue
        warnings.warn(f"{path} was missing: a save into it was interrupted after setting "
                      f"the previous save aside as {old.name}, which is now put back",
                      stacklevel=3)
        return path
    return found


def save_running(path: Path) -> bool:
    """Whether a live process is saving into ``path`` (its temporary or set-aside
    sibling is there)."""
    if not path.parent.is_dir():
        return False
    for pattern in (f".{path.name}.tmp-*", f".{path.name}.old-*"):
        for sib in path.parent.glob(pattern):
            pid = _writer_pid(sib.name)
            if pid is not None and _alive(pid):
                return True
    return False


__all__ = ["lock_path", "recover_set_aside", "remove_stale_temps", "save_lock",
           "save_running", "swap_in"]
