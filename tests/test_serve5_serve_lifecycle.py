"""``dmlkit serve`` that cannot listen changes nothing and says so without claiming to
serve; a server killed with ``kill -9``, restarted and stopped leaves no lock file or empty
log behind, and a server that wrote nothing leaves the index directory untouched."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the service tests need fastapi (dmlkit[serve])")
pytest.importorskip("fcntl", reason="the index lock is a POSIX flock")

from test_serve5_store_ownership import state  # noqa: E402

KEY = "s" * 24 + "-serve5-key"




@pytest.fixture
def folder(tmp_path):
    from dmlkit.index import ExactIndex

    index = ExactIndex(4)
    index.add(np.eye(4, dtype=np.float32))
    (tmp_path / "f").mkdir()
    index.save(tmp_path / "f" / "idx")
    (tmp_path / "keys.txt").write_text(KEY + "\n")
    return tmp_path


def command(root, port: int) -> list[str]:
    return [sys.executable, "-m", "dmlkit", "serve", "--index", str(root / "f" / "idx"),
            "--api-keys-file", str(root / "keys.txt"), "--port", str(port)]


def test_a_serve_that_cannot_listen_leaves_the_folder_byte_identical(folder):
    from dmlkit.service import DurableIndex

    store = DurableIndex(folder / "f" / "idx")  # a pending log (a killed server's writes)
    store.add(np.ones((1, 4), np.float32))
    store.close(checkpoint=False)
    (folder / "f" / "idx.lock").write_bytes(b"")  # and its lock file
    before = state(folder / "f")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = subprocess.run(command(folder, port), capture_output=True, text=True,
                             timeout=120)
    assert out.returncode == 1, out.stderr
    assert "serving" not in out.stderr  # nothing was served
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0], out.stderr
    assert "Traceback" not in out.stderr
    assert state(folder / "f") == before  # no checkpoint, the log not replayed into it


def test_a_crashed_server_restarted_and_stopped_leaves_no_lock_or_empty_log(folder):
    before = state(folder / "f")
    first = subprocess.Popen(command(folder, 0), stderr=subprocess.PIPE, text=True)
    try:
        line = first.stderr.readline()
        assert line.startswith("serving 4 items") and "http://127.0.0.1:0" not in line, line
    finally:
        first.kill()  # kill -9: no clean shutdown
        first.wait(30)
        first.stderr.close()
    assert sorted(os.listdir(folder / "f")) == ["idx", "idx.lock", "idx.wal"]
    second = subprocess.Popen(command(folder, 0), stderr=subprocess.PIPE, text=True)
    try:
        line = second.stderr.readline()
        assert line.startswith("serving 4 items"), line
    finally:
        second.send_signal(signal.SIGTERM)
        rc = second.wait(60)
        rest = second.stderr.read()
        second.stderr.close()
    assert rc == 0 and "error" not in rest, rest
    assert sorted(os.listdir(folder / "f")) == ["idx"]
    # neither server wrote: the index directory is the one that was built, untouched
    assert state(folder / "f") == before
