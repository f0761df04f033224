"""Threshold-filtered exact top-k against a full sort, and the metrics built on it."""

from __future__ import annotations

import pytest
import torch
from test_retrieval_metrics import KS, _compare_pml, _pml, _pml_ref_includes_query, naive_metrics

import dmlkit.functional.retrieval as fr
import dmlkit.functional.topk_filter as et
from dmlkit.evaluation import retrieval_metrics
from dmlkit.functional.topk_filter import exact_topk


def full_sort(q, r, depth, exclude_self, metric="euclidean"):
    """Reference: every key of every row, sorted by (key, column), in float64."""
    q, r = q.double(), r.double()
    if metric == "euclidean":
        keys = ((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)
    else:
        if metric == "cosine":
            q = q / q.norm(dim=1, keepdim=True)
            r = r / r.norm(dim=1, keepdim=True)
        keys = -(q @ r.T)
    if exclude_self:
        keys[torch.arange(len(q)), torch.arange(len(q))] = float("inf")
    order = keys.argsort(dim=1, stable=True)  # equal keys keep the lower column first
    return keys.gather(1, order)[:, :depth], order[:, :depth]


def ints(n, d, lo, hi, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, (n, d), generator=g).double()


@pytest.mark.parametrize(
    ("n", "d", "lo", "hi", "depth", "block", "group", "metric"),
    [
        (700, 6, -3, 4, 20, 128, 16, "euclidean"),  # massive ties: overflow fallback
        (700, 16, -40, 40, 30, 150, 16, "euclidean"),  # partial blocks and groups
        (500, 5, -2, 3, 40, 100, 3, "dot"),
        (300, 8, -20, 20, 299, 64, 16, "euclidean"),  # depth = every other row
        (60, 4, -20, 20, 5, 4096, 16, "euclidean"),  # one block
    ],
)
def test_leave_one_out_equals_full_sort(n, d, lo, hi, depth, block, group, metric):
    x = ints(n, d, lo, hi, seed=n + d)
    keys, idx = exact_topk(x, None, depth, metric=metric, block=block, group=group)
    want_keys, want_idx = full_sort(x, x, depth, True, metric)
    assert torch.equal(idx, want_idx)
    assert torch.equal(keys, want_keys)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_queries_against_reference_equal_full_sort(exclude_self):
    x = ints(300, 12, -30, 30, seed=1)
    ref = ints(900, 12, -30, 30, seed=2)
    if exclude_self:
        ref[:300] = x  # the reference holds the queries first
    keys, idx = exact_topk(x, ref, 25, block=128, group=8, exclude_self=exclude_self)
    want_keys, want_idx = full_sort(x, ref, 25, exclude_self)
    assert torch.equal(idx, want_idx)
    assert torch.equal(keys, want_keys)


def test_cosine_on_real_values_equals_full_sort():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(400, 10, generator=g, dtype=torch.float64)
    _, idx = exact_topk(x, None, 15, metric="cosine", block=96)
    assert torch.equal(idx, full_sort(x, x, 15, True, "cosine")[1])


def test_per_query_depth_pads_beyond_it():
    x = ints(500, 8, -30, 30, seed=4)
    depth = torch.randint(0, 40, (500,), generator=torch.Generator().manual_seed(5))
    keys, idx = exact_topk(x, None, depth, block=120)
    want_keys, want_idx = full_sort(x, x, int(depth.max()), True)
    inside = torch.arange(idx.shape[1])[None, :] < depth[:, None]
    assert torch.equal(idx[inside], want_idx[inside])
    assert bool((idx[~inside] == -1).all()) and bool(torch.isinf(keys[~inside]).all())


def test_unlucky_thresholds_fall_back_to_exact(monkeypatch):
    """Thresholds far too low (negative margin) admit too few keys: still exact."""
    monkeypatch.setattr(et, "_MARGIN_SD", -3.0)
    x = ints(600, 10, -30, 30, seed=6)
    _, idx = exact_topk(x, None, 50, block=128)
    assert torch.equal(idx, full_sort(x, x, 50, True)[1])


@pytest.mark.parametrize("reference", [False, True])
def test_memory_budget_splits_queries(monkeypatch, reference):
    monkeypatch.setattr(et, "_CANDIDATE_BUDGET", 8 * (3 * 20 + 64) * 90)  # 90 queries
    x = ints(400, 6, -8, 8, seed=10)
    ref = torch.cat([x, ints(100, 6, -8, 8, seed=11)]) if reference else None
    keys, idx = exact_topk(x, ref, 20, block=64, exclude_self=True)
    want_keys, want_idx = full_sort(x, x if ref is None else ref, 20, True)
    assert torch.equal(idx, want_idx) and torch.equal(keys, want_keys)


def test_worker_threads_and_seed_do_not_change_the_result():
    x = ints(900, 8, -10, 10, seed=7)
    a = exact_topk(x, None, 30, block=100, workers=1, seed=0)
    b = exact_topk(x, None, 30, block=100, workers=3, seed=5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_self_included_when_asked():
    x = ints(200, 4, -5, 5, seed=9)
    keys, idx = exact_topk(x, None, 7, exclude_self=False, block=64)
    want_keys, want_idx = full_sort(x, x, 7, False)
    assert torch.equal(idx, want_idx) and torch.equal(keys, want_keys)


def test_float32_input_and_depth_clamped_to_available():
    x = ints(50, 4, -5, 5, seed=8).float()
    keys, idx = exact_topk(x, None, 80, block=16)
    assert keys.dtype == torch.float32 and idx.shape == (50, 49)
    assert torch.equal(idx, full_sort(x, x, 49, True)[1])


def test_bad_arguments_raise():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="cannot include"):
        exact_topk(x, x[:5], 2, exclude_self=True)
    with pytest.raises(ValueError, match="block"):
        exact_topk(x, None, 2, block=0)
    with pytest.raises(ValueError, match="metric"):
        exact_topk(x, None, 2, metric="manhattan")
    with pytest.raises(ValueError, match="reference must be"):
        exact_topk(x, torch.randn(10, 4), 2)
    with pytest.raises(ValueError, match="depth must be"):
        exact_topk(x, None, torch.ones(3, dtype=torch.long))
    bad = x.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        exact_topk(bad, None, 2)


@pytest.fixture
def filtered(monkeypatch):
    """Route every top-R metric computation through threshold filtering."""
    monkeypatch.setattr(fr, "FILTER_MIN_PAIRS", 0)
    monkeypatch.setattr(et, "DEFAULT_BLOCK", 64)


TOP_R = {"average_precision": False, "reciprocal_rank": False}


@pytest.mark.parametrize("separate", [False, True])
def test_filtered_metrics_equal_naive_reference(filtered, separate):
    g = torch.Generator().manual_seed(9)
    x = torch.randint(0, 3, (220, 4), generator=g).float()
    y = torch.randint(0, 7, (220,), generator=g)
    if separate:
        xr = torch.randint(0, 3, (150, 4), generator=g).float()
        yr = torch.randint(0, 9, (150,), generator=g)
        got = retrieval_metrics(x, y, xr, yr, **TOP_R)
        want, nq = naive_metrics(x.numpy(), y.numpy(), xr.numpy(), yr.numpy(), False)
    else:
        got = retrieval_metrics(x, y, **TOP_R)
        want, nq = naive_metrics(x.numpy(), y.numpy(), x.numpy(), y.numpy(), True)
    assert got["num_queries"] == nq
    for name in ["precision_at_1", "r_precision", "map_at_r"] + [
        f"{p}_at_{k}" for k in KS for p in ("recall", "precision")
    ]:
        assert got[name] == pytest.approx(want[name], abs=1e-9), name


def _pml_top_r(got, want):
    assert got["precision_at_1"] == pytest.approx(want["precision_at_1"], abs=1e-6)
    assert got["r_precision"] == pytest.approx(want["r_precision"], abs=1e-6)
    assert got["map_at_r"] == pytest.approx(want["mean_average_precision_at_r"], abs=1e-6)


def test_filtered_metrics_equal_pml_on_digits(filtered):
    datasets = pytest.importorskip("sklearn.datasets")
    xd, yd = datasets.load_digits(return_X_y=True)
    x, y = torch.from_numpy(xd).float(), torch.from_numpy(yd)
    _pml_top_r(retrieval_metrics(x, y, **TOP_R), _pml(x, y))
    _pml_top_r(retrieval_metrics(x[:500], y[:500], x, y, ref_includes_query=True, **TOP_R),
               _pml_ref_includes_query(x[:500], y[:500], x, y))
    _pml_top_r(retrieval_metrics(x[:400], y[:400], x[400:], y[400:], **TOP_R),
               _pml(x[:400], y[:400], x[400:], y[400:]))


def test_filtered_metrics_equal_pml_on_real_valued_embeddings(filtered):
    g = torch.Generator().manual_seed(11)
    centers = torch.randn(30, 16, generator=g)
    y = torch.randint(0, 30, (1200,), generator=g)
    x = centers[y] + 0.8 * torch.randn(1200, 16, generator=g)
    _pml_top_r(retrieval_metrics(x, y, **TOP_R), _pml(x, y))
    _pml_top_r(retrieval_metrics(x, y, metric="cosine", **TOP_R),
               _pml_cosine(x, y))


def _pml_cosine(x, y):
    ac_mod = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    inference = pytest.importorskip("pytorch_metric_learning.utils.inference")
    distances = pytest.importorskip("pytorch_metric_learning.distances")
    knn = inference.CustomKNN(distances.CosineSimilarity())
    calc = ac_mod.AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        k=None, device=torch.device("cpu"), knn_func=knn,
    )
    return calc.get_accuracy(x, y)


def test_filtered_and_sorted_paths_agree_with_full_metrics_requested(filtered):
    """Asking for mAP or MRR keeps the full-ranking path; the top-R values still agree."""
    g = torch.Generator().manual_seed(12)
    x = torch.randint(0, 4, (300, 5), generator=g).float()
    y = torch.randint(0, 10, (300,), generator=g)
    full = retrieval_metrics(x, y, average_precision=True, reciprocal_rank=True)
    top = retrieval_metrics(x, y, **TOP_R)
    for name in ("precision_at_1", "r_precision", "map_at_r", "recall_at_8"):
        assert top[name] == pytest.approx(full[name], abs=1e-12), name
    _compare_pml(full, _pml(x, y))


@pytest.mark.parametrize("metric", ["cosine", "dot"])
def test_filtered_similarity_metrics_equal_naive_reference(filtered, metric):
    g = torch.Generator().manual_seed(13)
    x = torch.randn(260, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 8, (260,), generator=g)
    got = retrieval_metrics(x, y, metric=metric, **TOP_R)
    want, nq = naive_metrics(x.numpy(), y.numpy(), x.numpy(), y.numpy(), True, metric)
    assert got["num_queries"] == nq
    for name in ("precision_at_1", "r_precision", "map_at_r", "recall_at_4", "precision_at_8"):
        assert got[name] == pytest.approx(want[name], abs=1e-9), name


def test_leave_one_out_ranks_duplicate_vectors_by_index():
    """Each vector 6 times: a row's keys against the copies must be identical (whether
    its block computed them as row or column), so the copies rank by index."""
    g = torch.Generator().manual_seed(21)
    x = torch.randn(150, 4, generator=g).repeat_interleave(6, dim=0)  # (900, 4) float32
    keys, idx = exact_topk(x, None, 12, block=64)
    want_keys, want_idx = full_sort(x, x, 12, True)
    assert torch.equal(idx, want_idx)
    same = want_keys[:, 1:] == want_keys[:, :-1]  # equal float64 distances: equal keys
    assert torch.equal(keys[:, 1:][same], keys[:, :-1][same])
