"""End to end: `dmlkit train` from generated pair / triplet CSV files, without labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.config.schema import Config
from dmlkit.data import load_digits
from dmlkit.data.tuples import pairs_from_labels, triplets_from_labels, write_tuples_csv
from dmlkit.training import load_run


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory):
    """300 digits as flat features (.npy), and 600 triplets / pairs over them as CSV."""
    root = tmp_path_factory.mktemp("weak")
    ds = load_digits()
    x = ds.x[:300].flatten(1).numpy()  # (300, 64)
    y = ds.labels[:300]
    np.save(root / "features.npy", x)
    write_tuples_csv(root / "triplets.csv", triplets_from_labels(y, 600, seed=0))
    rows, similar = pairs_from_labels(y, 600, seed=0)
    write_tuples_csv(root / "pairs.csv", rows, similar)
    return root


def write_config(root, kind, loss):
    cfg = {
        "name": f"weak_{kind}",
        "data": {
            "kind": kind,
            "tuples": str(root / f"{kind}.csv"),
            "features": str(root / "features.npy"),
            "test_fraction": 0.25,
        },
        "model": {"name": "mlp", "dim": 16, "hidden": [32]},
        "loss": loss,
        "optimizer": {"name": "adam", "lr": 0.01},
        "training": {"epochs": 2, "batch_size": 64, "num_threads": 1},
    }
    path = root / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    "kind,loss,metric",
    [
        ("triplets", {"name": "triplet_margin", "margin": 0.2}, "triplet_accuracy"),
        ("pairs", {"name": "contrastive"}, "pair_auc"),
    ],
)
def test_cli_trains_from_tuple_csv(digits_files, kind, loss, metric):
    config = write_config(digits_files, kind, loss)
    out = digits_files / f"run_{kind}"
    result = CliRunner().invoke(app, ["train", str(config), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"training on 450 {kind}" in result.output and "no class labels" in result.output
    assert metric in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_tuples"] == 150
    assert 0.0 <= metrics[metric] <= 1.0 and metric in metrics["baseline"]
    log = (out / "train.log").read_text().splitlines()
    assert len(log) == 2
    run = load_run(out)
    assert run.config.data.kind == kind
    emb = run.model(torch.from_numpy(np.load(digits_files / "features.npy")[:5]))
    assert emb.shape == (5, 16)


def test_tuple_file_run_has_no_default_splits(digits_files, tmp_path):
    """embed / evaluate / index build of a tuple-file run refuse the config's default
    dataset (digits) in place of held-out data, and work on data named explicitly."""
    config = write_config(digits_files, "triplets", {"name": "triplet_margin"})
    run = tmp_path / "run"
    args = ["train", str(config), "--out", str(run), "--no-progress", "--epochs", "1"]
    assert CliRunner().invoke(app, args).exit_code == 0
    for cmd in (["embed", str(run), "--out", str(tmp_path / "e.npz")],
                ["evaluate", str(run)],
                ["index", "build", str(run), "--out", str(tmp_path / "idx")]):
        result = CliRunner().invoke(app, cmd)
        assert result.exit_code != 0, cmd
        assert "trained from the triplets" in result.output and "Traceback" not in result.output
    ds = load_digits()
    np.savez(tmp_path / "labelled.npz", x=ds.x[:50].flatten(1).numpy(), labels=ds.labels[:50])
    result = CliRunner().invoke(app, ["embed", str(run), "--data", str(tmp_path / "labelled.npz"),
                                      "--out", str(tmp_path / "e.npz")])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "e.npz")["embeddings"].shape == (50, 16)


def test_run_metrics_equal_recomputed_tuple_metrics(digits_files):
    """Learned metric vs raw inputs, on the held-out triplets of the same file."""
    from dmlkit.training.weak import build_weak_splits, tuple_metrics

    config = Config.from_yaml(write_config(digits_files, "triplets", {"name": "triplet_margin"}))
    config.training.epochs = 1
    config.training.progress = False
    out = digits_files / "run_direct"
    from dmlkit.training import train_run

    result = train_run(config, out, log=lambda _m: None)
    held = build_weak_splits(config).heldout_tuples
    assert result.metrics["triplet_accuracy"] == pytest.approx(
        tuple_metrics(load_run(out).model, held)["triplet_accuracy"]
    )
    assert result.metrics["baseline"]["triplet_accuracy"] == pytest.approx(
        tuple_metrics(None, held)["triplet_accuracy"]
    )


def test_weak_config_errors(digits_files):
    bad_loss = write_config(digits_files, "triplets", {"name": "triplet_margin"})
    cfg = yaml.safe_load(bad_loss.read_text())
    cfg["miner"] = {"name": "batch_hard"}
    bad_loss.write_text(yaml.safe_dump(cfg))
    result = CliRunner().invoke(app, ["train", str(bad_loss), "--out", str(digits_files / "x")])
    assert result.exit_code != 0 and "miner" in result.output
    with pytest.raises(ValueError, match="kind"):
        Config.from_dict({"data": {"kind": "quads"}})
    with pytest.raises(ValueError, match="kind"):
        Config.from_dict({"data": {"tuples": "t.csv"}})


def test_labelled_source_mode_drops_labels():
    from dmlkit.training.weak import build_weak_splits

    config = Config.from_dict(
        {"data": {"name": "digits", "kind": "pairs", "num_tuples": 100, "seed": 3}}
    )
    splits = build_weak_splits(config)
    assert splits.train.labels is None and splits.train.kind == "pairs"
    assert len(splits.train) == 100 and splits.heldout is not None
    assert splits.heldout.labels is not None and len(splits.heldout) > 800
