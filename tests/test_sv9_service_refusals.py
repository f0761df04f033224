"""Refused requests stay small and quick and say why: a huge list of the wrong kind is one
error, NaN bodies name the real reason, non-finite metadata is refused, body-size 413s are
counted in /metrics, and a keys file with a byte-order mark works."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("httpx", reason="the service tests need httpx (dev extra)")
pytest.importorskip("fastapi", reason="the service tests need fastapi (dmlkit[serve])")

KEY = "v" * 24 + "-sv9-refusals"
H = {"X-API-Key": KEY, "Content-Type": "application/json"}


@pytest.fixture
def client(tmp_path):
    from fastapi.testclient import TestClient

    from dmlkit.index import ExactIndex
    from dmlkit.service import ApiKeys, DurableIndex, ServiceConfig, create_app

    index = ExactIndex(4)
    index.add(np.eye(4, dtype=np.float32))
    index.save(tmp_path / "idx")
    store = DurableIndex(tmp_path / "idx")
    app = create_app(store, ApiKeys([KEY]), config=ServiceConfig(max_body_bytes=4 << 20))
    yield TestClient(app), store
    store.close()


@pytest.mark.parametrize("route,body", [
    ("/search", {"embeddings": [0.1] * 300_000, "k": 1}),
    ("/items", {"embeddings": [[0.1] * 4], "labels": ["x"] * 300_000}),
    ("/verify", {"a": {"embeddings": [0.5] * 300_000}, "b": {"embeddings": [[1] * 4]}}),
])
def test_a_huge_list_of_the_wrong_kind_is_one_short_quick_error(client, route, body):
    c, _ = client
    start = time.perf_counter()
    r = c.post(route, content=json.dumps(body), headers=H)
    took = time.perf_counter() - start
    assert r.status_code == 422 and len(r.content) < 1000, len(r.content)
    assert len(r.json()["detail"]) == 1  # (was: one error per element)
    assert took < 5  # (was: tens of MB, seconds)
    assert c.get("/health").status_code == 200


def test_validation_errors_are_capped_and_counted():
    from dmlkit.service.errors import SHOWN_ERRORS, validation_detail

    errors = [{"type": "int_type", "loc": ("body", "x", i), "msg": "Input should be a valid "
               "integer", "input": [1] * 1000} for i in range(10)]
    out = validation_detail(errors)
    assert len(out) == SHOWN_ERRORS + 1 and "7 more" in out[-1]["msg"]
    assert all("input" not in e for e in out)  # a list never comes back
    json.dumps(out, allow_nan=False)
    (nan,) = validation_detail([{"type": "t", "loc": ("body", "k"), "msg": "m",
                                 "input": float("nan"), "ctx": {"error": ValueError("v")}}])
    assert "input" not in nan and nan["ctx"] == {"error": "v"}


@pytest.mark.parametrize("route,body,words", [
    ("/search", '{"embeddings":[NaN],"k":1}', "Input should be a valid list"),
    ("/search", '{"embeddings":[[0.1,0,0,0]],"k":NaN}', "Input should be a valid integer"),
    ("/search", '{"embeddings":[[0.1,0,0,0]],"k":Infinity}', "Input should be a valid integer"),
    ("/items", '{"embeddings":[[0.1,0,0,0]],"labels":[NaN]}', "Input should be a valid integer"),
])
def test_nan_in_a_refused_field_gives_the_real_reason(client, route, body, words):
    c, _ = client
    r = c.post(route, content=body, headers=H)
    assert r.status_code == 422 and words in r.text, r.text
    assert "not JSON compliant" not in r.text and "NaN" not in r.text


@pytest.mark.parametrize("meta,where", [
    ('[{"x":Infinity}]', "metadata[0].x"),
    ('[{"a":[1,{"b":NaN}]}]', "metadata[0].a[1].b"),
    ("[-Infinity]", "metadata[0]"),
])
def test_non_finite_metadata_is_refused_naming_the_item(client, meta, where):
    c, store = client
    r = c.post("/items", content='{"embeddings":[[0.1,0,0,0]],"metadata":' + meta + '}',
               headers=H)
    assert r.status_code == 422 and where in r.text and "NaN or infinite" in r.text, r.text
    assert store.ntotal == 4  # nothing added


def test_stored_payloads_are_always_valid_json(tmp_path):
    from dmlkit.index import ExactIndex
    from dmlkit.service import DurableIndex

    index = ExactIndex(2)
    with pytest.raises(ValueError, match="finite numbers"):
        index.add(np.ones((1, 2), np.float32), payloads=[{"x": float("inf")}])
    assert index.ntotal == 0
    index.add(np.ones((1, 2), np.float32), payloads=[{"x": 1.5}])
    index.save(tmp_path / "idx")
    store = DurableIndex(tmp_path / "idx")
    try:
        with pytest.raises(ValueError, match="finite numbers"):
            store.add(np.ones((1, 2), np.float32), payloads=[float("nan")])
        assert store.ntotal == 1
    finally:
        store.close()
    text = (tmp_path / "idx" / "metadata.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in metadata.json"))


def test_a_body_over_the_limit_is_counted_in_metrics(tmp_path):
    from fastapi.testclient import TestClient

    from dmlkit.index import ExactIndex
    from dmlkit.service import ApiKeys, DurableIndex, ServiceConfig, create_app

    index = ExactIndex(4)
    index.save(tmp_path / "idx")
    store = DurableIndex(tmp_path / "idx")
    try:
        c = TestClient(create_app(store, ApiKeys([KEY]), config=ServiceConfig(
            max_body_bytes=1000)))
        body = json.dumps({"embeddings": [[0.5] * 4] * 200, "k": 1})
        assert c.post("/search", content=body, headers=H).status_code == 413
        assert c.post("/nowhere", content=body, headers=H).status_code == 413
        text = c.get("/metrics", headers=H).text
    finally:
        store.close()
    assert 'dmlkit_requests_total{route="/search",status="413"} 1' in text, text
    assert 'dmlkit_requests_total{route="unmatched",status="413"} 1' in text, text
    assert 'dmlkit_request_seconds_count{route="/search"} 1' in text


def test_a_keys_file_with_a_byte_order_mark_accepts_its_first_key(tmp_path):
    from dmlkit.service import ApiKeys

    path = tmp_path / "keys.txt"
    path.write_bytes(b"\xef\xbb\xbf" + f"{KEY}\n{KEY}-two\n".encode())
    keys = ApiKeys.from_sources(path)
    assert keys.check(KEY) is not None and keys.check(KEY + "-two") is not None
