"""An embedding store resumes only for the model that wrote it: a retrained run's
``dmlkit embed --store`` into the same path is refused instead of keeping old vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dmlkit.index.store import EmbeddingStore, embed_to_store, model_fingerprint


def test_fingerprint_follows_the_weights():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    b = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    b.load_state_dict(a.state_dict())
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b[0].weight[0, 0] += 1e-6
    assert model_fingerprint(a) != model_fingerprint(b)
    b.load_state_dict(a.state_dict())
    b[1].running_mean += 1.0  # buffers count too
    assert model_fingerprint(a) != model_fingerprint(b)


def test_a_store_of_another_model_is_not_resumed(tmp_path):
    x = np.ones((10, 2), np.float32)
    embed_to_store(lambda s, e: x[s:e], 10, 2, tmp_path / "s", chunk_size=4,
                   source={"run_dir": "r", "model_sha256": "aa"}, show_progress=False)
    with pytest.raises(ValueError, match="model's weights differ.*new path"):
        embed_to_store(lambda s, e: x[s:e], 10, 2, tmp_path / "s",
                       source={"run_dir": "r", "model_sha256": "bb"}, show_progress=False)


def test_cli_embed_store_refuses_a_retrained_model(tmp_path):
    from dmlkit.cli.main import app

    runner = CliRunner()
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "name: tiny\ndata: {name: digits, max_per_class: 10, max_heldout_per_class: 10}\n"
        "model: {name: mlp, dim: 8, hidden: [16]}\nloss: {name: triplet_margin, margin: 0.2}\n"
        "miner: {name: batch_hard}\nsampler: {name: m_per_class, m: 2, batch_size: 10}\n"
        "training: {epochs: 1, num_threads: 1}\n")
    run, store = tmp_path / "run", tmp_path / "store"
    assert runner.invoke(app, ["train", str(cfg), "--out", str(run), "--no-progress"]
                         ).exit_code == 0
    args = ["embed", str(run), "--data", "heldout", "--out", str(store), "--store"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    before = np.array(EmbeddingStore.open(store).embeddings)
    assert runner.invoke(app, args).exit_code == 0  # the same model: nothing to redo
    state = torch.load(run / "model.pt", weights_only=True)  # "retrain": new weights
    torch.save({k: v + 0.5 if v.is_floating_point() else v for k, v in state.items()},
               run / "model.pt")
    res = runner.invoke(app, args)
    assert res.exit_code != 0
    assert "model's weights differ" in res.output and "new path" in res.output
    np.testing.assert_array_equal(EmbeddingStore.open(store).embeddings, before)
    assert len(EmbeddingStore.open(store).manifest["source"]["model_sha256"]) == 64
