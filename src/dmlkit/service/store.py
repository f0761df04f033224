"""A durable, concurrently readable index for the service: write-ahead log + checkpoints.

Every write (add, delete) is appended to ``INDEX_DIR.wal`` as one line and fsynced,
then applied to the index in memory, *before* it is acknowledged. A write whose logging
fails (a full disk: the ``OSError`` reaches the caller) or that the index then refuses (a
bad label, a delete an HNSW graph cannot do) has its bytes cut from the log again and
leaves the index in memory as it was, whatever the index kind, so neither a checkpoint
nor a replay after a crash brings it back. A line is ``CRC32 JSON`` of the record
(:mod:`dmlkit.service.wal`), so a last line torn by a crash is recognised and dropped on
replay (it was never acknowledged), while a bad record with records after it stops the
start (:class:`~dmlkit.service.wal.CorruptLogError`, the log left as it is) rather than
losing the acknowledged writes after it; a record that cannot be applied on replay is
skipped with a warning instead of stopping the service from starting. Every
``checkpoint_every`` writes, and on shutdown, the index is saved atomically
(:meth:`~dmlkit.index.BaseIndex.save`) and the log emptied. Replay is idempotent (an
add whose ids are present, or a delete of absent ids, is skipped), so a crash between
the checkpoint and the log truncation loses and duplicates nothing.

Readers (searches) share a read lock and writers take it exclusively, so no search sees
an index in the middle of an update.

One process at a time owns an index directory: the store holds an exclusive
``fcntl.flock`` on ``INDEX_DIR.lock`` (beside the log, since a checkpoint replaces the
directory itself) for its lifetime, and a second store on the same directory, in this
process or another, is refused at start with :class:`IndexInUseError`. Two writers would
hand out the same ids and one's acknowledged writes would be lost on replay. The operating
system drops the lock when the process dies, however it dies.

A store leaves behind only the writes it logged. Closed without a checkpoint (a refused
``dmlkit serve``, or one that never listened), it removes only the lock file and the
empty log it created, and leaves the folder as it found it; the torn tail of a log is
cut only when the store first writes. Closed cleanly with a checkpoint (a server that
served and stopped), it also removes a lock file and an empty log left by an owner that
died (``kill -9``): it holds the lock, so nobody else owns them. A checkpoint on close
saves the index only when something changed since the last one (a write, a replayed
log), so a server that wrote nothing leaves the index directory untouched. A lock file
is removed only while locked, and a store that locked a file no longer on disk takes the
lock again. :func:`check_not_served` tells whether a directory is owned by a store now,
for commands that would replace it (``dmlkit index build``).
"""

from __future__ import annotations

import base64
import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from dmlkit.index import load_index
from dmlkit.index.base import InconsistentIndexError  # (re-exported) a refused save
from dmlkit.service.limits import check_checkpoint_every
from dmlkit.service.wal import CorruptLogError, read_records
from dmlkit.service.wal import encode as _encode

#: the service's default most hits in one response (rows x k), ``ServiceConfig.max_results``
MAX_RESULTS = 100_000

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
    fcntl = None  # type: ignore[assignment]


class IndexInUseError(RuntimeError):
    """Another store (another ``dmlkit serve``) already holds this index directory."""


class RWLock:
    """Many readers or one writer; writers waiting block new readers (no starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _open_lock_file(path: Path) -> tuple[Any, bool]:
    """``(handle, created)``: ``path`` opened for locking, created when missing."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            return os.fdopen(fd, "a+b"), True
        except FileExistsError:
            pass
        try:  # no O_CREAT: a file removed since raises, and the loop creates it again
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue
        return os.fdopen(fd, "a+b"), False


def _same_file(handle: Any, path: Path) -> bool:
    """Whether the open ``handle`` is the file now at ``path`` (not one removed since)."""
    try:
        held, on_disk = os.fstat(handle.fileno()), os.stat(path)
    except OSError:
        return False
    return (held.st_ino, held.st_dev) == (on_disk.st_ino, on_disk.st_dev)


def _lock_path(index_dir: Path) -> Path:
    return index_dir.with_name(index_dir.name + ".lock")


def _in_use(path: Path, lock_path: Path) -> IndexInUseError:
    return IndexInUseError(
        f"the index {path} is already in use by another dmlkit serve (or another open "
        f"DurableIndex): {lock_path} is locked. Stop that server first; two servers on one "
        "index would hand out the same ids and lose acknowledged writes, and a server's "
        "checkpoint writes its own copy of the index over any other change")


def check_not_served(index_dir: str | Path) -> None:
    """Refuse (:class:`IndexInUseError`) an index directory that a store (a running
    ``dmlkit serve``) owns now, as a command that would replace it must: the server's
    checkpoint would write its own copy over the change.

    Tries the store's exclusive lock on ``INDEX_DIR.lock`` without waiting and releases it
    at once; a missing lock file (never created here) or an unlocked one (left by a store
    that died) means no store owns the directory.
    """
    path = Path(index_dir).resolve()
    lock_path = _lock_path(path)
    if fcntl is None:  # pragma: no cover - not POSIX: no cross-process lock to test
        return
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(path, lock_path) from None
    finally:
        os.close(fd)  # (releases the lock, when taken)


class DurableIndex:
    """An index directory plus its write-ahead log, safe for concurrent use.

    Parameters
    ----------
    index_dir : path
        A saved dmlkit index (``dmlkit index build``).
    checkpoint_every : int
        Writes between checkpoints.
    """

    def __init__(self, index_dir: str | Path, *, checkpoint_every: int = 1000) -> None:
        # resolved: the same index reached through a symlink or "..": one log, one lock
        self.path = Path(index_dir).resolve()
        self.wal_path = self.path.with_name(self.path.name + ".wal")
        self.lock_path = _lock_path(self.path)
        check_checkpoint_every(checkpoint_every)
        self.checkpoint_every = int(checkpoint_every)
        self.lock = RWLock()
        if not self.path.exists() and not self._swapped_dirs():
            raise FileNotFoundError(f"index directory not found: {self.path}")
        self._lock_file, self._made_lock = self._take_ownership()
        self._made_wal = False
        self._torn_at: int | None = None  # where a torn tail starts, cut at the first write
        try:
            self._recover_swapped_dir()
            self.index = load_index(self.path)
            # ids are never reused, even those of deleted items: the next id is kept in the
            # checkpoint's info and raised by every add the log replays
            self._next_id = max(int(self.index.info.get("next_id", 0)),
                                int(self.index.ids.max()) + 1 if self.index.ntotal else 0)
            #: log records applied on replay, and those skipped (already in the checkpoint,
            #: a delete of absent ids, or a record the index refuses)
            self.replayed, self.skipped = self._replay()
            self._made_wal = not self.wal_path.exists()
            # unbuffered: a failed write leaves no bytes behind in a buffer to reach the
            # log later, and cutting the log back is one ftruncate
            self._wal = open(self.wal_path, "ab", buffering=0)  # noqa: SIM115 - held for life
        except BaseException:
            self._give_up_lock()
            raise
        self._since_checkpoint = self.replayed + self.skipped

    # -- ownership ------------------------------------------------------------------------
    def _take_ownership(self) -> tuple[Any, bool]:
        """``(open lock file, whether this store created it)``, holding an exclusive lock
        on the file on disk (else IndexInUseError)."""
        for _ in range(100):
            handle, made = _open_lock_file(self.lock_path)
            if fcntl is None:
                return handle, made
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()  # never removed here: its owner removes it
                raise _in_use(self.path, self.lock_path) from None
            if _same_file(handle, self.lock_path):
                return handle, made
            handle.close()  # its owner removed it before we locked it: lock the new one
        raise IndexInUseError(f"{self.lock_path} keeps being removed and made again by other "
                              "stores; stop the other dmlkit serve on this index first")

    def _give_up_lock(self, *, remove: bool = False) -> None:
        """Release the lock, removing the lock file first when this store created it (or
        ``remove``: a store closed cleanly removes one a dead owner left)."""
        if self._made_lock or remove:
            with contextlib.suppress(OSError):
                self.lock_path.unlink()
        self._lock_file.close()

    # -- recovery -------------------------------------------------------------------------
    def _swapped_dirs(self) -> list[Path]:
        return sorted(self.path.parent.glob(f".{self.path.name}.old-*"))

    def _recover_swapped_dir(self) -> None:
        """A crash inside an atomic index save can leave only ``.NAME.old-PID``: restore it."""
        if self.path.exists():
            return
        olds = self._swapped_dirs()
        if not olds:
            raise FileNotFoundError(f"index directory not found: {self.path}")
        os.replace(olds[-1], self.path)

    def _replay(self) -> tuple[int, int]:
        """Apply the log onto the checkpoint: ``(applied, skipped)`` record counts."""
        if not self.wal_path.exists():
            return 0, 0
        applied, skipped, good_bytes = 0, 0, 0
        # a torn last line (never acknowledged) is left out; a bad line before others
        # raises CorruptLogError, the log untouched
        for number, record, size in read_records(self.wal_path):
            try:
                changed = self._apply(record)
            except (KeyError, TypeError, ValueError, NotImplementedError) as err:
                print(f"warning: {self.wal_path}: record {number} "
                      f"({record.get('op')!r}) cannot be applied and is skipped: {err}",
                      file=sys.stderr)
                changed = False
            applied += changed
            skipped += not changed
            good_bytes += size
        if good_bytes != self.wal_path.stat().st_size:
            self._torn_at = good_bytes  # cut before the first write appends after it
        return applied, skipped

    def _apply(self, record: dict[str, Any]) -> bool:
        """Apply one write; False when it changes nothing (replayed onto a checkpoint
        that holds it already: an add of present ids, a delete of absent ones)."""
        ids = np.asarray(record["ids"], dtype=np.int64)
        if record["op"] == "add":
            present = bool(np.isin(ids, self.index.ids).any())  # already in the checkpoint
            if not present:
                raw = base64.b64decode(record["vectors"])
                x = np.frombuffer(raw, dtype=np.float32).reshape(len(ids), self.index.dim)
                labels = record.get("labels")
                self.index.add(x, ids, labels=labels, payloads=record.get("payloads"))
            if ids.size:  # after a refused add nothing is taken
                self._next_id = max(self._next_id, int(ids.max()) + 1)
            return not present
        if record["op"] == "delete":
            return self.index.remove(ids) > 0
        raise ValueError(f"unknown operation {record['op']!r}")

    def _log(self, record: dict[str, Any]) -> int:
        """Append ``record`` to the log and fsync it; returns the log's size before it.
        When any step fails the log is cut back to that size (and the error raised), so
        no part of an unacknowledged write stays in it for a replay to bring back."""
        try:  # a record JSON cannot hold raises before anything is written
            line = _encode(record)
        except ValueError as err:  # (NaN or an infinity among the payloads, as the index says)
            raise ValueError(f"payloads must be plain JSON with finite numbers (use null or a "
                             f"string for NaN or infinity): {err}") from None
        fd = self._wal.fileno()
        if self._torn_at is not None:
            os.ftruncate(fd, self._torn_at)
            self._torn_at = None
        start = os.fstat(fd).st_size
        try:
            view = memoryview(line)
            while view:
                view = view[self._wal.write(view) or 0:]
            os.fsync(fd)
        except BaseException:
            self._cut_log(start)
            raise
        return start

    def _cut_log(self, size: int) -> None:
        """Cut the log back to ``size`` bytes (a write not acknowledged); when even that
        fails, the next write cuts it first."""
        try:
            os.ftruncate(self._wal.fileno(), size)
            os.fsync(self._wal.fileno())
        except OSError:
            self._torn_at = size

    # -- operations -----------------------------------------------------------------------
    def add(self, x: np.ndarray, *, payloads: list[Any] | None = None,
            labels: list[int] | None = None) -> np.ndarray:
        """Add rows ``x`` ``(n, dim)``; durable when this returns their ids.

        Logged first, then applied: a failed log write (``OSError``) changes nothing, and
        an add the index refuses (a bad label, non-JSON payloads) is cut from the log."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        with self.lock.write():
            ids = np.arange(self._next_id, self._next_id + len(x), dtype=np.int64)
            record = {"op": "add", "ids": ids.tolist(),
                      "vectors": base64.b64encode(x.tobytes()).decode(),
                      "payloads": payloads, "labels": labels}
            self._log_then_apply(record)
            self._after_write()
        return ids

    def delete(self, item_id: int) -> bool:
        """Delete one item; False (nothing logged) when the id is unknown. Logged first,
        then applied: an index that cannot remove (an HNSW graph) raises
        ``NotImplementedError`` and the record is cut from the log."""
        with self.lock.write():
            if not np.isin(item_id, self.index.ids):
                return False
            self._log_then_apply({"op": "delete", "ids": [int(item_id)]})
            self._after_write()
        return True

    def _log_then_apply(self, record: dict[str, Any]) -> None:
        start = self._log(record)  # (an OSError here: nothing changed anywhere)
        next_id = self._next_id
        try:
            self._apply(record)  # an index refuses before it changes anything
        except BaseException:
            self._next_id = next_id
            self._cut_log(start)
            raise

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, list[list[Any]]]:
        """``(scores, ids, metadata)`` of the ``k`` nearest items of each query."""
        with self.lock.read():
            scores, ids = self.index.search(q, k)
            meta = [self.index.metadata(row) for row in ids]
        return scores, ids, meta

    def nearest_labelled(self, q: np.ndarray, first_depth: int = 32, *,
                         max_results: int = MAX_RESULTS,
                         ) -> list[tuple[float, int, int | None]]:
        """``(score, id, label)`` of each query's nearest *labelled* item.

        The rows still without one are searched deeper (4 times deeper each round) up to
        ``max_results // len(q)`` neighbours per row, so no search holds more than
        ``max_results`` hits whatever the share of unlabelled items; a row whose nearest
        labelled item is not within that depth gets ``(nan, -1, None)``, as when the index
        holds no labelled item.
        """
        with self.lock.read():
            out: list[tuple[float, int, int | None]] = [(float("nan"), -1, None)] * len(q)
            if not len(q) or not self.index.num_labelled:
                return out
            cap = min(max(1, max_results // len(q)), self.index.ntotal)
            todo = np.arange(len(q))
            depth = min(first_depth, cap)
            while True:
                scores, ids = self.index.search(q[todo], depth)  # (rows, depth)
                labels = self.index.labels_of(ids.reshape(-1)).reshape(ids.shape)
                hit = (labels >= 0) & (ids >= 0)
                found = hit.any(1)
                for row in np.flatnonzero(found):
                    col = int(hit[row].argmax())
                    out[todo[row]] = (float(scores[row, col]), int(ids[row, col]),
                                      int(labels[row, col]))
                todo = todo[~found]
                if not todo.size or depth >= cap:
                    return out
                depth = min(4 * depth, cap)

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def _after_write(self) -> None:
        self._since_checkpoint += 1
        if self._since_checkpoint >= self.checkpoint_every:
            try:
                self._checkpoint_locked()
            except InconsistentIndexError as err:  # the write itself is in the log
                print(f"warning: {err}", file=sys.stderr)

    def checkpoint(self) -> None:
        """Save the index atomically and empty the log."""
        with self.lock.write():
            self._checkpoint_locked()

    def _checkpoint_locked(self) -> None:
        self.index.info = {**self.index.info, "next_id": self._next_id}
        try:
            self.index.save(self.path)  # refuses (writing nothing) rows no id describes
        except InconsistentIndexError as err:
            raise InconsistentIndexError(
                f"refusing to checkpoint {self.path}: the index in memory holds {err.rows} "
                f"vector rows for {err.ids} ids; the last checkpoint and the log "
                f"{self.wal_path} are kept, and a restart recovers from them",
                err.rows, err.ids) from None
        self._wal.truncate(0)
        self._wal.seek(0)
        os.fsync(self._wal.fileno())
        self._torn_at = None
        self._since_checkpoint = 0

    def close(self, *, checkpoint: bool = True) -> None:
        """Checkpoint (unless told not to: the log keeps every write), close the log and
        give the index directory up to other stores.

        The checkpoint saves the index only when it changed since the last one (or the log
        holds bytes), so a store that wrote nothing leaves the directory as it was. The
        log, when empty and this store created it, and the lock file, when this store
        created it, are removed (before the lock is released): a store closed without a
        checkpoint leaves the folder as it found it. Closed cleanly with a checkpoint, it
        also removes the lock file and the log it found (a dead owner's, its records
        replayed into that checkpoint)."""
        clean = False
        try:
            if checkpoint:
                with self.lock.write():
                    if self._since_checkpoint or self._log_size():
                        self._checkpoint_locked()
                clean = True
        finally:
            try:
                self._wal.close()
                if ((self._made_wal or clean)  # (clean: whatever it held is checkpointed)
                        and self.wal_path.stat().st_size == 0):
                    self.wal_path.unlink()
            except OSError:
                pass  # (a leftover empty log blocks nothing)
            finally:
                self._give_up_lock(remove=clean)

    def _log_size(self) -> int:
        self._wal.flush()
        return os.fstat(self._wal.fileno()).st_size


__all__ = ["MAX_RESULTS", "CorruptLogError", "DurableIndex", "InconsistentIndexError",
           "IndexInUseError", "RWLock", "check_not_served"]
