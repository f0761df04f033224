"""Writes the log cannot hold leave nothing behind (in memory, in a checkpoint, or in a
replay after a crash) on every index kind; bodies the JSON parser cannot read are 422s
that say why; zero-length vectors are refused where they carry no direction."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("httpx", reason="the service tests need httpx (dev extra)")
pytest.importorskip("fastapi", reason="the service tests need fastapi (dmlkit[serve])")

KEY = "w" * 24 + "-write-failures"
H = {"X-API-Key": KEY, "Content-Type": "application/json"}
DIM = 8


def _exact(path, metric="l2"):
    from dmlkit.index import ExactIndex

    index = ExactIndex(DIM, metric)
    index.add(
        np.random.default_rng(0).normal(size=(20, DIM)).astype(np.float32), labels=np.arange(20) % 4
    )
    index.save(path)
    return path


def _hnsw(path):
    pytest.importorskip("faiss")
    from dmlkit.index import FaissIndex

    index = FaissIndex(DIM, "l2", "HNSW32")
    index.add(np.random.default_rng(0).normal(size=(20, DIM)).astype(np.float32))
    index.save(path)
    return path


MAKERS = {"exact": _exact, "hnsw": _hnsw}


def crash(store) -> None:
    """What the operating system does to a killed server: files closed, lock released."""
    store._wal.close()
    store._lock_file.close()


def no_space(*_args, **_kwargs):
    raise OSError(28, "No space left on device")


def state(store):
    ids = np.sort(np.asarray(store.index.ids))
    return store.ntotal, ids.tolist(), store._next_id


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
@pytest.mark.parametrize("ending", ["close", "crash"])
def test_an_add_whose_log_fsync_fails_is_kept_nowhere(tmp_path, monkeypatch, kind, ending):
    from dmlkit.service import DurableIndex

    path = MAKERS[kind](tmp_path / "idx")
    store = DurableIndex(path)
    store.add(np.ones((1, DIM), np.float32))  # a logged write before the failing one
    before, wal_size = state(store), store.wal_path.stat().st_size
    with monkeypatch.context() as m:
        m.setattr("dmlkit.service.store.os.fsync", no_space)
        with pytest.raises(OSError, match="No space left"):  # never NotImplementedError
            store.add(np.full((2, DIM), 3.0, np.float32), payloads=[{"a": 1}, None])
    assert state(store) == before
    assert store.wal_path.stat().st_size == wal_size  # the record's bytes are cut
    if ending == "close":
        store.close()
    else:
        crash(store)
    again = DurableIndex(path)
    assert again.ntotal == before[0]
    assert sorted(np.asarray(again.index.ids).tolist()) == before[1]
    again.close()


@pytest.mark.parametrize("ending", ["close", "crash"])
def test_a_delete_whose_log_write_fails_keeps_the_item(tmp_path, monkeypatch, ending):
    from dmlkit.service import DurableIndex

    store = DurableIndex(_exact(tmp_path / "idx"))
    before = state(store)
    hit = store.search(np.ones((1, DIM), np.float32), 3)
    with monkeypatch.context() as m:
        m.setattr("dmlkit.service.store.os.fsync", no_space)
        with pytest.raises(OSError, match="No space left"):
            store.delete(5)
    assert state(store) == before and store.wal_path.stat().st_size == 0
    again_hit = store.search(np.ones((1, DIM), np.float32), 3)
    np.testing.assert_array_equal(hit[1], again_hit[1])
    if ending == "close":
        store.close()
    else:
        crash(store)
    again = DurableIndex(tmp_path / "idx")
    assert 5 in np.asarray(again.index.ids).tolist() and again.ntotal == before[0]
    again.close()


def test_a_failed_write_of_the_record_leaves_no_bytes_in_the_log(tmp_path):
    from dmlkit.service import DurableIndex

    store = DurableIndex(_exact(tmp_path / "idx"))
    before = state(store)

    def half_then_fail(data):
        raw = open(store.wal_path, "ab")  # noqa: SIM115 - what a short write leaves behind
        raw.write(bytes(data[: len(data) // 2]))
        raw.close()
        raise OSError(28, "No space left on device")

    real = store._wal
    store._wal = _Failing(real, half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        store.add(np.ones((1, DIM), np.float32))
    store._wal = real
    assert state(store) == before and store.wal_path.stat().st_size == 0
    ok = store.add(np.ones((1, DIM), np.float32))  # the next write is whole and replays
    crash(store)
    again = DurableIndex(tmp_path / "idx")
    assert again.replayed == 1 and again.skipped == 0
    assert int(ok[0]) in np.asarray(again.index.ids).tolist()
    again.close()


class _Failing:
    """The log file with its ``write`` replaced."""

    def __init__(self, real, write) -> None:
        self._real, self.write = real, write

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_an_hnsw_delete_is_refused_and_leaves_the_log_empty(tmp_path):
    from dmlkit.service import DurableIndex

    store = DurableIndex(_hnsw(tmp_path / "idx"))
    before = state(store)
    with pytest.raises(NotImplementedError):
        store.delete(3)
    assert state(store) == before and store.wal_path.stat().st_size == 0
    store.close()


@pytest.fixture
def served(tmp_path):
    from fastapi.testclient import TestClient

    from dmlkit.service import ApiKeys, DurableIndex, create_app

    def make(metric="l2", embedder=None):
        store = DurableIndex(_exact(tmp_path / f"idx-{metric}", metric))
        stores.append(store)
        return TestClient(create_app(store, ApiKeys([KEY]), embedder=embedder)), store

    stores: list = []
    yield make
    for store in stores:
        store.close()


def test_a_write_the_log_cannot_hold_is_a_503_that_says_so(served, monkeypatch):
    c, store = served()
    n = store.ntotal
    monkeypatch.setattr("dmlkit.service.store.os.fsync", no_space)
    r = c.post("/items", json={"embeddings": [[1.0] * DIM]}, headers=H)
    assert r.status_code == 503, r.text
    assert "not stored" in r.json()["detail"] and "No space left" in r.json()["detail"]
    r = c.delete("/items/3", headers=H)
    assert r.status_code == 503 and "item 3 was not deleted" in r.json()["detail"]
    assert store.ntotal == n
    monkeypatch.undo()
    assert c.get("/health").json()["items"] == n
    schema = c.get("/openapi.json", headers=H).json()
    assert "503" in schema["paths"]["/items"]["post"]["responses"]
    assert "503" in schema["paths"]["/items/{item_id}"]["delete"]["responses"]


@pytest.mark.parametrize(
    "raw,says",
    [
        (b'{"embeddings": [[1, 2, 3, 4, 5, 6, 7, 8]], "metadata": ["\xff\xfe"]}', "UTF-8"),
        (b'{"embeddings": [[' + b"9" * 5000 + b", 0, 0, 0, 0, 0, 0, 0]]}", "4300 digits"),
        (b'{"embeddings": [[1, 2, 3, 4, 5, 6, 7, 8]], "k": ' + b"1" * 4400 + b"}", "4300 digits"),
        (
            b'{"embeddings": [[1, 2, 3, 4, 5, 6, 7, 8]], "metadata": [' + b"7" * 4301 + b"]}",
            "4300 digits",
        ),
    ],
    ids=["not-utf8", "long-int-embedding", "long-int-k", "long-int-metadata"],
)
def test_a_body_the_json_parser_cannot_read_is_a_422_naming_why(served, raw, says):
    c, _ = served()
    route = "/search" if b'"k"' in raw or b"9999" in raw else "/items"
    r = c.post(route, content=raw, headers=H)
    assert r.status_code == 422, r.text
    assert says in r.json()["detail"]
    assert c.get("/health").status_code == 200


def test_an_all_zero_embedding_on_a_cosine_index_is_refused_naming_the_row(served):
    c, store = served("cosine")
    n = store.ntotal
    body = {"embeddings": [[1.0] * DIM, [0.0] * DIM]}
    r = c.post("/items", content=json.dumps(body), headers=H)
    assert r.status_code == 422 and "embeddings[1] is all zeros" in r.json()["detail"]
    r = c.post("/search", json={"embeddings": [[0.0] * DIM], "k": 2}, headers=H)
    assert r.status_code == 422 and "embeddings[0]" in r.json()["detail"]
    assert store.ntotal == n
    c2, _ = served("l2")  # a zero vector is a point like any other under l2
    assert c2.post("/items", json={"embeddings": [[0.0] * DIM]}, headers=H).status_code == 200


class _Normalizing:
    """A model whose output is L2-normalized: an input whose norm overflows gives zeros."""

    n_features, dim, input_kind = 4, DIM, "numeric"

    def __call__(self, x):
        y = np.tile(np.asarray(x, np.float32), 2)
        with np.errstate(over="ignore", invalid="ignore"):
            norm = np.linalg.norm(y, axis=1, keepdims=True)
            return np.where(np.isfinite(norm), y / np.maximum(norm, 1e-12), 0.0)


def test_a_zero_length_model_output_is_a_422_on_a_cosine_index(served):
    c, _ = served(embedder=_Normalizing())  # l2: a zero vector can be a true output
    assert c.post("/embed", json={"inputs": [[1e30] * 4]}, headers=H).status_code == 200
    c, _ = served(metric="cosine", embedder=_Normalizing())
    assert c.post("/embed", json={"inputs": [[1.0] * 4]}, headers=H).status_code == 200
    r = c.post("/embed", json={"inputs": [[1.0] * 4, [1e30] * 4]}, headers=H)
    assert r.status_code == 422, r.text
    assert "embedding of inputs[1] is all zeros" in r.json()["detail"]
    r = c.post("/search", json={"inputs": [[1e30] * 4]}, headers=H)
    assert r.status_code == 422
