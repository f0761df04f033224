"""A refused ``dmlkit serve`` leaves the index's folder exactly as it was (no empty log, no
lock file), a later ``dmlkit index build`` there is not blocked, and a log holding writes
still blocks it and is kept byte for byte."""

from __future__ import annotations

import os
from contextlib import nullcontext

import numpy as np
import pytest
from test_kit_guard_kit_fingerprint import TINY
from typer.testing import CliRunner

from dmlkit.cli.main import app

pytest.importorskip("fastapi", reason="the service tests need fastapi (dmlkit[serve])")

runner = CliRunner()
KEY = "g" * 24 + "-guard-key"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs of one config with other seeds (other weights), and an API key file."""
    from dmlkit.config import Config
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("guard_serve")
    for name, seed in (("run", 0), ("other", 7)):
        cfg = {**TINY, "training": {**TINY["training"], "seed": seed}}
        train_run(Config.from_dict(cfg), root / name, log=lambda *a: None)
    (root / "keys.txt").write_text(KEY + "\n")
    return root


def listing(folder) -> dict[str, tuple[int, bytes | None]]:
    """Every entry under ``folder`` (recursively): its size and, for files, its bytes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, folder)
            with open(path, "rb") if os.path.isfile(path) else nullcontext() as f:
                out[rel] = (os.path.getsize(path), None if f is None else f.read())
    return out


def serve(runs, index, *extra: str):
    return runner.invoke(app, ["serve", "--index", str(index), "--api-keys-file",
                               str(runs / "keys.txt"), "--port", "0", *extra])


def error_line(res) -> str:
    lines = [s for s in res.stderr.splitlines() if s.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


def build(source, out):
    return runner.invoke(app, ["index", "build", str(source), "--out", str(out)])


def test_a_serve_refused_for_another_model_leaves_the_folder_as_it_was(runs, tmp_path):
    folder = tmp_path / "f"
    assert build(runs / "other", folder / "idx").exit_code == 0
    before = listing(folder)
    assert sorted(before) == sorted(k for k in before if k.startswith("idx"))
    res = serve(runs, folder / "idx", "--run", str(runs / "run"))
    assert res.exit_code == 1 and "another model" in error_line(res)
    assert listing(folder) == before  # no idx.wal, no idx.lock
    # rebuilding with the served run there is not blocked, and then serving is not refused
    res = build(runs / "run", folder / "idx")
    assert res.exit_code == 0, res.output
    assert sorted(os.listdir(folder)) == ["idx"]


def test_a_serve_refused_for_a_bad_verifier_leaves_the_folder_as_it_was(runs, tmp_path):
    assert build(runs / "run", tmp_path / "idx").exit_code == 0
    before = listing(tmp_path)
    res = serve(runs, tmp_path / "idx", "--run", str(runs / "run"), "--verifier",
                str(tmp_path / "no_such_kit"))
    assert res.exit_code == 1
    error_line(res)
    assert listing(tmp_path) == before


def test_a_refused_serve_keeps_a_pending_log_byte_for_byte_and_it_still_blocks_a_build(
        runs, tmp_path):
    from dmlkit.service import DurableIndex

    assert build(runs / "other", tmp_path / "idx").exit_code == 0
    store = DurableIndex(tmp_path / "idx")
    (item,) = store.add(np.ones((1, 8), np.float32))
    store.delete(int(item) - 1)
    store.close(checkpoint=False)  # as a killed server leaves it: the writes are logged
    with open(tmp_path / "idx.wal", "ab") as f:
        f.write(b'deadbeef {"op": "add", "ids": [')  # and a torn, unacknowledged tail
    before = listing(tmp_path)
    assert before["idx.wal"][0] > 0 and "idx.lock" not in before
    res = serve(runs, tmp_path / "idx", "--run", str(runs / "run"))
    assert res.exit_code == 1 and "another model" in error_line(res)
    assert listing(tmp_path) == before  # the torn tail is not even cut
    res = build(runs / "run", tmp_path / "idx")
    assert res.exit_code != 0 and "holds writes" in error_line(res)
    # served with its own model, the log is replayed (the torn tail cut) and checkpointed
    again = DurableIndex(tmp_path / "idx")
    assert again.replayed == 2
    again.close()
    # the log it found, its records checkpointed, is removed by the clean stop
    assert sorted(os.listdir(tmp_path)) == ["idx"]
    assert build(runs / "run", tmp_path / "idx").exit_code == 0


def test_files_the_store_found_are_kept(tmp_path):
    """A lock file and an empty log that were there before are not the store's to remove."""
    from dmlkit.index import ExactIndex
    from dmlkit.service import DurableIndex

    index = ExactIndex(4)
    index.add(np.eye(4, dtype=np.float32))
    index.save(tmp_path / "idx")
    (tmp_path / "idx.lock").write_bytes(b"")
    (tmp_path / "idx.wal").write_bytes(b"")
    before = listing(tmp_path)
    DurableIndex(tmp_path / "idx").close(checkpoint=False)
    assert listing(tmp_path) == before


def test_a_store_refused_at_load_leaves_no_lock_file(tmp_path):
    from dmlkit.service import DurableIndex

    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "manifest.json").write_text("{not json")
    before = listing(tmp_path)
    with pytest.raises(ValueError):
        DurableIndex(tmp_path / "idx")
    assert listing(tmp_path) == before


def test_a_second_store_refused_as_in_use_leaves_the_owners_lock_file(tmp_path):
    from dmlkit.index import ExactIndex
    from dmlkit.service import DurableIndex
    from dmlkit.service.store import IndexInUseError

    index = ExactIndex(4)
    index.add(np.eye(4, dtype=np.float32))
    index.save(tmp_path / "idx")
    first = DurableIndex(tmp_path / "idx")
    with pytest.raises(IndexInUseError):
        DurableIndex(tmp_path / "idx")
    assert (tmp_path / "idx.lock").exists()  # still the first store's
    with pytest.raises(IndexInUseError):
        DurableIndex(tmp_path / "idx")
    first.close()
    assert sorted(os.listdir(tmp_path)) == ["idx"]


def test_a_lock_file_removed_before_it_was_locked_is_locked_again(tmp_path, monkeypatch):
    """Its owner removed the lock file between our open and our flock: the store notices
    (the file it locked is not the one on disk) and locks the file on disk."""
    from dmlkit.index import ExactIndex
    from dmlkit.service import DurableIndex
    from dmlkit.service import store as store_module

    fcntl = pytest.importorskip("fcntl")
    index = ExactIndex(4)
    index.add(np.eye(4, dtype=np.float32))
    index.save(tmp_path / "idx")
    real = store_module.fcntl.flock
    calls = []

    class _Fcntl:
        LOCK_EX, LOCK_NB = fcntl.LOCK_EX, fcntl.LOCK_NB

        @staticmethod
        def flock(fd, op):
            if not calls:  # the owner closes, removing its lock file
                (tmp_path / "idx.lock").unlink()
            calls.append(fd)
            return real(fd, op)

    monkeypatch.setattr(store_module, "fcntl", _Fcntl)
    store = DurableIndex(tmp_path / "idx")
    try:
        assert len(calls) == 2
        held = os.fstat(store._lock_file.fileno())
        on_disk = os.stat(tmp_path / "idx.lock")
        assert (held.st_ino, held.st_dev) == (on_disk.st_ino, on_disk.st_dev)
    finally:
        store.close(checkpoint=False)
