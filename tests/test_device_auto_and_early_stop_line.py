"""``training.device: auto`` is taken by a run as by the Trainer, and an early stop says
which epoch's weights are kept."""

from __future__ import annotations

import pytest

from dmlkit.config import Config
from dmlkit.training.best_epoch import early_stop_line
from dmlkit.training.device import check_device


def test_auto_resolves_to_a_device_everywhere():
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert check_device("auto", "training.device").type == expected
    with pytest.raises(ValueError, match="use 'cpu', 'cuda' or 'auto'"):
        check_device("gpu0", "training.device")


def test_a_run_with_device_auto_trains(tmp_path):
    from dmlkit.training import train_run

    cfg = Config.from_dict({
        "name": "auto", "data": {"name": "digits", "max_per_class": 20},
        "model": {"name": "mlp", "hidden": [16], "dim": 8},
        "loss": {"name": "triplet_margin"},
        "training": {"epochs": 1, "batch_size": 32, "device": "auto", "progress": False}})
    result = train_run(cfg, tmp_path / "run", log=lambda _m: None)
    assert 0 < result.metrics["map_at_r"] <= 1


def test_the_early_stop_line_names_the_kept_epoch():
    line = early_stop_line(4, 2, 0.52689)
    assert line.startswith("early stop: no val MAP@R gain for 4 epochs")
    assert "the weights of epoch 2 (val MAP@R 0.5269, the best) are kept" in line
