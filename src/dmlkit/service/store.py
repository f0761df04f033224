"""A durable, concurrently readable index for the service: write-ahead log + checkpoints.

Every write (add, delete) is applied to the index in memory, then appended to
``INDEX_DIR.wal`` as one line, flushed and fsynced *before* it is acknowledged; a write
the index refuses (a bad label, a delete an HNSW graph cannot do) is never logged, and a
write whose logging fails is undone. A line is ``CRC32 JSON`` of the record, so a line
torn by a crash is recognised and dropped on replay (it was never acknowledged); a record
that cannot be applied on replay is skipped with a warning instead of stopping the
service from starting. Every ``checkpoint_every`` writes, and on shutdown, the index is saved
atomically (:meth:`~dmlkit.index.BaseIndex.save`) and the log emptied. Replay is
idempotent (an add whose ids are present, or a delete of absent ids, is skipped), so a
crash between the checkpoint and the log truncation loses and duplicates nothing.

Readers (searches) share a read lock and writers take it exclusively, so no search sees
an index in the middle of an update.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from dmlkit.index import load_index


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


def _encode(record: dict[str, Any]) -> bytes:
    body = json.dumps(record, separators=(",", ":"))
    return f"{zlib.crc32(body.encode()):08x} {body}\n".encode()


def _decode(line: bytes) -> dict[str, Any] | None:
    try:
        text = line.decode()
        crc, body = text.rstrip("\n").split(" ", 1)
        if not text.endswith("\n") or int(crc, 16) != zlib.crc32(body.encode()):
            return None
        return json.loads(body)
    except (UnicodeDecodeError, ValueError):
        return None


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
        self.path = Path(index_dir)
        self.wal_path = self.path.with_name(self.path.name + ".wal")
        self.checkpoint_every = int(checkpoint_every)
        self.lock = RWLock()
        self._recover_swapped_dir()
        self.index = load_index(self.path)
        # ids are never reused, even those of deleted items: the next id is kept in the
        # checkpoint's info and raised by every add the log replays
        self._next_id = max(int(self.index.info.get("next_id", 0)),
                            int(self.index.ids.max()) + 1 if self.index.ntotal else 0)
        self.replayed = self._replay()
        self._wal = open(self.wal_path, "ab")  # noqa: SIM115 - held for the service's life
        self._since_checkpoint = self.replayed

    # -- recovery -------------------------------------------------------------------------
    def _recover_swapped_dir(self) -> None:
        """A crash inside an atomic index save can leave only ``.NAME.old-PID``: restore it."""
        if self.path.exists():
            return
        olds = sorted(self.path.parent.glob(f".{self.path.name}.old-*"))
        if not olds:
            raise FileNotFoundError(f"index directory not found: {self.path}")
        os.replace(olds[-1], self.path)

    def _replay(self) -> int:
        if not self.wal_path.exists():
            return 0
        applied, good_bytes = 0, 0
        with open(self.wal_path, "rb") as f:
            for number, line in enumerate(f, 1):
                record = _decode(line)
                if record is None:  # a torn tail: never acknowledged
                    break
                try:
                    self._apply(record)
                    applied += 1
                except (KeyError, TypeError, ValueError, NotImplementedError) as err:
                    print(f"warning: {self.wal_path}: record {number} "
                          f"({record.get('op')!r}) cannot be applied and is skipped: {err}",
                          file=sys.stderr)
                good_bytes += len(line)
        if good_bytes != self.wal_path.stat().st_size:
            with open(self.wal_path, "r+b") as f:
                f.truncate(good_bytes)
                os.fsync(f.fileno())
        return applied

    def _apply(self, record: dict[str, Any]) -> None:
        ids = np.asarray(record["ids"], dtype=np.int64)
        if record["op"] == "add":
            if np.isin(ids, self.index.ids).any():
                if ids.size:
                    self._next_id = max(self._next_id, int(ids.max()) + 1)
                return  # already in the checkpoint
            raw = base64.b64decode(record["vectors"])
            x = np.frombuffer(raw, dtype=np.float32).reshape(len(ids), self.index.dim)
            labels = record.get("labels")
            self.index.add(x, ids, labels=labels, payloads=record.get("payloads"))
            if ids.size:
                self._next_id = max(self._next_id, int(ids.max()) + 1)
        elif record["op"] == "delete":
            self.index.remove(ids)

    def _log(self, record: dict[str, Any]) -> None:
        self._wal.write(_encode(record))
        self._wal.flush()
        os.fsync(self._wal.fileno())

    # -- operations -----------------------------------------------------------------------
    def add(self, x: np.ndarray, *, payloads: list[Any] | None = None,
            labels: list[int] | None = None) -> np.ndarray:
        """Add rows ``x`` ``(n, dim)``; durable when this returns their ids."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        with self.lock.write():
            ids = np.arange(self._next_id, self._next_id + len(x), dtype=np.int64)
            record = {"op": "add", "ids": ids.tolist(),
                      "vectors": base64.b64encode(x.tobytes()).decode(),
                      "payloads": payloads, "labels": labels}
            json.dumps(payloads)  # non-JSON payloads fail before anything is changed
            self._apply(record)  # a write the index refuses is neither logged nor applied
            try:
                self._log(record)
            except BaseException:
                self.index.remove(ids)  # not durable: not acknowledged, not kept
                raise
            self._after_write()
        return ids

    def delete(self, item_id: int) -> bool:
        """Delete one item; False (nothing logged) when the id is unknown."""
        with self.lock.write():
            if not np.isin(item_id, self.index.ids):
                return False
            record = {"op": "delete", "ids": [int(item_id)]}
            self._apply(record)  # an index that cannot remove raises before anything is logged
            self._log(record)
            self._after_write()
        return True

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, list[list[Any]]]:
        """``(scores, ids, metadata)`` of the ``k`` nearest items of each query."""
        with self.lock.read():
            scores, ids = self.index.search(q, k)
            meta = [self.index.metadata(row) for row in ids]
        return scores, ids, meta

    def nearest_labelled(self, q: np.ndarray,
                         first_depth: int = 32) -> list[tuple[float, int, int | None]]:
        """``(score, id, label)`` of each query's nearest *labelled* item (``id`` -1 and
        ``label`` None when the index holds none); searched deeper until one is found."""
        with self.lock.read():
            labelled = self.index.num_labelled
            out: list[tuple[float, int, int | None]] = [(float("nan"), -1, None)] * len(q)
            todo = np.arange(len(q)) if labelled else np.arange(0)
            depth = min(first_depth, self.index.ntotal)
            while todo.size:
                scores, ids = self.index.search(q[todo], depth)
                labels = self.index.labels_of(ids.reshape(-1)).reshape(ids.shape)
                hit = (labels >= 0) & (ids >= 0)
                for row in np.flatnonzero(hit.any(1)):
                    col = int(hit[row].argmax())
                    out[todo[row]] = (float(scores[row, col]), int(ids[row, col]),
                                      int(labels[row, col]))
                todo = todo[~hit.any(1)]
                if depth >= self.index.ntotal:
                    break
                depth = min(4 * depth, self.index.ntotal)
        return out

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def _after_write(self) -> None:
        self._since_checkpoint += 1
        if self._since_checkpoint >= self.checkpoint_every:
            self._checkpoint_locked()

    def checkpoint(self) -> None:
        """Save the index atomically and empty the log."""
        with self.lock.write():
            self._checkpoint_locked()

    def _checkpoint_locked(self) -> None:
        self.index.info = {**self.index.info, "next_id": self._next_id}
        self.index.save(self.path)
        self._wal.truncate(0)
        self._wal.seek(0)
        os.fsync(self._wal.fileno())
        self._since_checkpoint = 0

    def close(self) -> None:
        """Checkpoint and close the log."""
        self.checkpoint()
        self._wal.close()


__all__ = ["DurableIndex", "RWLock"]
