"""ExactIndex keeps its prepared gallery between small searches, and drops it on change."""

from __future__ import annotations

import numpy as np
import pytest

from dmlkit.index import ExactIndex


def _fresh(x: np.ndarray, ids: np.ndarray, metric: str) -> ExactIndex:
    index = ExactIndex(x.shape[1], metric=metric)
    index.add(x, ids=ids)
    return index


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_small_searches_follow_adds_and_removes(metric):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    ids = np.arange(50)
    index = _fresh(x, ids, metric)
    q = rng.standard_normal((2, 8)).astype(np.float32)
    first = index.search(q, 3)
    assert index._prepared is not None  # kept for the next request
    np.testing.assert_array_equal(first[1], _fresh(x, ids, metric).search(q, 3)[1])
    new = q[:1] * (4.0 if metric == "ip" else 1.0)  # a top match of the first query
    index.add(new, ids=np.array([999]))
    second = index.search(q, 3)
    x2, ids2 = np.vstack([x, new]), np.append(ids, 999)
    np.testing.assert_array_equal(second[1], _fresh(x2, ids2, metric).search(q, 3)[1])
    assert 999 in second[1][0]
    gone = np.array([999, *second[1][1][:2]])
    index.remove(gone)
    third = index.search(q, 3)
    keep = ~np.isin(ids2, gone)
    np.testing.assert_array_equal(third[1], _fresh(x2[keep], ids2[keep], metric).search(q, 3)[1])
    assert not set(gone) & set(third[1].ravel())
