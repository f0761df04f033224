"""ExactIndex squared-L2 search and range search stay exact on data far from the origin,
range search works in gallery blocks, and ties follow storage order for every metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dmlkit.index.exact as exact_module
from dmlkit.index import ExactIndex
from dmlkit.index.exact import FILTER_MIN_PAIRS


def _far(n: int, dim: int, mean: float, sd: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, dim)) * sd + mean).astype(np.float32)


def _brute_l2(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """fp64 squared distances ``(nq, n)``."""
    return ((q.astype(np.float64)[:, None, :] - x.astype(np.float64)[None]) ** 2).sum(-1)


@pytest.mark.parametrize("n, nq", [(2000, 50), (5000, 1000)])  # small path, filtered path
def test_items_far_from_the_origin_find_themselves_at_distance_zero(n, nq):
    x = _far(n, 64, mean=100.0, sd=0.1)
    index = ExactIndex(64)
    index.add(x)
    assert (nq * n >= FILTER_MIN_PAIRS) == (nq == 1000)
    scores, ids = index.search(x[:nq], 5)
    np.testing.assert_array_equal(ids[:, 0], np.arange(nq))  # ~1% wrong uncentred
    np.testing.assert_array_equal(scores[:, 0], 0.0)
    want = np.sort(_brute_l2(x[:nq], x), axis=1)[:, :5]
    np.testing.assert_allclose(scores, want, rtol=1e-5)


def test_range_search_far_from_the_origin_equals_fp64():
    x = _far(1500, 32, mean=10.0, sd=1.0, seed=1)
    q = np.vstack([x[:40], _far(20, 32, mean=10.0, sd=1.0, seed=2)])
    index = ExactIndex(32, query_chunk=16, ref_chunk=256)
    index.add(x)
    threshold = 40.0
    lims, scores, ids = index.range_search(q, threshold)
    dist = _brute_l2(q, x)
    for i in range(len(q)):
        want = np.flatnonzero(dist[i] <= threshold)
        want = want[np.lexsort((want, dist[i, want]))]
        np.testing.assert_array_equal(ids[lims[i]:lims[i + 1]], want)
        np.testing.assert_allclose(scores[lims[i]:lims[i + 1]], dist[i, want], rtol=1e-5)
    tiny = index.range_search(x[:40], 1e-3)  # every item within 1e-3 of itself
    assert (np.diff(tiny[0]) >= 1).all() and (tiny[1] == 0).all()


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_range_search_scores_blocks_of_the_gallery(metric, monkeypatch):
    rng = np.random.default_rng(3)
    x, q = rng.standard_normal((300, 8)), rng.standard_normal((23, 8))
    x, q = x.astype(np.float32), q.astype(np.float32)
    shapes = []
    real = exact_module.ranking_keys

    def spy(query, reference, out=None):
        shapes.append(tuple(reference[0].shape))
        return real(query, reference, out=out)

    monkeypatch.setattr(exact_module, "ranking_keys", spy)
    index = ExactIndex(8, metric, query_chunk=10, ref_chunk=64)
    index.add(x)
    threshold = {"l2": 9.0, "ip": 1.0, "cosine": 0.5}[metric]
    lims, scores, ids = index.range_search(torch.from_numpy(q), threshold)
    assert shapes and max(s[1] for s in shapes) <= 64  # never the whole gallery at once
    assert isinstance(ids, torch.Tensor)
    whole = ExactIndex(8, metric)
    whole.add(x)
    want = whole.range_search(q, threshold)
    np.testing.assert_array_equal(lims.numpy(), want[0])
    np.testing.assert_array_equal(ids.numpy(), want[2])
    np.testing.assert_allclose(scores.numpy(), want[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_exact_ties_rank_in_storage_order(metric):
    base = np.random.default_rng(4).standard_normal((30, 6)).astype(np.float32)
    x = np.repeat(base, 3, axis=0)  # rows 3i, 3i+1, 3i+2 are equal
    index = ExactIndex(6, metric)
    index.add(x, ids=np.arange(len(x)) * 7)
    scores, ids = index.search(base, 9)  # three groups of three tied items
    assert (scores[:, 0::3] == scores[:, 2::3]).all()  # the copies tie exactly
    tied = scores[:, 1:] == scores[:, :-1]  # (n, 8)
    assert tied.sum() == 30 * 6 and (np.diff(ids, axis=1)[tied] == 7).all()  # earlier first


def test_integer_data_keep_exact_ties_when_centred():
    rng = np.random.default_rng(5)
    x = rng.integers(40, 43, (400, 5)).astype(np.float32)  # far from the origin: centred
    q = rng.integers(40, 43, (30, 5)).astype(np.float32)
    index = ExactIndex(5)
    index.add(x)
    assert index._center() is not None
    scores, ids = index.search(q, 20)
    dist = _brute_l2(q, x)
    want = np.stack([np.lexsort((np.arange(len(x)), row)) for row in dist])[:, :20]
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_array_equal(scores, np.take_along_axis(dist, want, 1))
