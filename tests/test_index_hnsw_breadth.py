"""An HNSW graph searched for more neighbours than its ``efSearch`` keeps returns all of
them: the search widens to ``k`` candidates, as a graph index must to return ``k``."""

import numpy as np
import pytest

pytest.importorskip("faiss")

from dmlkit.index import FaissIndex  # noqa: E402


@pytest.mark.parametrize("factory", ["HNSW32", "IDMap2,HNSW32"])
def test_hnsw_returns_k_items_beyond_its_ef_search(factory):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    index = FaissIndex(16, factory=factory)
    index.add(x, labels=np.arange(2000) % 10)
    scores, ids = index.search(x[:8], 500)
    assert (ids >= 0).all() and np.isfinite(scores).all()
    assert all(len(set(row)) == 500 for row in ids.tolist())
    exact = np.argsort(((x[:8, None] - x[None]) ** 2).sum(-1), axis=1)[:, :500]
    pairs = zip(ids.tolist(), exact.tolist(), strict=True)
    overlap = np.mean([len(set(a) & set(b)) / 500 for a, b in pairs])
    assert overlap > 0.9  # a wide graph search finds nearly the exact 500


def test_hnsw_keeps_a_wider_ef_search_of_its_own():
    import faiss

    from dmlkit.index.faiss_index import _graph_breadth

    index = FaissIndex(8, factory="HNSW32", ef_search=64)
    assert _graph_breadth(faiss, index.index, 10) is None
    assert _graph_breadth(faiss, index.index, 64) is None
    assert _graph_breadth(faiss, index.index, 65).efSearch == 65


def test_hnsw_widens_with_faiss_torch_utils_loaded():
    import faiss.contrib.torch_utils  # noqa: F401 - replaces faiss's search methods

    rng = np.random.default_rng(1)
    x = rng.normal(size=(1000, 8)).astype(np.float32)
    for factory in ("HNSW32", "IVF4,Flat"):
        index = FaissIndex(8, factory=factory)
        if factory.startswith("IVF"):
            index.train(x)
        index.add(x)
        scores, ids = index.search(x[:4], 300 if factory == "HNSW32" else 5)
        assert (ids >= 0).all(), factory
