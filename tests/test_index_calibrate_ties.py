"""Distance-based recall in index calibration (ties are hits), and calibration of indexes
built from an embedding store (library and ``dmlkit index build STORE``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.index import ExactIndex, FaissIndex, load_index
from dmlkit.index.calibrate import calibrate, distance_recall, recall_at_k
from dmlkit.index.store import EmbeddingStore, build_index_from_store, embed_to_store

pytest.importorskip("faiss")


def _duplicated(n_base: int = 1000, reps: int = 4, dim: int = 16) -> np.ndarray:
    base = np.random.default_rng(0).standard_normal((n_base, dim)).astype(np.float32)
    return np.repeat(base, reps, axis=0)  # every vector stored reps times


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_flat_index_has_recall_one_on_duplicated_vectors(metric):
    x = _duplicated()
    flat = FaissIndex(16, metric, "Flat")
    flat.add(x)
    result = calibrate(flat, x, k=10)
    assert result["recall_at_k"] == 1.0  # by ids it is about 0.87: ties in another order


def test_hnsw_tuning_on_duplicates_stops_at_a_small_breadth():
    x = _duplicated()
    hnsw = FaissIndex(16, "l2", "HNSW16")
    hnsw.add(x)
    result = calibrate(hnsw, x, k=10, target=0.95)
    assert result["tuned"] and result["recall_at_k"] >= 0.95
    assert result["ef_search"] <= 256  # id recall pushed it to 2n (8000)


def test_recall_still_counts_real_misses():
    x = np.random.default_rng(1).standard_normal((3000, 16)).astype(np.float32)  # no ties
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ivf = FaissIndex(16, "l2", "IVF64,Flat", nprobe=1)
        ivf.add(x)
    result = calibrate(ivf, x, k=10)
    exact = ExactIndex(16)
    exact.add(x)
    rows = np.sort(np.random.default_rng(0).choice(len(x), 1000, replace=False))
    by_ids = recall_at_k(ivf.search(x[rows], 10)[1], exact.search(x[rows], 10)[1])
    assert not result["tuned"] and result["recall_at_k"] < 0.9
    assert result["recall_at_k"] == pytest.approx(by_ids, abs=1e-3)  # no ties: the same


def test_distance_recall_counts_ties_within_tolerance():
    kth = np.array([1.0, 1.0])
    tol = np.array([1e-5, 1e-5])
    scores = np.array([[0.5, 1.0 + 5e-6], [0.5, 1.01]])  # a tie; a farther item
    valid = np.ones((2, 2), bool)
    assert distance_recall(scores, valid, kth, tol, "l2") == pytest.approx(0.75)
    assert distance_recall(-scores, valid, -kth, tol, "ip") == pytest.approx(0.75)
    valid[0, 0] = False  # nothing returned there
    assert distance_recall(scores, valid, kth, tol, "l2") == pytest.approx(0.5)


def test_ground_truth_in_chunks_equals_one_pass():
    x = np.random.default_rng(2).standard_normal((2500, 8)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ivf = FaissIndex(8, "l2", "IVF32,Flat", nprobe=2)
        ivf.add(x)
    whole = calibrate(ivf, x, k=10, sample=300)
    chunked = calibrate(ivf, x, k=10, sample=300, chunk=333)
    assert whole["recall_at_k"] == chunked["recall_at_k"] < 1.0


def _store(tmp_path, n=6000, dim=16):
    x = np.random.default_rng(3).standard_normal((n, dim)).astype(np.float32)
    embed_to_store(lambda a, b: x[a:b], n, dim, tmp_path / "store", labels=np.zeros(n, int),
                   chunk_size=1024, show_progress=False)
    return x


@pytest.mark.filterwarnings("ignore:IVF64")
def test_store_build_calibrates_to_the_target(tmp_path):
    x = _store(tmp_path)
    store = EmbeddingStore.open(tmp_path / "store")
    index = build_index_from_store(store, "IVF64,Flat", target_recall=0.95, chunk_size=1000)
    recall = index.info["recall"]
    assert recall["tuned"] and recall["recall_at_k"] >= 0.95 and index.nprobe > 1
    mem = FaissIndex(16, "l2", "IVF64,Flat")
    mem.add(x)  # trained on every row, as the store build (train_size > n) is
    assert calibrate(mem, x, target=0.95)["nprobe"] == index.nprobe  # as in memory


def test_cli_store_build_reports_and_reaches_the_target_recall(tmp_path):
    from dmlkit.cli.main import app

    x = _store(tmp_path)
    np.savez(tmp_path / "x.npz", embeddings=x)
    runner = CliRunner()
    outputs = {}
    for name, source in (("store", tmp_path / "store"), ("npz", tmp_path / "x.npz")):
        res = runner.invoke(app, ["index", "build", str(source), "--out",
                                  str(tmp_path / f"idx_{name}"),
                                  "--factory", "IVF64,Flat", "--target-recall", "0.95"])
        assert res.exit_code == 0, res.output
        outputs[name] = res.output
    line = next(s for s in outputs["store"].splitlines() if s.startswith("recall@10"))
    assert "tuned" in line and line in outputs["npz"]  # the same calibration either way
    index = load_index(tmp_path / "idx_store")
    assert index.nprobe > 1 and index.info["recall"]["recall_at_k"] >= 0.95
