"""What the service promises in its answers and its schema: metadata that could not be
sent back is refused when added, a number too large for a float is a 422, unknown fields
are refused, the OpenAPI schema declares the key, the refusals and the ``k`` bound, and
a 429 says when to retry (in-process, through FastAPI's TestClient)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("httpx", reason="the service tests need httpx (dev extra)")
pytest.importorskip("fastapi", reason="the service tests need fastapi (dmlkit[serve])")

KEY = "c" * 24 + "-sv10-contract"
H = {"X-API-Key": KEY, "Content-Type": "application/json"}
ROW = [0.1, 0.2, 0.3, 0.4]


def _app(tmp_path, **config):
    from dmlkit.index import ExactIndex
    from dmlkit.service import ApiKeys, DurableIndex, ServiceConfig, create_app

    index = ExactIndex(4)
    index.add(np.eye(4, dtype=np.float32))
    index.save(tmp_path / "idx")
    store = DurableIndex(tmp_path / "idx")
    return create_app(store, ApiKeys([KEY]), config=ServiceConfig(**config)), store


@pytest.fixture
def client(tmp_path):
    from fastapi.testclient import TestClient

    app, store = _app(tmp_path)
    yield TestClient(app, raise_server_exceptions=False), store
    store.close()


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    "meta,words",
    [
        ('["\\ud800"]', "valid Unicode"),
        ('[{"\\udfff": 1}]', "valid Unicode"),
        ("[" + _nested(300) + "]", "levels"),
        ('[{"a": ' + _nested(40) + "}]", "levels"),
    ],
    ids=["lone-surrogate", "surrogate-key", "300-deep", "40-deep-in-object"],
)
def test_metadata_that_cannot_be_sent_back_is_refused_naming_the_row(client, meta, words):
    c, store = client
    before = store.ntotal
    body = '{"embeddings": [[0.1, 0.2, 0.3, 0.4]], "metadata": ' + meta + "}"
    r = c.post("/items", content=body, headers=H)
    assert r.status_code == 422, r.text
    assert "metadata[0]" in r.json()["detail"] and words in r.json()["detail"], r.text
    assert store.ntotal == before
    r = c.post("/search", json={"embeddings": [ROW], "k": 10}, headers=H)
    assert r.status_code == 200 and len(r.json()["results"][0]) == before


def test_metadata_nested_within_the_limit_is_kept_and_returned(client):
    c, _ = client
    meta = json.loads(_nested(32))
    r = c.post("/items", json={"embeddings": [[9.0, 0, 0, 0]], "metadata": [meta]}, headers=H)
    assert r.status_code == 200, r.text
    (hit,) = c.post("/search", json={"embeddings": [[9.0, 0, 0, 0]], "k": 1}, headers=H).json()[
        "results"
    ][0]
    assert hit["metadata"]["payload"] == meta


def test_a_server_side_serialization_failure_is_a_500_not_the_clients_fault(client):
    c, store = client
    store.add(np.array([[5.0, 0, 0, 0]], dtype=np.float32), payloads=["\ud800"])
    r = c.post("/search", json={"embeddings": [[5.0, 0, 0, 0]], "k": 1}, headers=H)
    assert r.status_code == 500, r.text


HUGE = "1" + "0" * 400


@pytest.mark.parametrize(
    "route,body",
    [
        ("/search", '{"embeddings": [[' + HUGE + ', 0, 0, 0]], "k": 1}'),
        ("/items", '{"embeddings": [[' + HUGE + ", 0, 0, 0]]}"),
        ("/identify", '{"embeddings": [[0, ' + HUGE + ", 0, 0]]}"),
        (
            "/verify",
            '{"a": {"embeddings": [[' + HUGE + ', 0, 0, 0]]}, "b": {"embeddings": [[1, 0, 0, 0]]}}',
        ),
        ("/embed", '{"inputs": [[' + HUGE + ", 0, 0, 0]]}"),
    ],
    ids=["search", "items", "identify", "verify", "embed"],
)
def test_an_integer_too_large_for_a_float_is_a_422(client, route, body):
    c, _ = client
    r = c.post(route, content=body, headers=H)
    assert r.status_code == 422, r.text
    assert "too large" in r.text


@pytest.mark.parametrize(
    "route,body,field",
    [
        ("/items", {"embeddings": [ROW], "label": [3], "meta": [{"x": 1}]}, "label"),
        ("/search", {"embeddings": [ROW], "top_k": 50}, "top_k"),
        (
            "/verify",
            {"a": {"embeddings": [ROW]}, "b": {"embeddings": [ROW]}, "threshold": 0.5},
            "threshold",
        ),
        ("/verify", {"a": {"embeddings": [ROW], "k": 1}, "b": {"embeddings": [ROW]}}, "k"),
        ("/embed", {"inputs": [ROW], "k": 3}, "k"),
        ("/identify", {"embeddings": [ROW], "threshold": 0.1}, "threshold"),
    ],
)
def test_an_unknown_field_is_refused_naming_it(client, route, body, field):
    c, store = client
    before = store.ntotal
    r = c.post(route, json=body, headers=H)
    assert r.status_code == 422, r.text
    error = r.json()["detail"][0]
    assert error["type"] == "extra_forbidden" and error["loc"][-1] == field
    assert repr(field) in error["msg"]
    assert all(e["type"] == "extra_forbidden" for e in r.json()["detail"])
    assert store.ntotal == before


def test_the_schema_declares_the_key_the_refusals_and_the_k_bound(tmp_path):
    from fastapi.testclient import TestClient

    app, store = _app(tmp_path, max_k=70)
    try:
        schema = TestClient(app).get("/openapi.json", headers=H).json()
    finally:
        store.close()
    schemes = schema["components"]["securitySchemes"]
    assert {"type": "http", "scheme": "bearer"}.items() <= next(
        s for s in schemes.values() if s["type"] == "http"
    ).items()
    paths = schema["paths"]
    assert "security" not in paths["/health"]["get"]
    expected = {
        ("/search", "post"): {"401", "413", "415", "422", "429"},
        ("/items", "post"): {"401", "413", "415", "422", "429"},
        ("/items/{item_id}", "delete"): {"401", "404", "409", "422", "429"},
        ("/verify", "post"): {"401", "409", "413", "415", "422", "429"},
        ("/embed", "post"): {"401", "413", "415", "422", "429"},
        ("/identify", "post"): {"401", "413", "415", "422", "429"},
        ("/metrics", "get"): {"401", "429"},
    }
    for (path, method), codes in expected.items():
        op = paths[path][method]
        assert op.get("security"), path
        assert codes <= set(op["responses"]), (path, set(op["responses"]))
        detail = op["responses"]["401"]["content"]["application/json"]["schema"]
        assert detail["$ref"].rsplit("/", 1)[1] in schema["components"]["schemas"]
    ref = paths["/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    k = schema["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]["properties"]["k"]
    assert k["maximum"] == 70 and k["minimum"] == 1


def test_a_bad_key_is_still_a_401_and_bearer_works(client):
    c, _ = client
    body = {"embeddings": [ROW], "k": 1}
    r = c.post("/search", json=body, headers={"Authorization": "Bearer wrong-key-wrong-key"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "missing or wrong API key" in r.json()["detail"]
    assert c.post("/search", json=body).status_code == 401
    ok = c.post("/search", json=body, headers={"Authorization": f"bearer {KEY}"})
    assert ok.status_code == 200


def test_a_rate_limited_request_says_when_to_retry(tmp_path):
    from fastapi.testclient import TestClient

    app, store = _app(tmp_path, rate=0.1, burst=2)
    try:
        c = TestClient(app)
        codes = [c.get("/metrics", headers=H) for _ in range(3)]
    finally:
        store.close()
    assert [r.status_code for r in codes] == [200, 200, 429]
    wait = int(codes[2].headers["retry-after"])
    assert 1 <= wait <= 10  # one token every 10 s


def test_the_limiter_tells_the_wait_until_the_next_token():
    from dmlkit.service import RateLimiter

    limiter = RateLimiter(rate=0.5, burst=1)
    assert limiter.take(b"k") == 0.0
    wait = limiter.take(b"k")
    assert 1.9 < wait <= 2.0
    assert limiter.allow(b"other") and not limiter.allow(b"other")
