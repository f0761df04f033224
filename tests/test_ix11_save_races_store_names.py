"""Saves of one index path from several threads or processes wait for each other and all
succeed; a failed swap puts the previous save back; an index built from an embedding
store keeps the class names, source paths and input description that a direct build
keeps; an empty index is reported at build and refused at search."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.index import ExactIndex, load_index

runner = CliRunner()


def _indexes(count: int, n: int = 100, dim: int = 4) -> list[ExactIndex]:
    out = []
    for i in range(count):
        ix = ExactIndex(dim)
        ix.add(np.random.default_rng(i).normal(size=(n + i, dim)).astype(np.float32))
        out.append(ix)
    return out


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


# -- saves of one path from several threads ------------------------------------------------
def test_thread_saves_of_one_path_all_succeed_and_leave_nothing_beside_it(tmp_path):
    path = tmp_path / "idx"
    indexes = _indexes(3)
    indexes[0].save(path)
    errors: list[str] = []

    def saver(ix: ExactIndex) -> None:
        for _ in range(5):
            try:
                ix.save(path)
            except Exception as err:  # noqa: BLE001  (every failure is collected)
                errors.append(f"{type(err).__name__}: {err}")

    for _ in range(15):
        threads = [threading.Thread(target=saver, args=(ix,)) for ix in indexes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert _siblings(path) == []  # no set-aside folder, no temporary, no lock file
    assert load_index(path).ntotal in {ix.ntotal for ix in indexes}
    indexes[1].save(path)  # later saves go on working
    assert load_index(path).ntotal == indexes[1].ntotal


def test_loads_during_thread_saves_each_read_one_whole_save(tmp_path):
    path = tmp_path / "idx"
    indexes = _indexes(2)
    indexes[0].save(path)
    sizes = {ix.ntotal for ix in indexes}
    done = threading.Event()
    failures: list[str] = []
    seen: set[int] = set()

    def saver(ix: ExactIndex) -> None:
        for _ in range(15):
            ix.save(path)

    def loader() -> None:
        while not done.is_set():
            try:
                ix = load_index(path)
            except Exception as err:  # noqa: BLE001
                failures.append(f"{type(err).__name__}: {err}")
                continue
            seen.add(ix.ntotal)
            if len(ix.ids) != ix.ntotal:
                failures.append("ids and vectors of two saves")

    reader = threading.Thread(target=loader)
    reader.start()
    savers = [threading.Thread(target=saver, args=(ix,)) for ix in indexes]
    for t in savers:
        t.start()
    for t in savers:
        t.join()
    done.set()
    reader.join()
    assert failures == [] and seen and seen <= sizes


def test_a_failed_swap_puts_the_previous_save_back(tmp_path, monkeypatch):
    from dmlkit.index import io

    path = tmp_path / "idx"
    first, second = _indexes(2)
    first.save(path)
    real_replace = os.replace

    def failing_replace(src, dst):  # noqa: ANN001, ANN202
        if ".tmp-" in Path(src).name:
            raise OSError(39, "Directory not empty", str(src), None, str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(io.os, "replace", failing_replace)
    with pytest.raises(OSError, match="Directory not empty"):
        second.save(path)
    monkeypatch.setattr(io.os, "replace", real_replace)
    assert _siblings(path) == []  # the previous save is back in place, nothing left aside
    assert load_index(path).ntotal == first.ntotal
    second.save(path)  # and the next save of the same process succeeds
    assert load_index(path).ntotal == second.ntotal and _siblings(path) == []


def test_a_set_aside_folder_of_this_process_is_put_back_by_the_next_save(tmp_path):
    path = tmp_path / "idx"
    first, second = _indexes(2)
    first.save(path)
    os.replace(path, tmp_path / f".idx.old-{os.getpid()}")  # a save that stopped mid-swap
    with pytest.warns(UserWarning, match="now put back"):
        second.save(path)
    assert load_index(path).ntotal == second.ntotal and _siblings(path) == []


# -- saves of one path from several processes ----------------------------------------------
_SAVER = """
import sys, time
import numpy as np
from dmlkit.index import ExactIndex
n = int(sys.argv[1])
ix = ExactIndex(4)
ix.add(np.random.default_rng(n).normal(size=(200 + n, 4)).astype(np.float32))
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
errors = []
for _ in range(40):
    try:
        ix.save(sys.argv[3])
    except Exception as err:
        errors.append(f"{type(err).__name__}: {err}"[:200])
print(len(errors), sorted(set(errors)))
"""


def test_process_saves_of_one_path_wait_for_each_other(tmp_path):
    path = tmp_path / "pc"
    _indexes(1)[0].save(path)
    start = time.time() + 4.0  # every process imported before the first save
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _SAVER, str(n), str(start), str(path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env) for n in range(3)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert all(out.strip().splitlines()[-1] == "0 []" for out in outputs), outputs
    assert _siblings(path) == []
    assert load_index(path).ntotal in {200, 201, 202}


def test_index_build_reports_a_file_system_error_in_one_line(tmp_path, monkeypatch):
    from dmlkit.index.base import BaseIndex

    np.save(tmp_path / "e.npy", np.ones((5, 4), np.float32))

    def failing_save(self, path):  # noqa: ANN001, ANN202
        raise OSError(39, "Directory not empty", str(path), None, str(path) + ".old")

    monkeypatch.setattr(BaseIndex, "save", failing_save)
    res = runner.invoke(app, ["index", "build", str(tmp_path / "e.npy"), "--out",
                              str(tmp_path / "ix")])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not empty" in lines[0]


# -- an index built from an embedding store ------------------------------------------------
@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A run trained on a small image folder of two named classes."""
    image = pytest.importorskip("PIL.Image")
    from test_search_queries import train_grey_folder_run

    root = tmp_path_factory.mktemp("folder_run")
    folder = root / "imgs"
    for name in ("cat", "dog"):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            seed = 10 * len(name) + i + (name == "dog") * 100
            pixels = (np.random.default_rng(seed).random((8, 8)) * 255).astype(np.uint8)
            image.fromarray(pixels).save(folder / name / f"{i}.png")
    train_grey_folder_run(folder, root / "run")
    return root


def _items(index) -> list[tuple]:  # noqa: ANN001
    return [(m["label"], m["path"], m["payload"]) for m in index.metadata(index.ids)]


@pytest.mark.parametrize("factory", ["exact", "Flat"])
def test_an_index_built_from_a_store_keeps_names_paths_and_inputs(folder_run, tmp_path,
                                                                  factory):
    pytest.importorskip("faiss")
    run, store = folder_run / "run", tmp_path / "st"
    res = runner.invoke(app, ["embed", str(run), "--data", "heldout", "--store", "--out",
                              str(store)])
    assert res.exit_code == 0, res.output
    for source, out in ((run, tmp_path / "direct"), (store, tmp_path / "from_store")):
        res = runner.invoke(app, ["index", "build", str(source), "--data", "heldout",
                                  "--out", str(out), "--factory", factory])
        assert res.exit_code == 0, res.output
    direct, built = load_index(tmp_path / "direct"), load_index(tmp_path / "from_store")
    items = _items(built)
    assert items == _items(direct)
    assert {payload["class"] for _, _, payload in items} <= {"cat", "dog"}
    assert all(path.endswith(".png") and Path(path).parent.name == payload["class"]
               for _, path, payload in items)
    keys = ("input_shape", "input_dtype", "input_range", "input_any_size")
    assert {k: built.info[k] for k in keys} == {k: direct.info[k] for k in keys}
    res = runner.invoke(app, ["search", str(tmp_path / "from_store"), "-q", items[0][1],
                              "-k", "1"])  # an image query: the input description is there
    assert res.exit_code == 0, res.output
    assert items[0][1] in res.output.splitlines()[2]


def test_build_index_from_store_passes_the_stores_names_and_paths_on(tmp_path):
    pytest.importorskip("faiss")
    from dmlkit.index.store import build_index_from_store, embed_to_store

    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    labels = np.array([0, 1, -1, 1, 0])
    paths = [f"/data/{i}.png" for i in range(5)]
    store = embed_to_store(lambda s, e: x[s:e], 5, 3, tmp_path / "s", labels=labels,
                           chunk_size=2, show_progress=False, class_names=["a", "b"],
                           paths=paths, input_info={"input_shape": [1, 8, 8]})
    reopened = type(store).open(tmp_path / "s")
    assert reopened.class_names == ["a", "b"] and reopened.paths == paths
    index = build_index_from_store(reopened, "Flat", chunk_size=2)
    assert _items(index) == [(0, paths[0], {"class": "a"}), (1, paths[1], {"class": "b"}),
                             (None, paths[2], None), (1, paths[3], {"class": "b"}),
                             (0, paths[4], {"class": "a"})]
    assert index.info["input_shape"] == [1, 8, 8]


def test_a_store_without_names_or_paths_still_builds(tmp_path):
    pytest.importorskip("faiss")
    from dmlkit.index.store import EmbeddingStore

    store = EmbeddingStore.create(tmp_path / "s", 4, 3, chunk_size=2)
    store.write(0, np.ones((2, 3), np.float32), np.array([0, 1]))
    store.write(2, np.zeros((2, 3), np.float32), np.array([1, -1]))
    (tmp_path / "s" / "items.json").unlink(missing_ok=True)  # as an older dmlkit wrote it
    assert EmbeddingStore.open(tmp_path / "s").class_names is None
    res = runner.invoke(app, ["index", "build", str(tmp_path / "s"), "--out",
                              str(tmp_path / "ix")])
    assert res.exit_code == 0, res.output
    index = load_index(tmp_path / "ix")
    assert [(m["label"], m["path"], m["payload"]) for m in index.metadata(index.ids)] == [
        (0, None, None), (1, None, None), (1, None, None), (None, None, None)]


# -- an index of no items ------------------------------------------------------------------
def test_search_of_an_empty_index_says_it_holds_no_items(tmp_path):
    ExactIndex(4).save(tmp_path / "ix")
    np.save(tmp_path / "q.npy", np.ones((2, 4), np.float32))
    res = runner.invoke(app, ["search", str(tmp_path / "ix"), "-q", str(tmp_path / "q.npy")])
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no items" in lines[0]


def test_index_build_of_no_rows_warns(tmp_path):
    np.save(tmp_path / "empty.npy", np.zeros((0, 4), np.float32))
    res = runner.invoke(app, ["index", "build", str(tmp_path / "empty.npy"), "--out",
                              str(tmp_path / "ix")])
    assert res.exit_code == 0, res.output
    assert "indexed 0 embeddings" in res.output
    assert any(line.startswith("warning: ") and "no items" in line
               for line in res.output.splitlines()), res.output


def test_index_build_of_an_empty_store_warns(tmp_path):
    pytest.importorskip("faiss")
    from dmlkit.index.store import EmbeddingStore

    store = EmbeddingStore.create(tmp_path / "s", 1, 3)
    store.manifest.update(count=0)  # a store of no rows
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(store.manifest))
    res = runner.invoke(app, ["index", "build", str(tmp_path / "s"), "--out",
                              str(tmp_path / "ix")])
    assert res.exit_code == 0, res.output
    assert any(line.startswith("warning: ") and "no items" in line
               for line in res.output.splitlines()), res.output
