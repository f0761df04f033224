"""The service's durable store: one owner per index directory, consistent checkpoints,
exact answers while searches and writes run in many threads, honest replay counts."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the service tests need fastapi (dmlkit[serve])")

KEY = "s" * 24 + "-store-key"


@pytest.fixture
def index_dir(tmp_path):
    from dmlkit.index import ExactIndex

    index = ExactIndex(8)
    index.add(np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32),
              labels=np.arange(40) % 4)
    index.save(tmp_path / "idx")
    return tmp_path / "idx"


def crash(store) -> None:
    """What the operating system does to a killed server: files closed, lock released."""
    store._wal.close()
    store._lock_file.close()


def test_a_second_store_on_one_index_directory_is_refused(index_dir):
    from dmlkit.service import DurableIndex
    from dmlkit.service.store import IndexInUseError

    first = DurableIndex(index_dir)
    with pytest.raises(IndexInUseError, match="is already in use"):
        DurableIndex(index_dir)
    alias = index_dir.parent / "alias"
    alias.symlink_to(index_dir, target_is_directory=True)
    with pytest.raises(IndexInUseError, match="is already in use"):  # the same index
        DurableIndex(alias)
    (a,) = first.add(np.ones((1, 8), np.float32))
    first.close()  # gives the directory up
    second = DurableIndex(index_dir)
    (b,) = second.add(np.ones((1, 8), np.float32))
    assert (a, b) == (40, 41) and second.ntotal == 42  # no id handed out twice
    second.close()


def test_a_second_dmlkit_serve_fails_at_start_and_replay_counts_only_applied_writes(
        index_dir, tmp_path):
    from dmlkit.service import DurableIndex

    (tmp_path / "keys.txt").write_text(KEY + "\n")
    cmd = [sys.executable, "-m", "dmlkit", "serve", "--index", str(index_dir),
           "--api-keys-file", str(tmp_path / "keys.txt"), "--port", "0"]
    store = DurableIndex(index_dir)
    store.add(np.ones((2, 8), np.float32))
    store.delete(3)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and f"the index {index_dir} is already in use" in out.stderr
    store.index.save(store.path)  # checkpointed, then killed before the log was emptied
    crash(store)
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert "serving 41 items (replayed 0 logged writes; 2 skipped" in line, line


def test_searches_in_many_threads_with_a_writer_stay_exact_and_restart(index_dir):
    from dmlkit.service import DurableIndex

    store = DurableIndex(index_dir, checkpoint_every=25)
    added: list[tuple[int, np.ndarray]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                store.search(rng.normal(size=(1, 8)).astype(np.float32), 3)
                store.nearest_labelled(rng.normal(size=(2, 8)).astype(np.float32))
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    readers = [threading.Thread(target=reader, args=(s,)) for s in range(6)]
    for t in readers:
        t.start()
    rng = np.random.default_rng(1)
    try:
        for _ in range(120):
            vec = (rng.normal(size=(1, 8)) * 3).astype(np.float32)
            (i,) = store.add(vec, labels=[7])
            added.append((int(i), vec[0]))
            _, ids, _ = store.search(vec, 1)  # found at once, under its own id
            assert int(ids[0, 0]) == i
    finally:
        stop.set()
        for t in readers:
            t.join()
    assert not errors, errors[:3]
    assert store.ntotal == 160 and store.index.vectors.shape[0] == 160
    vecs = np.stack([v for _, v in added])
    _, ids, _ = store.search(vecs, 1)
    assert ids[:, 0].tolist() == [i for i, _ in added]
    store.close()
    again = DurableIndex(index_dir)  # the checkpoint on shutdown is consistent
    assert again.ntotal == 160 and again.index.vectors.shape[0] == 160
    assert again.search(vecs, 1)[1][:, 0].tolist() == [i for i, _ in added]
    again.close()


def test_a_checkpoint_refuses_an_inconsistent_index_and_keeps_the_log(index_dir):
    import torch

    from dmlkit.service import DurableIndex
    from dmlkit.service.store import InconsistentIndexError

    store = DurableIndex(index_dir)
    (new,) = store.add(np.full((1, 8), 5.0, np.float32))
    wal = store.wal_path.read_bytes()
    saved = (index_dir / "vectors.npy").read_bytes()
    index = store.index
    index._data = torch.cat([index.vectors, index.vectors[:3]])  # rows no id describes
    with pytest.raises(InconsistentIndexError, match="44 vector rows for 41 ids"):
        store.close()
    assert (index_dir / "vectors.npy").read_bytes() == saved  # nothing corrupt persisted
    assert store.wal_path.read_bytes() == wal  # the acknowledged write is still logged
    again = DurableIndex(index_dir)  # the lock was released; the log replays
    assert again.replayed == 1 and again.ntotal == 41
    assert again.search(np.full((1, 8), 5.0, np.float32), 1)[1][0, 0] == new
    again.close()
