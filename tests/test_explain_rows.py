"""`dmlkit.explain.similarity` in eval mode, and rows of an item file in `dmlkit explain`:
one scaling hint for the whole file, and the row syntax whatever the suffix's case."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.explain import similarity
from dmlkit.models import MLPEmbedder

runner = CliRunner()


def test_similarity_runs_the_model_in_eval_mode_and_restores_its_mode():
    torch.manual_seed(0)
    model = MLPEmbedder(6, dim=4, hidden=[8], dropout=0.5)
    a, b = torch.rand(4, 6), torch.rand(4, 6)
    expected = similarity(model.eval(), a, b)
    model.train()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d))
    before = bn.running_mean.clone()
    assert torch.allclose(similarity(model, a, b), expected)
    assert similarity(model, a[:1], b[:1]).shape == (1,)  # one pair: no batch statistics
    assert torch.equal(bn.running_mean, before) and model.training


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    from dmlkit.config import Config
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("rows")
    x = np.random.default_rng(0).random((60, 16)).astype(np.float32)  # inputs in [0, 1]
    np.savez(root / "data.npz", x=x, labels=np.repeat(np.arange(3), 20))
    train_run(Config.from_dict({
        "name": "x", "data": {"name": "npz", "path": str(root / "data.npz")},
        "model": {"name": "mlp", "dim": 4, "hidden": [8]},
        "loss": {"name": "triplet_margin", "margin": 0.2},
        "training": {"epochs": 1, "num_threads": 1, "progress": False}}), root / "run",
        log=lambda *a: None)
    return root


def test_every_row_of_a_file_gets_the_files_scaling_hint(digits_run, tmp_path):
    items = np.zeros((2, 16), np.float32)
    items[0, :3] = 15.0  # row 0 reaches 15, the file 16
    items[1, :3] = 16.0
    np.save(tmp_path / "items.npy", items)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = runner.invoke(app, ["explain", str(digits_run / "run"), "--a",
                                  f"{tmp_path / 'items.npy'}:0", "--b",
                                  f"{tmp_path / 'items.npy'}:1", "-o", str(tmp_path / "o"),
                                  "--steps", "2"])
    assert res.exit_code == 0, res.output
    hints = [str(w.message) for w in caught if "inputs range over" in str(w.message)]
    assert len(hints) == 1, hints  # one for the file both items come from
    assert "divide them by their maximum, 16" in hints[0], hints


def test_rows_of_an_upper_case_npy_file(digits_run, tmp_path):
    np.save(tmp_path / "w.npy", np.random.default_rng(1).random((2, 16)).astype(np.float32))
    (tmp_path / "w.npy").rename(tmp_path / "W.NPY")
    res = runner.invoke(app, ["explain", str(digits_run / "run"), "--a",
                              f"{tmp_path / 'W.NPY'}:0", "--b", f"{tmp_path / 'W.NPY'}:1",
                              "-o", str(tmp_path / "o"), "--steps", "2"])
    assert res.exit_code == 0, res.output
