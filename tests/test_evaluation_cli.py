"""`dmlkit evaluate`, `dmlkit index build` and `dmlkit search` on a tiny trained run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app

TINY = """
name: tiny
data: {name: digits, max_per_class: 10, max_heldout_per_class: 20}
model: {name: mlp, dim: 8, hidden: [16]}
loss: {name: triplet_margin, margin: 0.2}
sampler: {name: m_per_class, m: 2, batch_size: 10}
training: {epochs: 1, num_threads: 1}
"""

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from dmlkit.config import load_config
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("evalcli")
    (root / "tiny.yaml").write_text(TINY)
    train_run(load_config(root / "tiny.yaml"), root / "run", log=lambda *a: None)
    return root / "run"


def test_evaluate_run(run_dir, tmp_path):
    out = tmp_path / "ev.json"
    res = runner.invoke(app, ["evaluate", str(run_dir), "--out", str(out), "--episodes", "20",
                              "--sections", "retrieval,clustering,verification,few_shot"])
    assert res.exit_code == 0, res.output
    assert "map_at_r" in res.output and "few-shot 5way_1shot" in res.output
    # progress: each section's start and time (on stderr)
    assert "retrieval (200 queries, leave-one-out) ..." in res.stderr
    assert "verification: " in res.stderr and "map_at_r" not in res.stderr
    saved = json.loads(out.read_text())
    assert saved["num_embeddings"] == 200 and saved["data"] == "heldout"
    from dmlkit.evaluation import retrieval_metrics
    from dmlkit.training import build_splits, embed, load_run

    run = load_run(run_dir)
    emb, labels = embed(run.model, build_splits(run.config)[1])
    assert saved["retrieval"]["map_at_r"] == pytest.approx(
        retrieval_metrics(emb, labels)["map_at_r"])
    bad = runner.invoke(app, ["evaluate", str(tmp_path / "nope")])
    assert bad.exit_code == 1 and "error" in bad.output


def test_evaluate_full_ranking_flag(run_dir, tmp_path):
    """Full mAP and MRR only with --full-ranking; the default keeps the top-R metrics."""
    outs = {}
    for flags in ([], ["--full-ranking"]):
        out = tmp_path / f"ev{len(flags)}.json"
        res = runner.invoke(app, ["evaluate", str(run_dir), "--out", str(out),
                                  "--sections", "retrieval", *flags])
        assert res.exit_code == 0, res.output
        assert "retrieval (200 queries, leave-one-out) ..." in res.stderr
        outs[len(flags)] = json.loads(out.read_text())["retrieval"]
    assert "mean_average_precision" not in outs[0]
    assert 0.0 < outs[1]["mean_average_precision"] <= 1.0
    assert outs[1]["mean_reciprocal_rank"] >= outs[1]["precision_at_1"]
    assert outs[1]["map_at_r"] == outs[0]["map_at_r"]

def test_index_build_and_search(run_dir, tmp_path):
    index_dir = tmp_path / "ix"
    res = runner.invoke(app, ["index", "build", str(run_dir), "--data", "heldout",
                              "--out", str(index_dir)])
    assert res.exit_code == 0, res.output
    from dmlkit.index import load_index
    from dmlkit.training import build_splits, embed, load_run

    run = load_run(run_dir)
    heldout = build_splits(run.config)[1]
    raw = heldout.x[:2].numpy()
    np.save(tmp_path / "q.npy", raw)  # raw inputs: embedded with the index's run
    res = runner.invoke(app, ["search", str(index_dir), "--query", str(tmp_path / "q.npy"),
                              "-k", "3", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    index = load_index(index_dir)
    emb, _ = embed(run.model, heldout.x[:2])
    _, want = index.search(emb.numpy(), 3)
    assert [h["id"] for h in report[0]["neighbours"]] == want[0].tolist()
    assert report[0]["neighbours"][0]["label"] == int(heldout.labels[0])


def test_index_from_embeddings_with_faiss_and_image_queries(run_dir, tmp_path):
    pytest.importorskip("faiss")
    image = pytest.importorskip("PIL.Image")
    folder = tmp_path / "imgs"
    for c in range(2):
        (folder / f"class{c}").mkdir(parents=True)
        for i in range(3):
            pixels = (np.random.default_rng(c * 10 + i).random((8, 8)) * 255).astype(np.uint8)
            image.fromarray(pixels).save(folder / f"class{c}" / f"{i}.png")
    index_dir = tmp_path / "ix_img"
    res = runner.invoke(app, ["index", "build", str(run_dir), "--data", str(folder),
                              "--out", str(index_dir), "--factory", "Flat"])
    assert res.exit_code == 0, res.output
    query = folder / "class1" / "2.png"
    res = runner.invoke(app, ["search", str(index_dir), "-q", str(query), "-k", "2"])
    assert res.exit_code == 0, res.output
    assert str(query) in res.output.splitlines()[2]  # the image itself is its top hit
    emb_file = tmp_path / "e.npz"
    np.savez(emb_file, embeddings=np.eye(4, dtype=np.float32), labels=np.arange(4))
    res = runner.invoke(app, ["index", "build", str(emb_file), "--out", str(tmp_path / "e"),
                              "--factory", "NotAFactory"])
    assert res.exit_code == 1 and "faiss" in res.output
