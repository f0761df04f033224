"""faiss indexes of no vectors behave as the exact index does: `index build` of an empty
array builds an empty index (its calibration skipped with a note), an empty untrained IVF
index range-searches to empty results, and adding nothing is a no-op."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app

pytest.importorskip("faiss")
runner = CliRunner()


@pytest.mark.parametrize("factory", ["exact", "Flat", "HNSW32", "IVF4,Flat"])
def test_index_build_of_an_empty_array_builds_an_empty_index(tmp_path, factory):
    from dmlkit.index import load_index

    np.save(tmp_path / "empty.npy", np.zeros((0, 16), np.float32))
    res = runner.invoke(app, ["index", "build", str(tmp_path / "empty.npy"), "--out",
                              str(tmp_path / "idx"), "--factory", factory])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert "indexed 0 embeddings of dim 16" in res.output
    assert ("recall not measured: the index is empty" in res.output) == (factory != "exact")
    index = load_index(tmp_path / "idx")
    assert index.ntotal == 0 and index.dim == 16
    _, ids = index.search(np.ones((2, 16), np.float32), 3)
    assert (ids == -1).all()


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF4,Flat"])
def test_calibrate_of_an_empty_faiss_index_says_it_skipped(factory):
    from dmlkit.index import FaissIndex
    from dmlkit.index.calibrate import calibrate

    result = calibrate(FaissIndex(16, "l2", factory), np.zeros((0, 16), np.float32))
    assert result["recall_at_k"] is None and result["skipped"] == "the index is empty"
    assert result["queries"] == 0 and not result["tuned"]


@pytest.mark.parametrize("factory", ["exact", "Flat", "PQ4", "IVF4,Flat", "IVF4,PQ2x4"])
def test_an_empty_index_range_searches_and_adds_nothing_alike(factory):
    from dmlkit.index import ExactIndex, FaissIndex

    index = ExactIndex(8) if factory == "exact" else FaissIndex(8, "l2", factory)
    assert len(index.add(np.zeros((0, 8), np.float32))) == 0  # a no-op, never a training
    assert index.ntotal == 0
    if factory != "exact":
        assert index.is_trained == (factory == "Flat")  # nothing was trained on nothing
        lims, scores, ids = index.range_search(np.ones((3, 8), np.float32), 10.0)
        assert lims.tolist() == [0, 0, 0, 0] and scores.size == ids.size == 0
        assert lims.dtype == ids.dtype == np.int64 and scores.dtype == np.float32


def test_an_empty_ivf_index_still_trains_on_its_first_vectors():
    from dmlkit.index import FaissIndex

    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    index = FaissIndex(8, "l2", "IVF4,Flat", nprobe=4)
    index.add(np.zeros((0, 8), np.float32))
    index.add(x)
    assert index.is_trained and index.ntotal == 200
    lims, _, ids = index.range_search(x[:2], 1e-6)
    assert ids[lims[0]:lims[1]].tolist() == [0]
