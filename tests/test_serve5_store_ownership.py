"""Who owns an index directory: ``check_not_served`` sees a live store's lock (in this
process or another) without creating or keeping one; a store closed cleanly after serving
removes the lock file and empty log a dead owner left, and saves nothing when nothing
changed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the service tests need fastapi (dmlkit[serve])")
pytest.importorskip("fcntl", reason="the index lock is a POSIX flock")


def make_index(folder):
    from dmlkit.index import ExactIndex

    index = ExactIndex(4)
    index.add(np.eye(4, dtype=np.float32))
    index.save(folder / "idx")
    return folder / "idx"


def state(folder) -> dict[str, tuple[int, int, int, bytes | None]]:
    """Every entry under ``folder``: inode, mtime, size and (files) bytes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            data = open(path, "rb").read() if os.path.isfile(path) else None  # noqa: SIM115
            out[os.path.relpath(path, folder)] = (st.st_ino, st.st_mtime_ns, st.st_size, data)
    return out


def test_an_index_without_a_lock_file_is_not_served_and_none_is_made(tmp_path):
    from dmlkit.service.store import check_not_served

    idx = make_index(tmp_path)
    check_not_served(idx)
    check_not_served(tmp_path / "never_built")
    assert sorted(os.listdir(tmp_path)) == ["idx"]


def test_a_live_store_in_this_process_is_seen_and_its_lock_kept(tmp_path):
    from dmlkit.service import DurableIndex
    from dmlkit.service.store import IndexInUseError, check_not_served

    idx = make_index(tmp_path)
    store = DurableIndex(idx)
    try:
        with pytest.raises(IndexInUseError, match=r"in use by another dmlkit serve.*idx\.lock"):
            check_not_served(idx)
        alias = tmp_path / "alias"
        alias.symlink_to(idx, target_is_directory=True)
        with pytest.raises(IndexInUseError):  # the same index reached another way
            check_not_served(alias)
        store.add(np.ones((1, 4), np.float32))  # the store still owns it: writes go on
    finally:
        store.close()
    check_not_served(idx)  # released
    again = DurableIndex(idx)  # and the check took no lock of its own
    assert again.ntotal == 5
    again.close()


def test_a_store_held_by_another_process_is_seen(tmp_path):
    from dmlkit.service.store import IndexInUseError, check_not_served

    idx = make_index(tmp_path)
    script = textwrap.dedent(f"""
        import sys
        from dmlkit.service import DurableIndex
        store = DurableIndex({str(idx)!r})
        print("held", flush=True)
        sys.stdin.readline()
        store.close()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(IndexInUseError, match="Stop that server first"):
            check_not_served(idx)
        assert (tmp_path / "idx.lock").exists()  # the owner's, untouched
    finally:
        proc.communicate("\n", timeout=60)
    assert proc.returncode == 0
    check_not_served(idx)


def test_a_lock_file_left_by_a_dead_owner_does_not_count_and_is_kept(tmp_path):
    from dmlkit.service.store import check_not_served

    idx = make_index(tmp_path)
    (tmp_path / "idx.lock").write_bytes(b"")
    before = state(tmp_path)
    check_not_served(idx)
    assert state(tmp_path) == before


def test_a_clean_close_after_a_crash_removes_the_dead_owners_lock_and_empty_log(tmp_path):
    from dmlkit.service import DurableIndex

    idx = make_index(tmp_path)
    (tmp_path / "idx.lock").write_bytes(b"")  # as a server killed with kill -9 leaves them
    (tmp_path / "idx.wal").write_bytes(b"")
    DurableIndex(idx).close()  # restarted, served, stopped
    assert sorted(os.listdir(tmp_path)) == ["idx"]


def test_a_close_without_checkpoint_keeps_what_it_found(tmp_path):
    from dmlkit.service import DurableIndex

    idx = make_index(tmp_path)
    (tmp_path / "idx.lock").write_bytes(b"")
    (tmp_path / "idx.wal").write_bytes(b"")
    before = state(tmp_path)
    DurableIndex(idx).close(checkpoint=False)  # a refused start
    assert state(tmp_path) == before


def test_a_close_with_nothing_written_leaves_the_index_untouched(tmp_path):
    from dmlkit.service import DurableIndex

    idx = make_index(tmp_path)
    before = state(tmp_path)
    store = DurableIndex(idx)
    store.search(np.ones((1, 4), np.float32), 2)
    store.close()
    assert state(tmp_path) == before  # no new inodes, no next_id written


def test_a_close_after_writes_still_checkpoints(tmp_path):
    from dmlkit.index import load_index
    from dmlkit.service import DurableIndex

    idx = make_index(tmp_path)
    store = DurableIndex(idx)
    store.delete(0)
    store.close()
    assert load_index(idx).ntotal == 3
    assert sorted(os.listdir(tmp_path)) == ["idx"]


def test_a_torn_log_alone_is_checkpointed_away_on_a_clean_close(tmp_path):
    """A log holding only a torn, unacknowledged tail is emptied, and removed by the clean
    close."""
    from dmlkit.service import DurableIndex

    idx = make_index(tmp_path)
    (tmp_path / "idx.wal").write_bytes(b'deadbeef {"op": "add", "ids": [')
    store = DurableIndex(idx)
    assert (store.replayed, store.skipped) == (0, 0)
    store.close()
    assert not (tmp_path / "idx.wal").exists()
