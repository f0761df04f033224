"""``dmlkit index build`` never deletes what it does not own, and reads labels and class
names of embedding files as ``dmlkit evaluate`` does; the index refuses bad labels
naming the labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.index import ExactIndex, load_index
from dmlkit.index.store import embed_to_store

runner = CliRunner()
RNG = np.random.default_rng(0)
EMB = RNG.standard_normal((5, 8)).astype(np.float32)


def _store(path):
    x = RNG.standard_normal((40, 4)).astype(np.float32)
    embed_to_store(lambda a, b: x[a:b], 40, 4, path, labels=np.arange(40) % 3,
                   chunk_size=16, show_progress=False)
    return sorted(p.name for p in path.iterdir())


def _one_line_error(res, *words):
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = [s for s in res.stderr.splitlines() if s.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_save_refuses_to_replace_a_store_or_another_format(tmp_path):
    files = _store(tmp_path / "store")
    index = ExactIndex(4)
    index.add(RNG.standard_normal((3, 4)).astype(np.float32))
    with pytest.raises(FileExistsError, match="dmlkit-embedding-store"):
        index.save(tmp_path / "store")
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == files
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "manifest.json").write_text(json.dumps({"format": "dmlkit-kit"}))
    with pytest.raises(FileExistsError, match="dmlkit-kit"):
        index.save(kit)
    (tmp_path / "empty").mkdir()
    index.save(tmp_path / "empty")  # an empty directory, or an index, may be replaced
    index.save(tmp_path / "empty")
    assert load_index(tmp_path / "empty").ntotal == 3


def test_build_refuses_its_own_store_as_out(tmp_path):
    store = tmp_path / "store"
    files = _store(store)
    res = runner.invoke(app, ["index", "build", str(store), "--out", str(store)])
    _one_line_error(res, str(store), "--out")
    other = tmp_path / "other"
    _store(other)
    res = runner.invoke(app, ["index", "build", str(store), "--out", str(other)])
    _one_line_error(res, str(other), "dmlkit-embedding-store")
    assert sorted(p.name for p in store.iterdir()) == files
    assert sorted(p.name for p in other.iterdir()) == files


def test_build_refuses_the_directory_holding_its_source(tmp_path):
    ix = tmp_path / "ix"
    index = ExactIndex(8)
    index.add(EMB)
    index.save(ix)
    np.savez(ix / "emb.npz", embeddings=EMB)  # the source inside an index directory
    res = runner.invoke(app, ["index", "build", str(ix / "emb.npz"), "--out", str(ix)])
    _one_line_error(res, "emb.npz")
    assert (ix / "emb.npz").is_file()


def _build(tmp_path, name, **arrays):
    np.savez(tmp_path / f"{name}.npz", **arrays)
    return runner.invoke(app, ["index", "build", str(tmp_path / f"{name}.npz"), "--out",
                               str(tmp_path / f"idx_{name}")])


def test_class_names_skip_unlabelled_items_and_refuse_labels_past_them(tmp_path):
    names = np.array(list("abcd"))
    res = _build(tmp_path, "neg", embeddings=EMB, labels=np.array([0, 1, -1, 2, 3]),
                 class_names=names)
    assert res.exit_code == 0, res.output
    meta = load_index(tmp_path / "idx_neg").metadata([0, 2, 4])
    assert [m["payload"] for m in meta] == [{"class": "a"}, None, {"class": "d"}]
    assert meta[1]["label"] is None
    res = _build(tmp_path, "oob", embeddings=EMB, labels=np.array([0, 1, 2, 3, 7]),
                 class_names=names)
    _one_line_error(res, "oob.npz", "class_names", "7")


def test_labels_read_as_evaluate_reads_them(tmp_path):
    res = _build(tmp_path, "flt", embeddings=EMB, labels=np.array([0.0, 1, 2, -1, 4]))
    assert res.exit_code == 0, res.output
    assert load_index(tmp_path / "idx_flt").labels_of(np.arange(5)).tolist() == [0, 1, 2, -1, 4]
    res = _build(tmp_path, "bool", embeddings=EMB, labels=np.array([1, 0, 1, 1, 0], bool))
    assert res.exit_code == 0, res.output
    assert load_index(tmp_path / "idx_bool").labels_of(np.arange(5)).tolist() == [1, 0, 1, 1, 0]
    res = _build(tmp_path, "str", embeddings=EMB, labels=np.array(["cat", "dog", "ant", "dog",
                                                                   "cat"]))
    assert res.exit_code == 0, res.output
    index = load_index(tmp_path / "idx_str")
    assert index.labels_of(np.arange(5)).tolist() == [1, 2, 0, 2, 1]  # sorted names
    assert [m["payload"]["class"] for m in index.metadata(np.arange(5))] == [
        "cat", "dog", "ant", "dog", "cat"]


def test_bad_labels_and_embeddings_name_the_file_and_the_labels(tmp_path):
    res = _build(tmp_path, "frac", embeddings=EMB, labels=np.array([0.5, 1, 2, 3, 4]))
    line = _one_line_error(res, "frac.npz", "labels")
    assert "ids must" not in line  # (the old message blamed the ids)
    res = _build(tmp_path, "neg2", embeddings=EMB, labels=np.array([0, -2, 1, 1, 0]))
    _one_line_error(res, "neg2.npz", "labels", "-2")
    bad = EMB.copy()
    bad[1, 3] = np.nan
    res = _build(tmp_path, "nan", embeddings=bad, labels=np.arange(5))
    _one_line_error(res, "nan.npz", "NaN")


def test_index_add_takes_integer_valued_labels_and_refuses_others_as_labels():
    index = ExactIndex(8)
    index.add(EMB[:2], labels=np.array([0.0, 3.0]))
    index.add(EMB[2:3], labels=np.array([True]))
    assert index.labels_of([0, 1, 2]).tolist() == [0, 3, 1]
    with pytest.raises(ValueError, match="labels must be integer class ids.*0.5"):
        index.add(EMB[:2], labels=np.array([0.5, 1.0]))
    with pytest.raises(TypeError, match="labels must be integer class ids.*names"):
        index.add(EMB[:2], labels=np.array(["a", "b"]))
    with pytest.raises(ValueError, match="labels must have shape"):
        index.add(EMB[:2], labels=[1, 2, 3])
    assert index.ntotal == 3
