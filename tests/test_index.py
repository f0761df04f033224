"""ExactIndex against brute-force numpy, faiss recall against it, persistence checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dmlkit.index import BaseIndex, ExactIndex, IndexFormatError, load_index


def brute(q, x, k, metric):
    q64, x64 = q.astype(np.float64), x.astype(np.float64)
    if metric == "cosine":
        q64 = q64 / np.linalg.norm(q64, axis=1, keepdims=True)
        x64 = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
    if metric == "l2":
        key = ((q64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
    else:
        key = -(q64 @ x64.T)
    order = np.stack([np.lexsort((np.arange(len(x)), row)) for row in key])[:, :k]
    return order, np.take_along_axis(key, order, 1)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_exact_matches_bruteforce(metric):
    rng = np.random.default_rng(0)
    if metric == "cosine":  # normalization rounding would break exact integer ties
        x, q = rng.standard_normal((300, 6)), rng.standard_normal((40, 6))
    else:  # integer vectors: many exact ties, broken by insertion order
        x, q = rng.integers(0, 3, (300, 6)), rng.integers(0, 3, (40, 6))
    x, q = x.astype(np.float32), q.astype(np.float32)
    index = ExactIndex(6, metric, query_chunk=7, ref_chunk=64)
    index.add(x[:100], ids=np.arange(100) * 10)
    index.add(x[100:], ids=np.arange(100, 300) * 10)
    scores, ids = index.search(q, 12)
    order, key = brute(q, x, 12, metric)
    assert (ids == order * 10).all()
    want = key if metric == "l2" else -key
    assert np.allclose(scores, want, atol=1e-4)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    ts, ti = index.search(torch.from_numpy(q), 12)  # torch in, torch out
    assert isinstance(ti, torch.Tensor) and (ti.numpy() == ids).all()


def test_padding_remove_metadata_and_range_search():
    x = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]], dtype=np.float32)
    index = ExactIndex(2)
    ids = index.add(x, labels=[4, 5, 6], paths=["a.png", "b.png", None],
                    payloads=[{"k": 1}, None, [1, 2]])
    assert ids.tolist() == [0, 1, 2]
    scores, found = index.search(x[:1], 5)
    assert found.tolist() == [[0, 1, 2, -1, -1]] and np.isinf(scores[0, 3:]).all()
    lims, d, r = index.range_search(np.array([[0.9, 0.0]], np.float32), 1.0)
    assert lims.tolist() == [0, 2] and r.tolist() == [1, 0]
    assert np.allclose(d, [0.01, 0.81], atol=1e-6)
    assert index.remove([1, 99]) == 1 and index.ntotal == 2
    assert index.search(x[1:2], 1)[1].tolist() == [[0]]
    meta = index.metadata([0, 1, 2])
    assert meta[0] == {"id": 0, "label": 4, "path": "a.png", "payload": {"k": 1}}
    assert meta[1] is None and meta[2]["payload"] == [1, 2]
    assert index.labels_of(np.array([[2, 0, 7]])).tolist() == [[6, 4, -1]]
    assert index.add(x[:1]).tolist() == [3]  # new ids continue after the largest


def test_bad_inputs_raise(tmp_path):
    index = ExactIndex(3)
    scores, ids = index.search(np.zeros((2, 3), np.float32), 2)  # empty index: all padding
    assert (ids == -1).all() and np.isinf(scores).all()
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError):
        index.save(tmp_path / "file")
    with pytest.raises(ValueError, match="shape"):
        index.add(np.zeros((2, 4), np.float32))
    index.add(np.zeros((2, 3), np.float32), ids=[1, 2])
    with pytest.raises(ValueError, match="unique"):
        index.add(np.zeros((1, 3), np.float32), ids=[2])
    with pytest.raises(ValueError, match="k must"):
        index.search(np.zeros((1, 3), np.float32), 0)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, 3), np.nan, np.float32), 1)
    with pytest.raises(ValueError, match="metric"):
        ExactIndex(3, "manhattan")


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "HNSW16", "IVF16,PQ4x4"])
def test_faiss_recall_against_exact(factory):
    faiss = pytest.importorskip("faiss")
    from dmlkit.index import FaissIndex

    faiss.omp_set_num_threads(1)  # OpenMP spinning is slow on small, shared CPUs
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2000, 16)).astype(np.float32)
    q = rng.standard_normal((50, 16)).astype(np.float32)
    exact = ExactIndex(16)
    exact.add(x)
    approx = FaissIndex(16, "l2", factory, nprobe=16 if "IVF" in factory else None,
                        ef_search=64 if "HNSW" in factory else None)
    approx.add(x)
    _, want = exact.search(q, 10)
    _, got = approx.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(want, got, strict=True)])
    floor = {"Flat": 1.0, "IVF16,Flat": 0.99, "HNSW16": 0.9, "IVF16,PQ4x4": 0.2}[factory]
    assert recall >= floor, recall


@pytest.mark.parametrize("kind", ["exact", "faiss"])
def test_persistence_round_trip(tmp_path, kind):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 8)).astype(np.float32)
    if kind == "faiss":
        pytest.importorskip("faiss")
        from dmlkit.index import FaissIndex

        index = FaissIndex(8, "cosine", "IVF4,Flat", nprobe=4)
    else:
        index = ExactIndex(8, "cosine")
    index.add(x, ids=np.arange(200) + 1000, labels=np.arange(200) % 3,
              paths=[f"p{i}" for i in range(200)], payloads=[{"i": i} for i in range(200)])
    index.remove([1000, 1001])
    index.save(tmp_path / "ix")
    index.save(tmp_path / "ix")  # overwriting an index directory is allowed
    loaded = load_index(tmp_path / "ix")
    assert type(loaded) is type(index) and loaded.ntotal == 198 and loaded.metric == "cosine"
    s1, i1 = index.search(x[:20], 5)
    s2, i2 = loaded.search(x[:20], 5)
    assert (i1 == i2).all() and np.allclose(s1, s2)
    assert loaded.metadata([1005]) == index.metadata([1005])
    assert not list(tmp_path.glob(".ix*"))  # no temporary directories left behind


def _saved(tmp_path):
    index = ExactIndex(4)
    index.add(np.arange(40, dtype=np.float32).reshape(10, 4))
    return index.save(tmp_path / "ix")


def test_corrupt_truncated_and_mismatched_files_are_refused(tmp_path):
    path = _saved(tmp_path)
    vec = path / "vectors.npy"
    raw = vec.read_bytes()
    vec.write_bytes(raw[:-8])  # truncated
    with pytest.raises(IndexFormatError, match="truncated"):
        BaseIndex.load(path)
    vec.write_bytes(raw[:-4] + b"\x00\x00\x80\x7f")  # same size, one value changed
    with pytest.raises(IndexFormatError, match="SHA-256"):
        BaseIndex.load(path)
    vec.write_bytes(raw)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["dim"] = 5  # manifest no longer matches the arrays
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="expected"):
        BaseIndex.load(path)
    manifest["dim"], manifest["version"] = 4, 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="version"):
        BaseIndex.load(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFormatError, match="JSON"):
        BaseIndex.load(path)
    with pytest.raises(IndexFormatError, match="not an index directory"):
        BaseIndex.load(tmp_path / "missing")


def test_pickled_arrays_are_never_loaded(tmp_path):
    path = _saved(tmp_path)
    np.save(path / "ids.npy", np.array([object()] * 10, dtype=object), allow_pickle=True)
    manifest = json.loads((path / "manifest.json").read_text())
    import hashlib

    data = (path / "ids.npy").read_bytes()
    manifest["files"]["ids.npy"] = {"sha256": hashlib.sha256(data).hexdigest(),
                                   "bytes": len(data)}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="npy"):
        BaseIndex.load(path)


@pytest.mark.parametrize("ids", [[-1, 3], [-7, 2], [2**63 + 5, 1],
                                 np.array([2**63 + 5, 1], dtype=np.uint64)])
def test_ids_must_be_non_negative_and_fit_int64(ids):
    from dmlkit.index import ExactIndex

    index = ExactIndex(2)
    with pytest.raises(ValueError, match="non-negative|64-bit"):
        index.add(np.ones((2, 2), np.float32), ids)
    assert index.ntotal == 0


def _kinds():
    from dmlkit.index import ExactIndex

    yield lambda: ExactIndex(4)
    try:
        import faiss  # noqa: F401

        from dmlkit.index import FaissIndex
    except ImportError:
        return
    yield lambda: FaissIndex(4, "l2", "Flat")
    yield lambda: FaissIndex(4, "l2", "IVF2,Flat")


@pytest.mark.parametrize("make", list(_kinds()))
def test_empty_index_and_k_past_its_size_are_padded(make):
    q = np.ones((2, 4), np.float32)
    empty = make()
    scores, ids = empty.search(q, 3)  # an untrained IVF included
    assert (ids == -1).all() and np.isinf(scores).all() and ids.shape == (2, 3)
    full = make()
    x = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    full.add(x)
    s5, i5 = full.search(q, 5)
    s60, i60 = full.search(q, 60)
    np.testing.assert_array_equal(i60[:, :5], i5)
    assert (i60[:, 50:] == -1).all() and np.isinf(s60[:, 50:]).all()
    with pytest.raises(ValueError, match="ask for k <= 50"):
        full.search(q, 10**9)  # would be 24 GB of padding


@pytest.mark.parametrize("factory, params, words", [
    ("HNSW32", {"nprobe": 8}, "nprobe applies to IVF indexes"),
    ("IVF4,Flat", {"ef_search": 8}, "efSearch applies to HNSW indexes"),
    ("IVF4,Flat", {"nprobe": 0}, "nprobe must be a positive integer"),
])
def test_search_parameters_of_another_index_kind_are_clear_errors(factory, params, words):
    pytest.importorskip("faiss")
    from dmlkit.index import FaissIndex

    with pytest.raises(ValueError, match=words):
        FaissIndex(8, "l2", factory, **params)


def test_nprobe_past_the_number_of_lists_is_warned_about() -> None:
    pytest.importorskip("faiss")
    from dmlkit.index import FaissIndex

    with pytest.warns(UserWarning, match="nprobe 64 is more than the 16 lists"):
        FaissIndex(8, "l2", "IVF16,Flat", nprobe=64)


def test_a_manifest_file_entry_that_is_not_an_object_is_a_format_error(tmp_path):
    index = ExactIndex(2)
    index.add(np.ones((2, 2), np.float32))
    index.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    name = next(iter(manifest["files"]))
    manifest["files"][name] = "oops"
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="is not an object"):
        load_index(tmp_path / "idx")
