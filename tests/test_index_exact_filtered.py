"""ExactIndex's large-search path (threshold filtering) against a sorted fp64 reference
and faiss's flat indexes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmlkit.index import ExactIndex
from dmlkit.index.exact import FILTER_MIN_PAIRS


def reference_search(q: np.ndarray, x: np.ndarray, k: int, metric: str):
    """fp64 full sort of every row by (key, storage row)."""
    q, x = q.astype(np.float64), x.astype(np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    if metric == "l2":
        keys = (q * q).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2.0 * q @ x.T
    else:
        keys = -(q @ x.T)
    order = np.argsort(keys, axis=1, kind="stable")[:, :k]
    vals = np.take_along_axis(keys, order, axis=1)
    return (vals if metric == "l2" else -vals), order


def data(n, nq, dim, seed, tied=False):
    rng = np.random.default_rng(seed)
    if tied:  # small integers: many exactly tied distances
        return (rng.integers(0, 3, (n, dim)).astype(np.float32),
                rng.integers(0, 3, (nq, dim)).astype(np.float32))
    centers = rng.standard_normal((50, dim)).astype(np.float32)
    x = centers[rng.integers(0, 50, n)] + 0.5 * rng.standard_normal((n, dim), np.float32)
    q = centers[rng.integers(0, 50, nq)] + 0.5 * rng.standard_normal((nq, dim), np.float32)
    return x, q


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_filtered_search_equals_full_sort(metric):
    x, q = data(12_000, 400, 12, seed=1)
    assert len(x) * len(q) >= FILTER_MIN_PAIRS  # the filtering path
    index = ExactIndex(12, metric)
    index.add(x)
    scores, ids = index.search(q, 10)
    want_scores, want_rows = reference_search(q, x, 10, metric)
    assert (ids == want_rows).mean() > 0.999  # float32 vs fp64 may swap near-ties
    np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-3)


def test_filtered_search_breaks_exact_ties_by_storage_order():
    x, q = data(12_000, 400, 6, seed=2, tied=True)
    index = ExactIndex(6, "l2")
    index.add(x, ids=np.arange(len(x)) + 1000)
    scores, ids = index.search(q, 25)
    want_scores, want_rows = reference_search(q, x, 25, "l2")
    np.testing.assert_array_equal(ids, want_rows + 1000)
    np.testing.assert_array_equal(scores, want_scores.astype(np.float32))


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_filtered_search_equals_faiss_flat(metric):
    faiss = pytest.importorskip("faiss")
    x, q = data(20_000, 300, 16, seed=3)
    index = ExactIndex(16, metric)
    index.add(x)
    flat = faiss.IndexFlatL2(16) if metric == "l2" else faiss.IndexFlatIP(16)
    flat.add(x)
    scores, ids = index.search(torch.from_numpy(q), 10)
    want_scores, want_ids = flat.search(q, 10)
    assert isinstance(ids, torch.Tensor)
    assert (ids.numpy() == want_ids).mean() > 0.999
    np.testing.assert_allclose(scores.numpy(), want_scores, rtol=1e-4, atol=1e-3)


def test_filtered_search_pads_when_k_exceeds_the_gallery():
    x, q = data(10, 500_000, 4, seed=4)
    index = ExactIndex(4, "ip")
    index.add(x)
    scores, ids = index.search(q[:1000], 12)  # 10k pairs: the small path
    big_scores, big_ids = ExactIndex._filtered(torch.from_numpy(q[:1000]),
                                               torch.from_numpy(x), 12, "dot")
    np.testing.assert_array_equal(big_ids.numpy(), ids)
    assert (ids[:, 10:] == -1).all() and np.isneginf(scores[:, 10:]).all()
    np.testing.assert_allclose(big_scores.numpy(), scores, rtol=1e-6, atol=1e-6)
