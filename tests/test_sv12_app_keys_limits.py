"""The service's refusals stay short and keyed: a refused value is never echoed whole, a
request without a key is a 401 whatever its body, nesting too deep is a 422, the default
``k`` respects ``--max-k``; keys must be printable ASCII; ``--verify-threshold`` and
``--verifier`` are not taken together; Ctrl-C stops ``serve`` with 130 and a stalled body
during shutdown prints no traceback."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest
from cli_helpers import error_line
from typer.testing import CliRunner

pytest.importorskip("httpx", reason="the service tests need httpx (dev extra)")
pytest.importorskip("fastapi", reason="the service tests need fastapi (dmlkit[serve])")
uvicorn = pytest.importorskip("uvicorn")

KEY = "q" * 24 + "-sv12-keys"
H = {"X-API-Key": KEY, "Content-Type": "application/json"}
runner = CliRunner()


def make_app(tmp_path, **limits):
    from fastapi.testclient import TestClient

    from dmlkit.index import ExactIndex
    from dmlkit.service import ApiKeys, DurableIndex, ServiceConfig, create_app

    index = ExactIndex(4)
    index.add(np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32))
    index.save(tmp_path / "idx")
    store = DurableIndex(tmp_path / "idx")
    app = create_app(store, ApiKeys([KEY]), config=ServiceConfig(**limits))
    return TestClient(app), store


@pytest.fixture
def client(tmp_path):
    client, store = make_app(tmp_path)
    yield client
    store.close()


# --- a refused value is cut short -------------------------------------------------------

@pytest.mark.parametrize("body", [
    {"inputs": [[0.5] * 3 + ["x" * 300_000]], "k": 1},
    {"embeddings": [[0.5] * 3 + ["x" * 300_000]], "k": 1},
    {"embeddings": [[0.5] * 3 + [{"a": "y" * 300_000}]], "k": 1},
])
def test_a_refused_long_value_is_not_echoed_back(client, body):
    from dmlkit.service.errors import ECHO_CHARS

    res = client.post("/search", json=body, headers=H)
    assert res.status_code == 422
    detail = res.json()["detail"]
    assert "numbers" in detail and len(detail) < ECHO_CHARS + 200, detail[:400]


# --- keys --------------------------------------------------------------------------------

def test_a_key_that_is_not_printable_ascii_is_refused_naming_file_and_line(tmp_path):
    from dmlkit.service import ApiKeys

    key = "ünïcödé-key-0123456789abcdef"
    path = tmp_path / "keys.txt"
    path.write_text("# keys\n" + "a" * 24 + "\n" + key + "\n", encoding="utf-8")
    with pytest.raises(ValueError) as err:
        ApiKeys.from_sources(path)
    message = str(err.value)
    assert str(path) in message and "line 3" in message and "ASCII" in message
    assert key not in message and "\n" not in message
    with pytest.raises(ValueError, match="ASCII"):
        ApiKeys(["b" * 24, "tab\tinside-the-key-0123456789"])


def test_serve_refuses_a_non_ascii_key_with_one_error_line(tmp_path):
    from dmlkit.cli.main import app

    (tmp_path / "keys.txt").write_text("ünïcödé-key-0123456789abcdef\n", encoding="utf-8")
    res = runner.invoke(app, ["serve", "--index", str(tmp_path / "idx"), "--api-keys-file",
                              str(tmp_path / "keys.txt"), "--port", "0"])
    assert res.exit_code == 1, res.output
    error_line(res, "line 1", "ASCII")


def test_a_printable_ascii_key_with_punctuation_authenticates(tmp_path):
    from fastapi.testclient import TestClient

    from dmlkit.index import ExactIndex
    from dmlkit.service import ApiKeys, DurableIndex, create_app

    key = "a-b_c.d~e+f/g=h!0123456789"
    index = ExactIndex(4)
    index.save(tmp_path / "idx")
    store = DurableIndex(tmp_path / "idx")
    try:
        client = TestClient(create_app(store, ApiKeys([key])))
        assert client.get("/metrics", headers={"X-API-Key": key}).status_code == 200
    finally:
        store.close()


# --- the key comes before the body ----------------------------------------------------

@pytest.mark.parametrize("content,ctype", [
    (b"{bad", "application/json"),
    (b"[" * 5000 + b"]" * 5000, "application/json"),
    (b'{"embeddings": [[1, 2, 3, 4]]}', "text/plain"),
    (b'{"embeddings": [[1, 2, 3, 4]]}', None),
], ids=["bad-json", "deep", "text-plain", "no-content-type"])
def test_a_request_without_a_key_is_401_whatever_its_body(client, content, ctype):
    headers = {} if ctype is None else {"Content-Type": ctype}
    for route in ("/search", "/items", "/verify"):
        res = client.post(route, content=content, headers=headers)
        assert res.status_code == 401, (route, res.text[:200])
        assert res.headers["www-authenticate"] == "Bearer"
    res = client.post("/search", content=content, headers={**headers, "X-API-Key": "n" * 24})
    assert res.status_code == 401


def test_keyless_refusals_are_counted_under_their_route(client):
    client.post("/search", content=b"{bad", headers={"Content-Type": "application/json"})
    text = client.get("/metrics", headers=H).text
    assert 'route="/search"' in text and 'status="401"' in text, text


def test_the_rate_limit_comes_before_the_body(tmp_path):
    client, store = make_app(tmp_path, rate=0.01, burst=1)
    try:
        assert client.post("/search", json={"embeddings": [[1, 0, 0, 0]]},
                           headers=H).status_code == 200
        res = client.post("/search", content=b"{bad", headers=H)
        assert res.status_code == 429 and int(res.headers["retry-after"]) >= 1
    finally:
        store.close()


def test_health_and_unknown_routes_need_no_key(client):
    assert client.get("/health").status_code == 200
    assert client.get("/no-such-route").status_code == 404


@pytest.mark.parametrize("depth", [70, 600, 5000, 50_000])
@pytest.mark.parametrize("field", ["inputs", "embeddings"])
def test_nesting_too_deep_is_a_422_that_says_so(client, depth, field):
    body = b'{"%s": ' % field.encode() + b"[" * depth + b"]" * depth + b', "k": 1}'
    res = client.post("/search", content=body, headers=H)
    assert res.status_code == 422, res.text[:300]
    assert "deep" in str(res.json()["detail"]), res.text[:300]
    assert client.get("/health").status_code == 200


# --- default k -------------------------------------------------------------------------

def test_a_search_without_k_under_a_small_max_k_uses_the_limit(tmp_path):
    client, store = make_app(tmp_path, max_k=3)
    try:
        res = client.post("/search", json={"embeddings": [[1, 0, 0, 0]]}, headers=H)
        assert res.status_code == 200, res.text
        assert len(res.json()["results"][0]) == 3
        k = client.get("/openapi.json", headers=H).json()[
            "components"]["schemas"]["SearchRequest"]["properties"]["k"]
        assert k["default"] == 3 and k["maximum"] == 3
        assert client.post("/search", json={"embeddings": [[1, 0, 0, 0]], "k": 4},
                           headers=H).status_code == 422
    finally:
        store.close()


def test_a_search_without_k_under_the_default_limit_gets_five(client):
    res = client.post("/search", json={"embeddings": [[1, 0, 0, 0]]}, headers=H)
    assert res.status_code == 200 and len(res.json()["results"][0]) == 5
    k = client.get("/openapi.json", headers=H).json()[
        "components"]["schemas"]["SearchRequest"]["properties"]["k"]
    assert k["default"] == 5


# --- --verify-threshold with --verifier ------------------------------------------------

def test_verify_threshold_with_a_verifier_is_refused_at_start(tmp_path):
    from dmlkit.cli.main import app
    from dmlkit.cli.serve import check_settings

    res = runner.invoke(app, ["serve", "--index", str(tmp_path / "idx"), "--api-keys-file",
                              str(tmp_path / "keys.txt"), "--verifier", str(tmp_path / "kit"),
                              "--verify-threshold", "0.5"])
    assert res.exit_code == 1, res.output
    error_line(res, "--verify-threshold", "--verifier")
    settings = dict(port=0, max_batch=1, max_body_mb=1.0, rate=1.0, burst=1,
                    checkpoint_every=1, identify_threshold=None)
    check_settings(**settings, verify_threshold=0.5, verifier=None)
    check_settings(**settings, verify_threshold=None, verifier=tmp_path / "kit")


# --- stopping ----------------------------------------------------------------------------

def _serve(tmp_path) -> subprocess.Popen:
    from dmlkit.index import ExactIndex

    index = ExactIndex(4)
    index.add(np.eye(4, dtype=np.float32))
    index.save(tmp_path / "idx")
    (tmp_path / "keys.txt").write_text(KEY + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "dmlkit", "serve", "--index",
                             str(tmp_path / "idx"), "--api-keys-file",
                             str(tmp_path / "keys.txt"), "--port", "0"],
                            stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    assert line.startswith("serving 4 items"), line
    return proc


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_ctrl_c_stops_serve_with_130_and_sigterm_with_0(tmp_path, sig, code):
    proc = _serve(tmp_path)
    try:
        proc.send_signal(sig)
        rc = proc.wait(60)
        rest = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert rc == code, rest
    assert "Traceback" not in rest, rest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "keys.txt"]  # checkpointed
