"""The HTTP service, started for real (uvicorn in a subprocess on a loopback port)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="the service tests need httpx (dev extra)")
pytest.importorskip("fastapi", reason="the service tests need fastapi (dmlkit[serve])")

KEY, KEY2 = "k" * 24 + "-first", "k" * 24 + "-second"
TINY = {
    "name": "tiny",
    "data": {"name": "digits", "max_per_class": 10, "max_heldout_per_class": 10},
    "model": {"name": "mlp", "dim": 8, "hidden": [16]},
    "training": {"epochs": 1, "progress": False},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(run: Path | None, index: Path, keys: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "dmlkit", "serve", "--index", str(index), "--port", str(port),
           "--api-keys-file", str(keys), *extra]
    if run is not None:
        cmd += ["--run", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read().decode()}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from dmlkit.config import Config
    from dmlkit.index import ExactIndex
    from dmlkit.runs import build_splits, embed, load_run
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("service")
    cfg = Config.from_dict(TINY)
    train_run(cfg, root / "run", log=lambda *a: None)
    run = load_run(root / "run")
    _, heldout = build_splits(run.config)
    emb, labels = embed(run.model, heldout)
    index = ExactIndex(8)
    index.add(emb.numpy(), labels=labels.numpy(), payloads=[{"row": i} for i in range(len(emb))])
    index.save(root / "idx")
    (root / "keys.txt").write_text(f"{KEY}\n{KEY2}\n")
    return root, heldout.x.flatten(1).numpy(), emb.numpy(), labels.numpy()


@pytest.fixture(scope="module")
def server(setup):
    root, *_ = setup
    import shutil

    shutil.copytree(root / "idx", root / "idx_live")
    proc, url = start(root / "run", root / "idx_live", root / "keys.txt",
                      "--max-body-mb", "0.5", "--verify-threshold", "-1.0", "--rate", "5",
                      "--burst", "10000")
    yield url
    stop(proc)


def h(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def crash(store) -> None:
    """What the operating system does to a killed server: files closed, lock released."""
    store._wal.close()
    store._lock_file.close()


def test_auth(server):
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    assert httpx.post(f"{server}/search", json={"embeddings": [[0] * 8]}).status_code == 401
    r = httpx.post(f"{server}/search", json={"embeddings": [[0] * 8]}, headers=h("wrong" * 5))
    assert r.status_code == 401
    r = httpx.post(f"{server}/search", json={"embeddings": [[0] * 8]},
                   headers={"X-API-Key": KEY})
    assert r.status_code == 200
    assert httpx.get(f"{server}/metrics").status_code == 401


def test_embed_and_search_equal_the_library(server, setup):
    from dmlkit.index import load_index

    root, x, emb, labels = setup
    r = httpx.post(f"{server}/embed", json={"inputs": x[:5].tolist()}, headers=h())
    np.testing.assert_allclose(np.array(r.json()["embeddings"]), emb[:5], atol=1e-5)
    shaped = x[:3].reshape(3, 8, 8).tolist()  # the MLP takes (n, 64): not guessed
    r = httpx.post(f"{server}/search", json={"inputs": shaped, "k": 4}, headers=h())
    assert r.status_code == 422 and "takes inputs of shape (n, 64)" in r.text
    r = httpx.post(f"{server}/search", json={"inputs": x[:3].tolist(), "k": 4}, headers=h())
    assert r.status_code == 200
    _, ids = load_index(root / "idx").search(emb[:3], 4)
    got = [[hit["id"] for hit in row] for row in r.json()["results"]]
    assert got == ids.tolist()
    first = r.json()["results"][0][0]
    assert first["metadata"]["payload"] == {"row": int(ids[0, 0])}
    assert first["metadata"]["label"] == int(labels[ids[0, 0]])


@pytest.mark.parametrize("body, status, words", [
    ({"embeddings": [[0.0] * 7]}, 422, "dimension 7"),
    ({"inputs": [[0.0] * 10]}, 422, "10 values per row"),
    ({"embeddings": [[0.0] * 8], "inputs": [[0.0] * 64]}, 422, "exactly one"),
    ({"embeddings": []}, 422, "empty batch"),
    ({"embeddings": [[0.0] * 8], "k": 0}, 422, ""),
    ({"embeddings": [[0.0] * 8], "k": 5000}, 422, "over the limit"),
    ({"embeddings": [[0.0] * 8, [0.0] * 3]}, 422, "equal-length"),
    ({"embeddings": "nope"}, 422, ""),
    ({"inputs": ["a sentence", "another"]}, 422, "takes numeric rows of 64 values"),
])
def test_bad_requests_are_4xx_and_the_server_keeps_serving(server, body, status, words):
    r = httpx.post(f"{server}/search", json=body, headers=h())
    assert r.status_code == status and words in r.text
    assert httpx.get(f"{server}/health").status_code == 200


def test_nan_malformed_and_oversized(server):
    r = httpx.post(f"{server}/search", content=b'{"embeddings": [[NaN, 0, 0, 0, 0, 0, 0, 0]]}',
                   headers={**h(), "content-type": "application/json"})
    assert r.status_code == 422 and "NaN" in r.text
    r = httpx.post(f"{server}/search", content=b'{"embeddings": [[0, ', headers={
        **h(), "content-type": "application/json"})
    assert r.status_code == 422
    big = {"embeddings": [[0.123456789] * 8] * 20000}  # ~3 MB > 0.5 MB
    r = httpx.post(f"{server}/search", json=big, headers=h())
    assert r.status_code == 413
    assert httpx.get(f"{server}/health").status_code == 200


def test_items_add_delete_verify_identify_metrics(server):
    v = np.full((2, 8), 3.0)
    v[1] += 1
    r = httpx.post(f"{server}/items", json={"embeddings": v.tolist(), "metadata": [
        {"name": "a"}, {"name": "b"}], "labels": [42, 43]}, headers=h())
    assert r.status_code == 200
    new = r.json()["ids"]
    r = httpx.post(f"{server}/search", json={"embeddings": v.tolist(), "k": 1}, headers=h())
    assert [row[0]["id"] for row in r.json()["results"]] == new
    r = httpx.post(f"{server}/identify", json={"embeddings": v.tolist()}, headers=h())
    assert [row["label"] for row in r.json()["results"]] == [42, 43]
    assert httpx.delete(f"{server}/items/{new[0]}", headers=h()).status_code == 200
    assert httpx.delete(f"{server}/items/{new[0]}", headers=h()).status_code == 404
    r = httpx.post(f"{server}/items", json={"embeddings": v.tolist(), "metadata": [{}]},
                   headers=h())
    assert r.status_code == 422 and "metadata has 1 entries" in r.text
    pair = {"a": {"embeddings": [[0.0] * 8, [0.0] * 8]},
            "b": {"embeddings": [[0.1] + [0.0] * 7, [5.0] * 8]}}
    r = httpx.post(f"{server}/verify", json=pair, headers=h())
    assert r.json()["same"] == [True, False]
    assert r.json()["scores"][0] == pytest.approx(-0.01, abs=1e-6)
    text = httpx.get(f"{server}/metrics", headers=h()).text
    assert 'dmlkit_requests_total{route="/search",status="200"}' in text
    assert "dmlkit_index_items" in text and "dmlkit_request_seconds_bucket" in text
    assert httpx.get(f"{server}/openapi.json").status_code == 401  # every route but /health
    assert "/search" in httpx.get(f"{server}/openapi.json", headers=h()).json()["paths"]
    assert httpx.get(f"{server}/docs").status_code == 404  # no page a browser cannot use


def test_rate_limit_per_key(setup, tmp_path):
    root, *_ = setup
    import shutil

    shutil.copytree(root / "idx", tmp_path / "idx")
    proc, url = start(None, tmp_path / "idx", root / "keys.txt", "--rate", "1", "--burst", "3")
    try:
        codes = [httpx.get(f"{url}/metrics", headers=h()).status_code for _ in range(6)]
        assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
        assert httpx.get(f"{url}/metrics", headers=h(KEY2)).status_code == 200  # own bucket
    finally:
        stop(proc)


def test_sigkill_during_writes_keeps_every_acknowledged_item(setup, tmp_path):
    root, *_ = setup
    import shutil

    shutil.copytree(root / "idx", tmp_path / "idx")
    proc, url = start(None, tmp_path / "idx", root / "keys.txt", "--rate", "1000",
                      "--burst", "1000", "--checkpoint-every", "7")
    base = httpx.get(f"{url}/health").json()["items"]
    acked: list[tuple[int, list[float], int]] = []
    stop_flag = threading.Event()

    def writer() -> None:
        rng = np.random.default_rng(0)
        with httpx.Client(timeout=10) as client:
            for n in range(10000):
                if stop_flag.is_set():
                    return
                vec = (rng.normal(size=(2, 8)) + 5).tolist()
                try:
                    r = client.post(f"{url}/items", headers=h(), json={
                        "embeddings": vec, "metadata": [{"n": n, "j": 0}, {"n": n, "j": 1}]})
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    for j, i in enumerate(r.json()["ids"]):
                        acked.append((i, vec[j], n))

    thread = threading.Thread(target=writer)
    thread.start()
    while len(acked) < 40 and thread.is_alive():
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stop_flag.set()
    thread.join()
    assert len(acked) >= 40
    proc, url = start(None, tmp_path / "idx", root / "keys.txt", "--rate", "1000",
                      "--burst", "1000")
    try:
        total = httpx.get(f"{url}/health").json()["items"]
        # every acknowledged write is there; at most the one request in flight beyond them
        assert total - base in (len(acked), len(acked) + 2)
        vecs = [v for _, v, _ in acked]
        r = httpx.post(f"{url}/search", json={"embeddings": vecs, "k": 1}, headers=h())
        for (i, _, n), row in zip(acked, r.json()["results"], strict=True):
            assert row[0]["id"] == i and row[0]["score"] == pytest.approx(0.0, abs=1e-2)
            assert row[0]["metadata"]["payload"]["n"] == n
        if total - base == len(acked) + 2:  # the unacknowledged request landed whole
            extra = sorted(set(range(base, total + 10)) - {i for i, _, _ in acked})
            assert extra
    finally:
        stop(proc)


def test_durable_index_replay_checkpoint_and_torn_tail(setup, tmp_path):
    from dmlkit.service import DurableIndex

    root, *_ = setup
    import shutil

    shutil.copytree(root / "idx", tmp_path / "idx")
    store = DurableIndex(tmp_path / "idx", checkpoint_every=1000)
    n0 = store.ntotal
    ids = store.add(np.ones((3, 8), np.float32), payloads=[1, 2, 3])
    assert store.delete(int(ids[1])) and not store.delete(10**9)
    crash(store)  # no checkpoint, log on disk
    with open(tmp_path / "idx.wal", "ab") as f:
        f.write(b"deadbeef {\"op\": \"add\", \"ids\": [")  # a torn, unacknowledged line
    again = DurableIndex(tmp_path / "idx")
    assert again.replayed == 2 and again.ntotal == n0 + 2
    assert again.index.metadata([ids[0], ids[2]])[1]["payload"] == 3
    again.index.save(again.path)  # crash after the checkpoint, before the log is emptied
    crash(again)
    third = DurableIndex(tmp_path / "idx")
    assert third.ntotal == n0 + 2  # replaying onto the checkpoint duplicates nothing
    assert (third.replayed, third.skipped) == (0, 2)  # nothing counted that was skipped
    third.close()
    assert not (tmp_path / "idx.wal").exists()  # checkpointed and removed on the clean close


def test_service_runs_without_torch(setup, tmp_path):
    """ONNX model + faiss index: the whole request path imports no torch."""
    pytest.importorskip("onnxruntime")
    from dmlkit.index import FaissIndex
    from dmlkit.runs.export import export_run

    root, x, emb, _ = setup
    export_run(root / "run", tmp_path / "m.onnx")
    index = FaissIndex(8, factory="Flat")
    index.add(emb)
    index.save(tmp_path / "fidx")
    np.save(tmp_path / "q.npy", x[:4])
    script = f"""
import sys, json
import numpy as np
sys.modules["torch"] = None  # any import of torch now fails
from fastapi.testclient import TestClient
from dmlkit.service import ApiKeys, DurableIndex, create_app, load_embedder
app = create_app(DurableIndex({str(tmp_path / 'fidx')!r}), ApiKeys([{KEY!r}]),
                 load_embedder(onnx={str(tmp_path / 'm.onnx')!r}))
client = TestClient(app)
q = np.load({str(tmp_path / 'q.npy')!r}).tolist()
r = client.post("/search", json={{"inputs": q, "k": 3}}, headers={{"X-API-Key": {KEY!r}}})
print(json.dumps([[hit["id"] for hit in row] for row in r.json()["results"]]))
assert sys.modules["torch"] is None
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    from dmlkit.index import load_index

    _, expected = load_index(root / "idx").search(emb[:4], 3)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected.tolist()


def test_export_cli_onnx_and_torchscript(setup, tmp_path):
    import torch
    from typer.testing import CliRunner

    from dmlkit.cli.main import app

    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    root, x, emb, _ = setup
    for fmt, name in (("onnx", "m.onnx"), ("torchscript", "m.pt")):
        res = CliRunner().invoke(app, ["export", str(root / "run"), "--format", fmt,
                                       "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "m.onnx.json").read_text())
    assert info["n_features"] == 64 and info["dim"] == 8
    rows = x[:33].astype(np.float32)  # a batch size the export never saw
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"inputs": rows})[0]
    np.testing.assert_allclose(got, emb[:33], atol=1e-5)
    with torch.no_grad():
        ts = torch.jit.load(str(tmp_path / "m.pt"))(torch.from_numpy(rows)).numpy()
    np.testing.assert_allclose(ts, emb[:33], atol=1e-5)
    res = CliRunner().invoke(app, ["export", str(root / "run"), "--format", "tflite",
                                   "--out", str(tmp_path / "m.x")])
    assert res.exit_code == 1 and "format must be one of" in res.output


def test_refused_writes_are_not_logged_and_a_bad_log_record_does_not_stop_a_restart(
        setup, tmp_path):
    from dmlkit.service import DurableIndex
    from dmlkit.service.store import _encode

    root, *_ = setup
    import shutil

    shutil.copytree(root / "idx", tmp_path / "idx")
    store = DurableIndex(tmp_path / "idx")
    n0 = store.ntotal
    with pytest.raises(ValueError, match="64-bit"):
        store.add(np.ones((1, 8), np.float32), labels=[2**64])
    assert store.ntotal == n0 and (tmp_path / "idx.wal").stat().st_size == 0
    ok = store.add(np.ones((1, 8), np.float32), labels=[3])
    store._wal.write(_encode({"op": "add", "ids": [10**6], "vectors": "", "labels": [-5]}))
    crash(store)  # with a record no index can apply (an older log's)
    again = DurableIndex(tmp_path / "idx")
    assert (again.replayed, again.skipped) == (1, 1) and again.ntotal == n0 + 1
    assert again.index.metadata(ok)[0]["label"] == 3
    again.close()


def test_hnsw_delete_is_409_and_leaves_no_log_record(setup, tmp_path):
    pytest.importorskip("faiss")
    from dmlkit.index import FaissIndex

    root, x, emb, labels = setup
    index = FaissIndex(8, "l2", "HNSW32")
    index.add(emb, labels=labels)
    index.save(tmp_path / "hnsw")
    proc, url = start(root / "run", tmp_path / "hnsw", root / "keys.txt")
    try:
        r = httpx.delete(f"{url}/items/5", headers=h())
        assert r.status_code == 409 and "cannot remove" in r.text
        assert (tmp_path / "hnsw.wal").stat().st_size == 0
        assert httpx.get(f"{url}/health").status_code == 200
    finally:
        stop(proc)


def test_identify_answers_with_the_nearest_labelled_item(server, setup):
    root, x, emb, labels = setup
    q = emb[7:8] + 0.01  # item 7 is near; its unlabelled copy below is nearer
    r = httpx.post(f"{server}/identify", json={"embeddings": q.tolist()}, headers=h())
    before = r.json()["results"][0]
    r = httpx.post(f"{server}/items", json={"embeddings": q.tolist(), "metadata": ["copy"]},
                   headers=h())  # an unlabelled copy, now the nearest item
    copy = r.json()["ids"][0]
    r = httpx.post(f"{server}/search", json={"embeddings": q.tolist(), "k": 1}, headers=h())
    assert r.json()["results"][0][0]["id"] == copy
    r = httpx.post(f"{server}/identify", json={"embeddings": q.tolist()}, headers=h())
    after = r.json()["results"][0]
    assert after["known"] and after["label"] == before["label"] == int(labels[7])
    assert httpx.delete(f"{server}/items/{copy}", headers=h()).status_code == 200


def test_chunked_body_over_the_limit_is_413(server):
    body = json.dumps({"embeddings": [[0.123456789] * 8] * 20000}).encode()

    def chunks():
        for i in range(0, len(body), 1 << 16):
            yield body[i:i + (1 << 16)]

    r = httpx.post(f"{server}/search", content=chunks(),
                   headers={**h(), "content-type": "application/json"})
    assert r.status_code == 413 and "request body over" in r.text
    small = json.dumps({"embeddings": [[0.0] * 8], "k": 1}).encode()
    r = httpx.post(f"{server}/search", content=iter([small[:10], small[10:]]),
                   headers={**h(), "content-type": "application/json"})
    assert r.status_code == 200


def test_overflowing_embeddings_are_422(server):
    r = httpx.post(f"{server}/search", json={"embeddings": [[1e38] * 8]}, headers=h())
    assert r.status_code == 422 and "too large" in r.text
    r = httpx.post(f"{server}/embed", json={"inputs": [[1e300] * 64]}, headers=h())
    assert r.status_code == 422 and "too large" in r.text


def test_a_model_and_index_of_different_dimensions_refuse_to_start(setup, tmp_path):
    from dmlkit.index import ExactIndex

    root, *_ = setup
    index = ExactIndex(16)
    index.add(np.ones((2, 16), np.float32))
    index.save(tmp_path / "idx16")
    out = subprocess.run([sys.executable, "-m", "dmlkit", "serve", "--index",
                          str(tmp_path / "idx16"), "--run", str(root / "run"),
                          "--api-keys-file", str(root / "keys.txt"), "--port", str(free_port())],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "embeds into 8 dimensions" in out.stderr


def test_ids_of_deleted_items_are_never_given_again(setup, tmp_path):
    from dmlkit.service import DurableIndex

    root, *_ = setup
    import shutil

    shutil.copytree(root / "idx", tmp_path / "idx")
    store = DurableIndex(tmp_path / "idx")
    (last,) = store.add(np.ones((1, 8), np.float32))
    assert store.delete(int(last))
    (again,) = store.add(np.ones((1, 8), np.float32))
    assert again == last + 1
    assert store.delete(int(again))
    crash(store)  # the log replays the adds and deletes
    replayed = DurableIndex(tmp_path / "idx")
    assert replayed.add(np.ones((1, 8), np.float32))[0] == again + 1
    replayed.delete(int(again + 1))
    replayed.close()  # a checkpoint: the next id is kept in the index's info
    reopened = DurableIndex(tmp_path / "idx")
    assert reopened.add(np.ones((1, 8), np.float32))[0] == again + 2
    reopened.close()
