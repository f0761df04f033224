"""The service scores with its verifier on the embeddings it computed, refuses an index or a
verifier of another model, and bounds what a request may hold and return."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("httpx", reason="the service tests need httpx (dev extra)")
pytest.importorskip("fastapi", reason="the service tests need fastapi (dmlkit[serve])")

from fastapi.testclient import TestClient  # noqa: E402

KEY = "p" * 24 + "-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TINY = {
    "name": "tiny",
    "data": {"name": "digits", "max_per_class": 10, "max_heldout_per_class": 10},
    "model": {"name": "mlp", "dim": 8, "hidden": [16]},
    "training": {"epochs": 1, "progress": False},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from dmlkit.config import Config
    from dmlkit.index import ExactIndex
    from dmlkit.runs import build_splits, embed, load_run
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("provenance")
    train_run(Config.from_dict(TINY), root / "run", log=lambda *a: None)
    other = {**TINY, "training": {"epochs": 1, "progress": False, "seed": 7}}
    train_run(Config.from_dict(other), root / "other", log=lambda *a: None)
    run = load_run(root / "run")
    _, heldout = build_splits(run.config)
    emb, labels = embed(run.model, heldout)
    index = ExactIndex(8, "cosine")
    index.add(emb.numpy(), labels=labels.numpy())
    index.info = {"run_dir": str((root / "run").resolve())}  # as dmlkit index build records
    index.save(root / "idx")
    return root, heldout.x.numpy(), heldout.labels.numpy()


OPEN: list = []


@pytest.fixture(autouse=True)
def close_stores():
    yield
    while OPEN:
        OPEN.pop().close()


def client(root, tmp_path, run="run", info=None, verifier=None, config=None, onnx=None):
    from dmlkit.index import load_index
    from dmlkit.service import ApiKeys, DurableIndex, create_app, load_embedder

    shutil.copytree(root / "idx", tmp_path / "idx")
    if info is not None:
        index = load_index(tmp_path / "idx")
        index.info = info
        index.save(tmp_path / "idx")
    store = DurableIndex(tmp_path / "idx")
    try:
        embedder = load_embedder(onnx=onnx) if onnx is not None else load_embedder(root / run)
        app = create_app(store, ApiKeys([KEY]), embedder, config, verifier)
    except BaseException:
        store.close(checkpoint=False)  # refused: the index directory is free again
        raise
    OPEN.append(store)
    return TestClient(app)


def test_verify_scores_the_embeddings_with_the_kits_metric_and_threshold(runs, tmp_path):
    from dmlkit.apps import Verifier

    root, x, y = runs
    kit = Verifier(embedder=str(root / "run"), n_bootstrap=5).fit(x, y)
    kit.save(tmp_path / "kit")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the index records no fingerprint)
        c = client(root, tmp_path, verifier=Verifier.load(tmp_path / "kit"))
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(x), 60), rng.integers(0, len(x), 60)
    r = c.post("/verify", headers=AUTH, json={"a": {"inputs": x[i].reshape(60, -1).tolist()},
                                              "b": {"inputs": x[j].reshape(60, -1).tolist()}})
    assert r.status_code == 200, r.text
    body = r.json()
    np.testing.assert_allclose(body["scores"], kit.score_pairs(x[i], x[j]), atol=1e-5)
    assert body["same"] == kit.predict(x[i], x[j]).tolist()
    assert body["threshold"] == pytest.approx(kit.threshold_)


def test_a_verifier_of_another_run_is_refused(runs, tmp_path):
    from dmlkit.apps import Verifier

    root, x, y = runs
    kit = Verifier(embedder=str(root / "other"), n_bootstrap=5).fit(x, y)
    with pytest.raises(ValueError, match="fitted on embeddings of the run .*other.* differ"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client(root, tmp_path, verifier=kit)


def test_an_index_of_another_run_is_refused(runs, tmp_path):
    root, _, _ = runs
    with pytest.raises(ValueError, match="built with the run .*run, whose model is not"):
        client(root, tmp_path, run="other")


def test_an_index_fingerprint_is_checked(runs, tmp_path):
    from dmlkit.apps.persistence import run_fingerprint

    root, _, _ = runs
    info = {"run_dir": "/elsewhere/run", "model_sha256": run_fingerprint(root / "other")}
    with pytest.raises(ValueError, match="holds embeddings of another model"):
        client(root, tmp_path, info=info)
    shutil.rmtree(tmp_path / "idx")
    info = {"run_dir": "/elsewhere/run", "model_sha256": run_fingerprint(root / "run")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a copy of the run with the same weights: no warning
        client(root, tmp_path, info=info)


def test_an_index_without_fingerprint_warns(runs, tmp_path):
    root, _, _ = runs
    with pytest.warns(UserWarning, match="records no fingerprint"):
        client(root, tmp_path)


@pytest.fixture(scope="module")
def exports(runs, tmp_path_factory):
    """ONNX exports of both runs, written from a relative run directory."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from dmlkit.runs.export import export_run

    root, _, _ = runs
    out = tmp_path_factory.mktemp("exports")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for name in ("run", "other"):
            export_run(name, out / f"{name}.onnx")
    finally:
        os.chdir(cwd)
    return out


def test_an_onnx_export_records_its_weights_and_absolute_run_dir(runs, exports):
    from dmlkit.apps.persistence import run_fingerprint

    root, _, _ = runs
    info = json.loads((exports / "run.onnx.json").read_text())
    assert info["model_sha256"] == run_fingerprint(root / "run")
    assert Path(info["run_dir"]).is_absolute()
    assert Path(info["run_dir"]) == (root / "run").resolve()


def test_an_onnx_export_of_another_run_is_refused_an_index(runs, exports, tmp_path):
    from dmlkit.apps.persistence import run_fingerprint

    root, _, _ = runs
    with pytest.raises(ValueError, match="built with the run .*run, whose model is not"):
        client(root, tmp_path, onnx=exports / "other.onnx")  # the index records a run only
    shutil.rmtree(tmp_path / "idx")
    info = {"run_dir": str(root / "run"), "model_sha256": run_fingerprint(root / "run")}
    with pytest.raises(ValueError, match="holds embeddings of another model"):
        client(root, tmp_path, info=info, onnx=exports / "other.onnx")
    shutil.rmtree(tmp_path / "idx")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the export of the index's own run: served, no warning
        client(root, tmp_path, info=info, onnx=exports / "run.onnx")


def test_an_onnx_export_without_fingerprint_warns(runs, exports, tmp_path):
    root, _, _ = runs
    old = tmp_path / "old.onnx"
    shutil.copy(exports / "other.onnx", old)
    info = json.loads((exports / "other.onnx.json").read_text())
    del info["model_sha256"]  # as dmlkit export wrote it before it recorded the weights
    (tmp_path / "old.onnx.json").write_text(json.dumps(info))
    with pytest.warns(UserWarning, match="records no fingerprint of its weights.*export the "
                      "run again"):
        client(root, tmp_path, onnx=old)


@pytest.fixture
def service(runs, tmp_path):
    root, x, _ = runs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = client(root, tmp_path)
    return c, x.reshape(len(x), -1)


def test_rows_of_strings_or_booleans_are_refused(service):
    c, x = service
    row = x[0].tolist()
    for bad in (["0.5"] + row[1:], [True] + row[1:], [None] + row[1:]):
        r = c.post("/search", headers=AUTH, json={"inputs": [row, bad]})
        assert r.status_code == 422 and "numbers only" in r.text, r.text
    r = c.post("/search", headers=AUTH, json={"embeddings": [["1.0"] * 8]})
    assert r.status_code == 422 and "numbers only" in r.text
    assert c.post("/search", headers=AUTH, json={"inputs": [row], "k": 2}).status_code == 200


def test_boolean_and_string_labels_are_refused(service):
    c, x = service
    for label in (True, "3", 1.5):
        r = c.post("/items", headers=AUTH, json={"inputs": [x[0].tolist()], "labels": [label]})
        assert r.status_code == 422, (label, r.text)
    r = c.post("/items", headers=AUTH, json={"inputs": [x[0].tolist()], "labels": [3]})
    assert r.status_code == 200, r.text


def test_a_response_is_bounded_in_hits(runs, tmp_path):
    from dmlkit.service import ServiceConfig

    root, x, _ = runs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = client(root, tmp_path, config=ServiceConfig(max_results=500))
    assert ServiceConfig().max_results < ServiceConfig().max_batch * ServiceConfig().max_k
    rows = x[:10].reshape(10, -1).tolist()
    r = c.post("/search", headers=AUTH, json={"inputs": rows, "k": 60})
    assert r.status_code == 413 and "at most 500" in r.text
    r = c.post("/search", headers=AUTH, json={"inputs": rows, "k": 50})
    assert r.status_code == 200 and len(r.json()["results"]) == 10
