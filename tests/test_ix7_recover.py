"""Loading an index whose save was killed right after it set the previous save aside
puts that save back; a faiss.index faiss cannot read is one line without faiss's C++
location."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

KILLED_SAVE = textwrap.dedent("""
    import os, sys
    import numpy as np
    from dmlkit.index import ExactIndex
    import dmlkit.index.io as io

    x = np.random.default_rng(0).normal(size=(100, 8)).astype(np.float32)
    index = ExactIndex(8)
    index.add(x)
    if sys.argv[2] == "first":
        index.save(sys.argv[1])
        sys.exit()
    real = os.replace

    def replace_then_die(src, dst):
        real(src, dst)
        os._exit(9)  # as kill -9 right after the old index is set aside

    io.os.replace = replace_then_die
    index.add(x[:5])
    index.save(sys.argv[1])
""")


def _run(script, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_save_killed_mid_swap_is_recovered_on_load(tmp_path):
    from dmlkit.index import load_index

    script = tmp_path / "save.py"
    script.write_text(KILLED_SAVE)
    target = tmp_path / "k" / "idx"
    assert _run(script, target, "first").returncode == 0
    assert _run(script, target, "second").returncode == 9
    left = sorted(p.name for p in target.parent.iterdir())
    assert not target.exists() and any(n.startswith(".idx.old-") for n in left), left
    with pytest.warns(UserWarning, match=r"save into it was interrupted .*\.idx\.old-\d+, "
                      "which is now put back"):
        index = load_index(target)
    assert index.ntotal == 100  # the previous, complete save
    assert not any(p.name.startswith(".idx.old-") for p in target.parent.iterdir())
    index.add(np.zeros((1, 8), np.float32))
    index.save(target)  # and the next save clears the killed one's temporary directory
    assert sorted(p.name for p in target.parent.iterdir()) == ["idx"]


def test_a_set_aside_save_of_a_running_writer_is_named(tmp_path):
    from dmlkit.index import ExactIndex, load_index
    from dmlkit.index.io import IndexFormatError

    index = ExactIndex(4)
    index.add(np.ones((2, 4), np.float32))
    aside = tmp_path / f".idx.old-{os.getpid()}"  # a save in progress (this process)
    index.save(aside)
    with pytest.raises(IndexFormatError, match=rf"previous save is set aside in .*"
                       rf"\.idx\.old-{os.getpid()} .* move it back to"):
        load_index(tmp_path / "idx")
    assert aside.is_dir() and not (tmp_path / "idx").exists()


def test_an_unreadable_faiss_index_is_one_line_without_cpp_locations(tmp_path):
    pytest.importorskip("faiss")
    from dmlkit.index import FaissIndex, load_index
    from dmlkit.index.io import IndexFormatError

    index = FaissIndex(8, "l2", "Flat")
    index.add(np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32))
    index.save(tmp_path / "idx")
    garbage = os.urandom(5000)
    (tmp_path / "idx" / "faiss.index").write_bytes(garbage)  # with a manifest that vouches
    mpath = tmp_path / "idx" / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["files"]["faiss.index"] = {"sha256": hashlib.sha256(garbage).hexdigest(),
                                        "bytes": len(garbage)}
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError) as err:
        load_index(tmp_path / "idx")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'idx' / 'faiss.index'} is not a faiss index: ")
    assert "Error in" not in message and ".cpp" not in message and "\n" not in message
