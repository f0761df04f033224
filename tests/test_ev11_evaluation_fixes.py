"""Evaluation accuracy on embeddings far from the origin, and evaluation input edges."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dmlkit.evaluation import (
    evaluate_embeddings,
    hierarchical_retrieval_metrics,
    retrieval_metrics,
)
from dmlkit.evaluation.clustering import kmeans_labels
from dmlkit.functional.retrieval import FILTER_MIN_PAIRS, FLOAT64_MAX_PAIRS, retrieval_per_query


def _offset_set(n: int, d: int = 16, offset: float = 1000.0, spread: float = 0.1, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 20, n)
    x = offset + spread * (rng.normal(size=(20, d))[y] + 0.7 * rng.normal(size=(n, d)))
    return x.astype(np.float32), y


def _naive_top1(query, qy, ref, ry, *, leave_one_out: bool, metric: str = "euclidean"):
    """Precision@1 by a float64 ranking of every pair (ties: lower reference index)."""
    q, r = np.asarray(query, np.float64), np.asarray(ref, np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        r = r / np.linalg.norm(r, axis=1, keepdims=True)
        keys = -(q @ r.T)
    else:
        keys = ((q[:, None, :] - r[None, :, :]) ** 2).sum(axis=2)
    if leave_one_out:
        np.fill_diagonal(keys, np.inf)
    best = keys.argmin(axis=1)
    return float((ry[best] == qy).mean())


def test_euclidean_metrics_on_offset_embeddings_above_float64_pair_limit_match_pml():
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    x, y = _offset_set(2100)
    assert x.shape[0] ** 2 > FLOAT64_MAX_PAIRS  # ranked with float32 keys
    ours = retrieval_metrics(x, y, k=1)
    t, ty = torch.tensor(x), torch.tensor(y)
    theirs = AccuracyCalculator(include=("precision_at_1",), k=1).get_accuracy(t, ty, t, ty, True)
    assert ours["precision_at_1"] == pytest.approx(theirs["precision_at_1"], abs=2e-3)
    # float64 keys of the data moved to the origin by hand
    wide = retrieval_metrics(x.astype(np.float64) - 1000.0, y, k=1)
    assert ours["map_at_r"] == pytest.approx(wide["map_at_r"], abs=2e-3)
    assert ours["precision_at_1"] > 0.9


def test_euclidean_metrics_of_offset_separate_gallery_match_float64_ranking():
    x, y = _offset_set(2400, seed=1)
    q, qy, r, ry = x[:1000], y[:1000], x[1000:], y[1000:]
    assert len(q) * len(r) < FLOAT64_MAX_PAIRS
    naive = _naive_top1(q, qy, r, ry, leave_one_out=False)
    small = retrieval_metrics(q, qy, r, ry, k=1)["precision_at_1"]
    assert small == pytest.approx(naive, abs=1e-12)
    # a larger gallery: float32 keys; the queries move with the same common vector
    big_r, big_ry = np.concatenate([r, r, r]), np.concatenate([ry, ry, ry])
    assert len(q) * len(big_r) > FLOAT64_MAX_PAIRS
    big = retrieval_metrics(q, qy, big_r, big_ry, k=1)["precision_at_1"]
    assert big == pytest.approx(naive, abs=1e-2)
    assert big > 0.9


def test_threshold_filtering_path_ranks_offset_embeddings_accurately():
    x, y = _offset_set(4100, seed=2)
    assert x.shape[0] ** 2 >= FILTER_MIN_PAIRS  # threshold filtering
    fast = retrieval_metrics(x, y, k=1)
    exact = retrieval_metrics(x - x.mean(axis=0, dtype=np.float64).astype(np.float32), y, k=1)
    assert fast["precision_at_1"] == pytest.approx(exact["precision_at_1"], abs=2e-3)
    assert fast["precision_at_1"] > 0.9


def test_cosine_ranking_is_not_centred():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 20, 2100)
    x = 2.0 + 0.5 * rng.normal(size=(20, 16))[y] + 0.7 * rng.normal(size=(2100, 16))
    x = x.astype(np.float32)
    naive = _naive_top1(x, y, x, y, leave_one_out=True, metric="cosine")
    centred = _naive_top1(x - x.mean(0), y, x - x.mean(0), y, leave_one_out=True, metric="cosine")
    assert abs(naive - centred) > 0.02  # the data tell the two apart
    got = retrieval_metrics(x, y, k=1, metric="cosine")["precision_at_1"]
    assert got == pytest.approx(naive, abs=5e-3)


def test_integer_valued_ties_keep_index_order_after_shift():
    # every vector is one of a few integer points away from the origin: exact ties
    rng = np.random.default_rng(4)
    pts = rng.integers(100, 104, size=(6, 5)).astype(np.float32)
    which = rng.integers(0, 6, 60)
    x = torch.tensor(pts[which])
    y = torch.tensor(rng.integers(0, 3, 60))
    vals = retrieval_per_query(x, y, k=(1,), average_precision=False, reciprocal_rank=False)
    keys = ((x[:, None].double() - x[None].double()) ** 2).sum(-1)
    keys.fill_diagonal_(float("inf"))
    order = np.lexsort((np.broadcast_to(np.arange(60), (60, 60)), keys.numpy()), axis=1)
    expect = (y[torch.from_numpy(order[:, 0])] == y).double()
    assert torch.equal(vals["precision_at_1"], expect)


def test_huge_float64_embeddings_rank_as_their_scaled_copy():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 10, 300)
    x = rng.normal(size=(10, 8))[y] + 0.5 * rng.normal(size=(300, 8))
    plain = retrieval_metrics(x, y)
    huge = retrieval_metrics(x * 1e160, y)
    tiny = retrieval_metrics(x * 1e-160, y)
    for key in ("precision_at_1", "map_at_r", "r_precision"):
        assert huge[key] == pytest.approx(plain[key], abs=1e-12)
        assert tiny[key] == pytest.approx(plain[key], abs=1e-12)


def test_evaluate_refuses_embeddings_whose_squared_distances_overflow():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 5, 50)
    x = rng.normal(size=(50, 4)) * 1e160
    with pytest.raises(ValueError, match="overflow"):
        evaluate_embeddings(x, y, sections=("verification",))


def _hier_set():
    rng = np.random.default_rng(0)
    n = 300
    coarse = rng.integers(0, 3, n)
    fine = coarse * 3 + rng.integers(0, 3, n)
    x = 100 + 0.01 * (rng.normal(size=(9, 8))[fine] + 0.5 * rng.normal(size=(n, 8)))
    return x.astype(np.float32), np.stack([coarse, fine], 1)


def test_hierarchical_precision_ranks_like_the_per_level_metrics():
    x, labels = _hier_set()
    raw = hierarchical_retrieval_metrics(x, labels, k=(1, 4))
    wide = hierarchical_retrieval_metrics(x.astype(np.float64), labels, k=(1, 4))
    for key in (
        "hierarchical_precision_at_1",
        "hierarchical_ndcg_at_4",
        "hierarchical_precision_at_4",
    ):
        assert raw[key] == pytest.approx(wide[key], abs=1e-12)
    # every neighbour of the right leaf earns full credit: HP@1 >= leaf P@1
    assert raw["hierarchical_precision_at_1"] >= raw["precision_at_1_level_1"]


def test_kmeans_takes_every_accepted_seed():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(40, 3))
    a = kmeans_labels(x, 3, seed=2**32)
    b = kmeans_labels(x, 3, seed=2**32)
    c = kmeans_labels(x, 3, seed=2**63 - 1)
    assert np.array_equal(a, b) and a.shape == c.shape == (40,)
    # seeds k-means always took keep their clusters
    from sklearn.cluster import KMeans

    ref = KMeans(n_clusters=3, n_init=3, max_iter=300, random_state=7).fit_predict(x)
    assert np.array_equal(kmeans_labels(x, 3, seed=7), ref)


def test_evaluate_embeddings_with_a_seed_beyond_32_bits():
    rng = np.random.default_rng(8)
    y = rng.integers(0, 3, 30)
    x = rng.normal(size=(30, 4)) + 3 * y[:, None]
    out = evaluate_embeddings(x, y, seed=2**32, sections=("clustering",))
    assert 0.0 <= out["clustering"]["nmi"] <= 1.0


def test_verification_of_one_embedding_is_skipped():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = evaluate_embeddings(
            np.ones((1, 4), np.float32), np.array([0]), sections=("verification",)
        )
    assert "skipped" in out["verification"]
    assert "2" in out["verification"]["skipped"]


@pytest.mark.parametrize("labels", [np.array([1.0, 2.0, 3.0]) * 1e19, np.array([-1e19, 0.0, 5.0])])
def test_whole_number_float_labels_beyond_int64_are_refused(labels):
    x = np.random.default_rng(9).normal(size=(3, 2))
    with pytest.raises(ValueError, match="int64"):
        retrieval_metrics(x, labels)


def test_whole_number_float_labels_within_int64_still_work():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    y = rng.integers(0, 4, 40)
    a = retrieval_metrics(x, (y + 1.0) * 1e6)
    b = retrieval_metrics(x, y)
    assert a["precision_at_1"] == b["precision_at_1"]


def _cli():
    from dmlkit.cli.main import app

    return app


def _save(path, emb, labels):
    np.savez(path, embeddings=emb, labels=labels)
    return path


def test_cli_seed_beyond_32_bits_writes_json(tmp_path):
    rng = np.random.default_rng(11)
    y = rng.integers(0, 3, 30)
    f = _save(tmp_path / "d.npz", rng.normal(size=(30, 4)).astype(np.float32) + y[:, None], y)
    res = CliRunner().invoke(_cli(), ["evaluate", str(f), "--seed", str(2**32), "--episodes", "3"])
    assert res.exit_code == 0, res.output
    assert "nmi" in json.loads((tmp_path / "d.evaluation.json").read_text())["clustering"]


def test_cli_one_embedding_skips_verification(tmp_path):
    f = _save(tmp_path / "one.npz", np.ones((1, 4), np.float32), np.array([0]))
    res = CliRunner().invoke(_cli(), ["evaluate", str(f), "--episodes", "5"])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "one.evaluation.json").read_text())
    assert "skipped" in result["verification"]


def test_cli_refuses_labels_beyond_int64(tmp_path):
    rng = np.random.default_rng(12)
    y = rng.integers(0, 4, 40)
    f = _save(tmp_path / "big.npz", rng.normal(size=(40, 3)).astype(np.float32), (y + 1.0) * 1e19)
    res = CliRunner().invoke(_cli(), ["evaluate", str(f), "--episodes", "3"])
    assert res.exit_code == 1
    assert "int64" in res.output and "Traceback" not in res.output


def test_cli_column_labels_are_class_labels(tmp_path):
    rng = np.random.default_rng(13)
    y = rng.integers(0, 3, 30)
    f = _save(
        tmp_path / "col.npz", rng.normal(size=(30, 4)).astype(np.float32) + y[:, None], y[:, None]
    )
    res = CliRunner().invoke(_cli(), ["evaluate", str(f), "--episodes", "3"])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "col.evaluation.json").read_text())
    assert "nmi" in result["clustering"] and "hierarchical" not in result


def test_cli_names_a_file_that_is_neither_run_nor_npz(tmp_path):
    f = tmp_path / "arr.npy"
    np.save(f, np.ones((3, 2)))
    res = CliRunner().invoke(_cli(), ["evaluate", str(f)])
    assert res.exit_code == 1
    assert "--out" not in res.output and ".npz" in res.output


def test_cli_huge_embeddings_are_refused_with_a_magnitude_message(tmp_path):
    rng = np.random.default_rng(14)
    y = rng.integers(0, 3, 30)
    f = _save(tmp_path / "huge.npz", rng.normal(size=(30, 4)) * 1e160, y)
    res = CliRunner().invoke(_cli(), ["evaluate", str(f), "--episodes", "3"])
    assert res.exit_code == 1
    assert "overflow" in res.output and "NaN" not in res.output
