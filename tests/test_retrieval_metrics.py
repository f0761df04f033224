"""Retrieval metrics against a naive loop reference and pytorch-metric-learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dmlkit.evaluation import retrieval_metrics
from dmlkit.functional.retrieval import knn, topk_lexicographic

KS = (1, 2, 4, 8)
#: the full-ranking metrics, off by default
FULL = {"average_precision": True, "reciprocal_rank": True}


def naive_metrics(q, ql, r, rl, exclude_self, metric="euclidean", same=None):
    """Loop-based fp64 reference: rank by (distance, index), drop queries with R == 0."""
    q, r = np.asarray(q, np.float64), np.asarray(r, np.float64)
    same = same or (lambda a, b: bool(np.all(a == b)))
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        r = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    acc: dict[str, list[float]] = {}
    for i in range(len(q)):
        cands = [j for j in range(len(r)) if not (exclude_self and j == i)]
        if metric == "euclidean":
            key = {j: float(((q[i] - r[j]) ** 2).sum()) for j in cands}
        else:
            key = {j: -float(q[i] @ r[j]) for j in cands}
        order = sorted(cands, key=lambda j: (key[j], j))
        rel = [same(ql[i], rl[j]) for j in order]
        big_r = sum(rel)
        if big_r == 0:
            continue
        vals = {"precision_at_1": float(rel[0]), "r_precision": sum(rel[:big_r]) / big_r}
        for k in KS:
            vals[f"recall_at_{k}"] = float(any(rel[:k]))
            vals[f"precision_at_{k}"] = sum(rel[:k]) / k
        hits, s_r, s_all = 0, 0.0, 0.0
        for pos, is_rel in enumerate(rel, start=1):
            if is_rel:
                hits += 1
                s_all += hits / pos
                if pos <= big_r:
                    s_r += hits / pos
        vals["map_at_r"] = s_r / big_r
        vals["mean_average_precision"] = s_all / big_r
        vals["mean_reciprocal_rank"] = 1.0 / (rel.index(True) + 1)
        for name, v in vals.items():
            acc.setdefault(name, []).append(v)
    return {name: float(np.mean(v)) for name, v in acc.items()}, len(acc["precision_at_1"])


def tied_data(n, dim, classes, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 3, (n, dim), generator=g).float()  # many exact distance ties
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


@pytest.mark.parametrize("separate", [False, True])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_against_naive_reference(separate, metric):
    x, y = tied_data(120, 4, 7, seed=1)
    if metric == "cosine":
        x = torch.randn(120, 5, generator=torch.Generator().manual_seed(2))
    if separate:
        xr, yr = tied_data(90, x.shape[1], 9, seed=3)
        if metric == "cosine":
            xr = torch.randn(90, 5, generator=torch.Generator().manual_seed(4))
        got = retrieval_metrics(x, y, xr, yr, metric=metric, chunk_size=17, **FULL)
        want, nq = naive_metrics(x.numpy(), y.numpy(), xr.numpy(), yr.numpy(), False, metric)
    else:
        got = retrieval_metrics(x, y, metric=metric, chunk_size=17, **FULL)
        want, nq = naive_metrics(x.numpy(), y.numpy(), x.numpy(), y.numpy(), True, metric)
    assert got["num_queries"] == nq
    for name, v in want.items():
        assert got[name] == pytest.approx(v, abs=1e-9), name


def test_multilabel_and_hierarchical_labels_against_naive():
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 3, (60, 3), generator=g).float()
    multi = torch.rand(60, 4, generator=g) < 0.3
    got = retrieval_metrics(x, multi, chunk_size=11, **FULL)
    want, nq = naive_metrics(x.numpy(), multi.numpy(), x.numpy(), multi.numpy(), True,
                             same=lambda a, b: bool((a & b).any()))
    assert got["num_queries"] == nq
    for name, v in want.items():
        assert got[name] == pytest.approx(v, abs=1e-9), name
    hier = torch.stack([torch.randint(0, 2, (60,), generator=g),
                        torch.randint(0, 3, (60,), generator=g)], dim=1)
    got = retrieval_metrics(x, hier, **FULL)
    want, _ = naive_metrics(x.numpy(), hier.numpy(), x.numpy(), hier.numpy(), True)
    for name, v in want.items():
        assert got[name] == pytest.approx(v, abs=1e-9), name


def _pml(x, y, xr=None, yr=None):
    ac_mod = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    calc = ac_mod.AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r",
                 "mean_average_precision", "mean_reciprocal_rank"),
        k=None, device=torch.device("cpu"),
    )
    return calc.get_accuracy(x, y, xr, yr)


def _pml_ref_includes_query(x, y, xr, yr):
    ac_mod = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    calc = ac_mod.AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r",
                 "mean_average_precision", "mean_reciprocal_rank"),
        k=None, device=torch.device("cpu"),
    )
    return calc.get_accuracy(x, y, xr, yr, ref_includes_query=True)


def _compare_pml(got, want):
    assert got["precision_at_1"] == pytest.approx(want["precision_at_1"], abs=1e-6)
    assert got["r_precision"] == pytest.approx(want["r_precision"], abs=1e-6)
    assert got["map_at_r"] == pytest.approx(want["mean_average_precision_at_r"], abs=1e-6)
    assert got["mean_average_precision"] == pytest.approx(
        want["mean_average_precision"], abs=1e-6)
    assert got["mean_reciprocal_rank"] == pytest.approx(want["mean_reciprocal_rank"], abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_pml_with_ties(seed):
    x, y = tied_data(250, 5, 12, seed)
    _compare_pml(retrieval_metrics(x, y, **FULL), _pml(x, y))
    xr, yr = tied_data(200, 5, 15, seed + 10)  # some query classes absent from reference
    _compare_pml(retrieval_metrics(x, y, xr, yr, **FULL), _pml(x, y, xr, yr))


def test_equals_pml_on_digits():
    datasets = pytest.importorskip("sklearn.datasets")
    xd, yd = datasets.load_digits(return_X_y=True)
    x, y = torch.from_numpy(xd[:900]).float(), torch.from_numpy(yd[:900])
    _compare_pml(retrieval_metrics(x, y, **FULL), _pml(x, y))
    _compare_pml(retrieval_metrics(x[:300], y[:300], x[300:], y[300:], **FULL),
                 _pml(x[:300], y[:300], x[300:], y[300:]))
    # the reference holds the queries first: each query skips its own row, as in PML
    _compare_pml(retrieval_metrics(x[:300], y[:300], x, y, ref_includes_query=True, **FULL),
                 _pml_ref_includes_query(x[:300], y[:300], x, y))


def test_lone_queries_are_dropped_and_nan_when_none_evaluable():
    x = torch.tensor([[0.0], [1.0], [5.0]])
    got = retrieval_metrics(x, torch.tensor([0, 0, 1]), per_class=True)
    assert got["num_queries"] == 2 and got["precision_at_1"] == 1.0
    assert math.isnan(got["per_class"][1]["precision_at_1"])
    assert got["per_class"][0]["count"] == 2
    got = retrieval_metrics(x, torch.tensor([0, 1, 2]))
    assert got["num_queries"] == 0 and math.isnan(got["map_at_r"])


def test_per_class_means_match_overall():
    x, y = tied_data(200, 4, 5, seed=7)
    got = retrieval_metrics(x, y, per_class=True)
    pc = got["per_class"]
    total = sum(v["count"] for v in pc.values())
    weighted = sum(v["r_precision"] * v["count"] for v in pc.values()) / total
    assert weighted == pytest.approx(got["r_precision"], abs=1e-12)


def test_per_class_keys_are_class_names_when_labels_are_names():
    from dmlkit.evaluation import evaluate_embeddings

    x, y = tied_data(120, 4, 3, seed=3)
    names = np.array(["cat", "dog", "eel"])[np.asarray(y)]
    by_id = retrieval_metrics(x, y, per_class=True)["per_class"]
    by_name = retrieval_metrics(x, names, per_class=True)["per_class"]
    assert sorted(by_name) == ["cat", "dog", "eel"]
    for code, name in enumerate(["cat", "dog", "eel"]):
        assert by_name[name] == by_id[code]
    got = evaluate_embeddings(x, names, sections=["retrieval"], per_class=True)
    assert sorted(got["retrieval"]["per_class"]) == ["cat", "dog", "eel"]


def test_per_class_of_multi_labels_is_per_label_column():
    """Each label's mean over the queries holding it (a query with two labels counts in
    both), against a loop over the per-query values of single-label subsets."""
    x, y = tied_data(90, 4, 3, seed=5)
    y = np.asarray(y)
    multi = np.zeros((len(y), 4), dtype=bool)
    multi[np.arange(len(y)), y] = True
    multi[:15, 3] = True  # label 3: only the first 15 items, each also in its class
    got = retrieval_metrics(x, multi, per_class=True)
    pc = got["per_class"]
    assert sorted(pc) == [0, 1, 2, 3]
    xs = np.asarray(x, np.float64)

    def map_at_r(i):  # leave-one-out, ranked by (distance, index)
        others = [j for j in range(len(y)) if j != i]
        order = sorted(others, key=lambda j: (float(((xs[i] - xs[j]) ** 2).sum()), j))
        rel = [bool(np.any(multi[i] & multi[j])) for j in order]
        big_r = sum(rel)
        hits = np.cumsum(rel[:big_r])
        pairs = enumerate(zip(hits, rel[:big_r], strict=True))
        return sum(h / (p + 1) for p, (h, r) in pairs if r) / big_r

    for c in range(4):
        rows = [i for i in range(len(y)) if multi[i, c]]  # every item here has a positive
        assert pc[c]["count"] == len(rows)
        want = np.mean([map_at_r(i) for i in rows])
        assert pc[c]["map_at_r"] == pytest.approx(want, abs=1e-9)


def test_near_equal_distances_keep_their_exact_order_on_small_sets():
    """Far from the origin, float32 keys |r|^2 - 2 q.r lose the differences between
    neighbours; sets of up to FLOAT64_MAX_PAIRS pairs rank by float64 keys and equal the
    float64 loop."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(300, 8, generator=g) * 0.01 + 100.0  # float32 input
    y = torch.randint(0, 6, (300,), generator=g)
    got = retrieval_metrics(x, y)
    want, _ = naive_metrics(x.numpy(), y.numpy(), x.numpy(), y.numpy(), True)
    for name in ("precision_at_1", "r_precision", "map_at_r", "recall_at_4"):
        assert got[name] == pytest.approx(want[name], abs=1e-12), name


def test_bad_inputs_raise():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="labels"):
        retrieval_metrics(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="metric"):
        retrieval_metrics(x, torch.zeros(4, dtype=torch.long), metric="manhattan")
    with pytest.raises(ValueError, match="reference"):
        retrieval_metrics(x, torch.zeros(4, dtype=torch.long), reference=x)
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.full((4, 2), float("nan")), torch.zeros(4, dtype=torch.long))


def test_topk_lexicographic_keeps_lowest_columns_on_ties():
    keys = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0, 1.0]])
    vals, idx = topk_lexicographic(keys, 3)
    assert idx.tolist() == [[1, 4, 0]] and vals.tolist() == [[0.0, 0.0, 1.0]]


def test_knn_matches_bruteforce_and_pads():
    x, _ = tied_data(70, 3, 2, seed=9)
    d, i = knn(x, None, 5, query_chunk=8, ref_chunk=13)
    dn = ((x[:, None] - x[None]) ** 2).sum(-1).numpy()
    np.fill_diagonal(dn, np.inf)
    want = np.stack([np.lexsort((np.arange(70), dn[r]))[:5] for r in range(70)])
    assert (i.numpy() == want).all()
    d, i = knn(x[:2], x[:3], 5)
    assert (i[:, 3:] == -1).all() and torch.isinf(d[:, 3:]).all()


def test_defaults_skip_the_full_ranking_metrics():
    """Defaults: the top-R metrics only; full mAP and MRR when asked, top-R values equal."""
    x, y = tied_data(120, 3, 4, seed=2)
    default = retrieval_metrics(x, y)
    assert "mean_average_precision" not in default and "mean_reciprocal_rank" not in default
    assert {"precision_at_1", "r_precision", "map_at_r", "recall_at_8", "precision_at_8",
            "num_queries", "metric"} <= set(default)
    full = retrieval_metrics(x, y, **FULL)
    want, _ = naive_metrics(x.numpy(), y.numpy(), x.numpy(), y.numpy(), True)
    assert full["mean_reciprocal_rank"] == pytest.approx(want["mean_reciprocal_rank"], abs=1e-9)
    for name, v in default.items():
        assert full[name] == v, name
