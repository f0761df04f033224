"""What the service takes and refuses: shapes, ids, ``k``, content types, model output,
and the OpenAPI schema behind the key (in-process, through FastAPI's TestClient)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("httpx", reason="the service tests need httpx (dev extra)")
pytest.importorskip("fastapi", reason="the service tests need fastapi (dmlkit[serve])")

KEY = "r" * 24 + "-requests"
CNN = {
    "name": "cnn",
    "data": {"name": "digits", "max_per_class": 6, "max_heldout_per_class": 4},
    "model": {"name": "small_cnn", "in_channels": 1, "image_size": 8, "dim": 8, "width": 4},
    "training": {"epochs": 1, "progress": False, "num_threads": 1},
}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """A client of the app over a small CNN run (inputs (1, 8, 8)) and its index; the
    heldout inputs, their embeddings and the run's embedder."""
    from fastapi.testclient import TestClient

    from dmlkit.config import Config
    from dmlkit.index import ExactIndex
    from dmlkit.runs import build_splits, embed, load_run
    from dmlkit.service import ApiKeys, DurableIndex, create_app, load_embedder
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("requests")
    train_run(Config.from_dict(CNN), root / "run", log=lambda *a: None)
    run = load_run(root / "run")
    _, heldout = build_splits(run.config)
    emb, _ = embed(run.model, heldout)
    index = ExactIndex(8)
    index.add(emb.numpy())
    index.save(root / "idx")
    store = DurableIndex(root / "idx")
    embedder = load_embedder(root / "run")
    assert embedder.input_shape == (1, 8, 8)
    client = TestClient(create_app(store, ApiKeys([KEY]), embedder))
    yield client, heldout.x.numpy(), emb.numpy(), embedder
    store.close()


H = {"X-API-Key": KEY}


def test_openapi_needs_the_key_and_there_is_no_open_docs_page(service):
    client, *_ = service
    assert client.get("/openapi.json").status_code == 401
    schema = client.get("/openapi.json", headers=H)
    assert schema.status_code == 200 and "/search" in schema.json()["paths"]
    for page in ("/docs", "/redoc"):
        assert client.get(page).status_code == 404
    assert client.get("/health").status_code == 200


def test_non_finite_model_output_is_422(service):
    client, *_, model = service
    non_finite = 0
    for value in (2e38, -2e38, 1e30, -1e30):  # overflow inside the model: NaN for some
        out = model(np.full((1, 64), value, np.float32))
        finite = bool(np.isfinite(out).all())
        non_finite += not finite
        for route in ("/embed", "/search"):
            r = client.post(route, json={"inputs": [[value] * 64]}, headers=H)
            if finite:
                assert r.status_code == 200, r.text
                continue
            assert r.status_code == 422, r.text
            assert "contain NaN or infinite values" in r.json()["detail"]
    assert non_finite  # the case was exercised


def test_inputs_take_the_model_shape_or_flat_rows_only(service):
    client, x, emb, _ = service  # x: (n, 1, 8, 8)
    rows = x[:3]
    for shaped in (rows, rows.reshape(3, 64), rows.reshape(3, 8, 8)):
        r = client.post("/embed", json={"inputs": shaped.tolist()}, headers=H)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json()["embeddings"]), emb[:3], atol=1e-5)
    for bad in (rows.reshape(3, 4, 16), rows.reshape(3, 8, 8, 1), rows.reshape(3, 1, 64)):
        for route in ("/embed", "/search", "/items"):
            r = client.post(route, json={"inputs": bad.tolist()}, headers=H)
            assert r.status_code == 422, (route, bad.shape, r.text)
            detail = r.json()["detail"]
            assert f"shape (n, {', '.join(map(str, bad.shape[1:]))})" in detail
            assert "(n, 1, 8, 8), (n, 8, 8) or (n, 64)" in detail


def test_search_refuses_embeddings_that_are_not_rows(service):
    client, _, emb, _ = service
    r = client.post("/search", json={"embeddings": [emb[:2].tolist()], "k": 1}, headers=H)
    assert r.status_code == 422 and "shape (n, 8); got shape (1, 2, 8)" in r.text
    r = client.post("/search", json={"embeddings": emb[:2].tolist(), "k": 1}, headers=H)
    assert r.status_code == 200


@pytest.mark.parametrize("k", [True, "5", 5.0, "five"])
def test_k_must_be_an_integer(service, k):
    client, _, emb, _ = service
    r = client.post("/search", json={"embeddings": emb[:1].tolist(), "k": k}, headers=H)
    assert r.status_code == 422 and "k" in json.dumps(r.json()["detail"]), r.text


def test_item_ids_in_the_path_are_integers(service):
    client, _, emb, _ = service
    (new,) = client.post("/items", json={"embeddings": emb[:1].tolist()},
                         headers=H).json()["ids"]
    for path in (f"{new}.0", f"{new}e0", f"+{new}", "-1", "abc", str(1 << 63), " 1"):
        r = client.delete(f"/items/{path}", headers=H)
        assert r.status_code == 422 and "non-negative integers" in r.text, (path, r.text)
    r = client.post("/search", json={"embeddings": emb[:1].tolist(), "k": 2}, headers=H)
    assert new in [hit["id"] for hit in r.json()["results"][0]]  # nothing was deleted
    assert client.delete(f"/items/{new}", headers=H).json() == {"deleted": new}
    assert client.delete(f"/items/{new}", headers=H).status_code == 404


def test_a_body_not_sent_as_json_is_415_and_says_so(service):
    client, _, emb, _ = service
    body = json.dumps({"embeddings": [[0.5] * 8] * 20000, "k": 1})  # ~ 1 MB
    for headers in ({"content-type": "application/x-www-form-urlencoded"},
                    {"content-type": "text/plain"}, {}):
        r = client.post("/search", content=body, headers={**H, **headers})
        assert r.status_code == 415, r.text
        assert "Content-Type: application/json" in r.json()["detail"]
        assert len(r.content) < 500  # the body is not echoed back
    r = client.post("/search", content=json.dumps({"embeddings": emb[:1].tolist(), "k": 1}),
                    headers={**H, "content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200


def test_validation_errors_do_not_echo_large_inputs(service):
    client, *_ = service
    r = client.post("/search", json={"embeddings": "x" * 100_000}, headers=H)
    assert r.status_code == 422 and len(r.content) < 1000
    assert r.json()["detail"][0]["loc"] == ["body", "embeddings"]
    assert "input" not in r.json()["detail"][0]
    r = client.post("/search", json={"embeddings": "nope"}, headers=H)
    assert r.status_code == 422 and r.json()["detail"][0]["input"] == "nope"  # short: kept
