"""Embedding store: chunked, resumable writes; chunked faiss builds equal one-shot builds;
`dmlkit embed --store` and `dmlkit index build STORE` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.index import FaissIndex, load_index
from dmlkit.index.store import EmbeddingStore, build_index_from_store, embed_to_store

faiss = pytest.importorskip("faiss")


def _data(n=500, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(10, dim))
    labels = rng.integers(0, 10, n)
    x = (centers[labels] + 0.8 * rng.normal(size=(n, dim))).astype(np.float32)
    return x, labels


def test_small_store_roundtrip(tmp_path):
    x, y = _data(103, 8)
    store = embed_to_store(lambda a, b: x[a:b] * 1.0, 103, 8, tmp_path / "s", labels=y,
                           chunk_size=20, show_progress=False)
    assert store.complete and store.rows_done == 103
    again = EmbeddingStore.open(tmp_path / "s")
    np.testing.assert_array_equal(again.embeddings, x)
    np.testing.assert_array_equal(again.labels, y)
    starts = [s for s, _, _ in again.chunks(25)]
    assert starts == [0, 25, 50, 75, 100]
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["rows_done"] == 103 and manifest["dim"] == 8


def test_interrupted_write_resumes_without_redoing_chunks(tmp_path):
    x, y = _data(100, 4)
    calls: list[tuple[int, int]] = []

    def failing(a: int, b: int) -> np.ndarray:
        calls.append((a, b))
        if a >= 60:
            raise KeyboardInterrupt  # killed during the fourth chunk
        return x[a:b]

    with pytest.raises(KeyboardInterrupt):
        embed_to_store(failing, 100, 4, tmp_path / "s", labels=y, chunk_size=20,
                       show_progress=False)
    half = EmbeddingStore.open(tmp_path / "s")
    assert half.rows_done == 60 and not half.complete
    np.testing.assert_array_equal(half.embeddings, x[:60])
    with pytest.raises(ValueError, match="unfinished"):
        build_index_from_store(half)
    calls.clear()

    def working(a: int, b: int) -> np.ndarray:
        calls.append((a, b))
        return x[a:b]

    store = embed_to_store(working, 100, 4, tmp_path / "s", labels=y, chunk_size=20,
                           show_progress=False)
    assert calls == [(60, 80), (80, 100)] and store.complete
    np.testing.assert_array_equal(store.embeddings, x)
    np.testing.assert_array_equal(store.labels, y)


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="count"):
        EmbeddingStore.create(tmp_path / "a", 0, 4)
    store = EmbeddingStore.create(tmp_path / "b", 10, 4)
    with pytest.raises(ValueError, match="already holds"):
        EmbeddingStore.create(tmp_path / "b", 10, 4)
    with pytest.raises(ValueError, match="rows_done"):
        store.write(5, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="shape"):
        store.write(0, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="different store") as err:
        EmbeddingStore.open_or_create(tmp_path / "b", 11, 4)
    assert "source" not in str(err.value)  # neither side names one
    with pytest.raises(FileNotFoundError, match="not an embedding store"):
        EmbeddingStore.open(tmp_path / "nothing")


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_chunked_flat_build_equals_one_shot(tmp_path, metric):
    x, y = _data()
    store = embed_to_store(lambda a, b: x[a:b], len(x), x.shape[1], tmp_path / "s", labels=y,
                           chunk_size=64, show_progress=False)
    chunked = build_index_from_store(store, "Flat", metric, chunk_size=37)
    one = FaissIndex(x.shape[1], metric, "Flat")
    one.add(x, labels=y)
    q = x[:50] + 0.1
    s1, i1 = chunked.search(q, 10)
    s2, i2 = one.search(q, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, rtol=1e-5, atol=1e-5)
    assert [m["label"] for m in chunked.metadata(i1[0])] == y[i1[0]].tolist()


@pytest.mark.filterwarnings("ignore:IVF16")
def test_chunked_ivf_build_equals_one_shot_with_the_same_training(tmp_path):
    x, y = _data(2000)
    store = embed_to_store(lambda a, b: x[a:b], len(x), x.shape[1], tmp_path / "s", labels=y,
                           chunk_size=300, show_progress=False)
    chunked = build_index_from_store(store, "IVF16,PQ4", "l2", train_size=len(x),
                                     chunk_size=300, nprobe=4)
    one = FaissIndex(x.shape[1], "l2", "IVF16,PQ4", nprobe=4)
    one.train(x)  # the same training rows (all of them, in order)
    one.add(x, labels=y)
    np.testing.assert_array_equal(chunked.search(x[:100], 10)[1], one.search(x[:100], 10)[1])


def test_cli_embed_store_and_index_build(tmp_path):
    from dmlkit.cli.main import app

    runner = CliRunner()
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "name: tiny\ndata: {name: digits, max_per_class: 10, max_heldout_per_class: 10}\n"
        "model: {name: mlp, dim: 8, hidden: [16]}\nloss: {name: triplet_margin, margin: 0.2}\n"
        "miner: {name: batch_hard}\nsampler: {name: m_per_class, m: 2, batch_size: 10}\n"
        "training: {epochs: 1, num_threads: 1}\n")
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", str(cfg), "--out", str(run), "--no-progress"])
    assert res.exit_code == 0, res.output
    npz, store = tmp_path / "e.npz", tmp_path / "store"
    assert runner.invoke(app, ["embed", str(run), "--data", "digits", "--out", str(npz)]
                         ).exit_code == 0
    res = runner.invoke(app, ["embed", str(run), "--data", "digits", "--out", str(store),
                              "--store", "--chunk-size", "500"])
    assert res.exit_code == 0, res.output
    assert "stored 1797 embeddings of dim 8" in res.output
    ref = np.load(npz)
    opened = EmbeddingStore.open(store)
    np.testing.assert_allclose(opened.embeddings, ref["embeddings"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(opened.labels, ref["labels"])
    # a rerun of a finished store embeds nothing and leaves it as it was
    res = runner.invoke(app, ["embed", str(run), "--data", "digits", "--out", str(store),
                              "--store", "--chunk-size", "500"])
    assert res.exit_code == 0 and "stored 1797" in res.output
    res = runner.invoke(app, ["index", "build", str(store), "--out", str(tmp_path / "idx"),
                              "--factory", "IVF8,Flat", "--nprobe", "8"])
    assert res.exit_code == 0, res.output
    index = load_index(tmp_path / "idx")
    assert index.ntotal == 1797
    _, ids = index.search(ref["embeddings"][:5], 1)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]  # nprobe = nlist: exact


@pytest.mark.filterwarnings("ignore:IVF16")
def test_refine_factory_builds_from_store(tmp_path):
    x, y = _data(1000)
    store = embed_to_store(lambda a, b: x[a:b], len(x), x.shape[1], tmp_path / "s", labels=y,
                           chunk_size=300, show_progress=False)
    index = build_index_from_store(store, "IVF16,PQ4,RFlat", "l2", nprobe=16)
    flat = FaissIndex(x.shape[1], "l2", "Flat")
    flat.add(x)
    _, ids = index.search(x[:20], 1)
    assert ids[:, 0].tolist() == list(range(20)) == flat.search(x[:20], 1)[1][:, 0].tolist()
