"""Runs on classes too small to hold out or to give positives, and labels of the wrong
dtype: refused or warned about once, before training."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from dmlkit.config import Config
from dmlkit.training import Trainer, train_run
from dmlkit.training.build import resolve_config


def _npz(path, per_class: int, classes: int = 10):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), per_class)
    np.savez(path, x=rng.normal(size=(len(labels), 16)).astype(np.float32), labels=labels)
    return path


def _config(path, loss: dict, miner: dict | None = None) -> Config:
    return Config.from_dict({
        "name": "small", "data": {"name": "npz", "path": str(path)},
        "model": {"name": "mlp", "dim": 8, "hidden": [16]},
        "loss": loss, "miner": miner,
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": 40},
        "training": {"epochs": 2, "seed": 0, "progress": False, "num_threads": 1}})


def _run(config: Config, out) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_run(config, out, log=lambda *_: None)
    return [str(w.message) for w in caught]


def test_an_empty_heldout_split_is_refused_before_training(tmp_path):
    cfg = _config(_npz(tmp_path / "one.npz", 1), {"name": "triplet_margin"},
                  {"name": "batch_hard"})
    with pytest.raises(ValueError, match=r"held-out split of .*one\.npz is empty: .*each of "
                       r"the 10 classes has a single item.*at least 2 items.*data\.split: "
                       r"classes"):
        train_run(cfg, tmp_path / "run", log=lambda *_: None)
    assert not (tmp_path / "run").exists()  # no half-made run (model.pt, checkpoint.pt)


def test_single_item_classes_warn_once_and_nan_metrics_once(tmp_path):
    cfg = _config(_npz(tmp_path / "two.npz", 2), {"name": "triplet_margin"},
                  {"name": "batch_hard"})
    messages = _run(cfg, tmp_path / "run")
    single = [m for m in messages if "has a single item" in m]
    assert len(single) == 1, messages
    assert "loss 'triplet_margin' with miner 'batch_hard' learns nothing" in single[0]
    assert "at least 2 training items" in single[0]
    assert sum("retrieval metrics are NaN" in m for m in messages) == 1, messages


def test_a_proxy_loss_learns_from_single_items_without_a_warning(tmp_path):
    cfg = _config(_npz(tmp_path / "two.npz", 2), {"name": "normalized_softmax"})
    messages = _run(cfg, tmp_path / "run")
    assert not [m for m in messages if "has a single item" in m], messages


def test_classes_with_positives_do_not_warn(tmp_path):
    cfg = _config(_npz(tmp_path / "six.npz", 6), {"name": "triplet_margin"},
                  {"name": "batch_hard"})
    messages = _run(cfg, tmp_path / "run")
    assert not [m for m in messages if "single item" in m or "NaN" in m], messages


def _trainer_config() -> Config:
    cfg = Config.from_dict({
        "model": {"name": "mlp", "dim": 8, "hidden": [16]},
        "loss": {"name": "triplet_margin"},
        "sampler": {"name": "m_per_class", "m": 2, "batch_size": 8},
        "training": {"epochs": 1, "progress": False}})
    return resolve_config(cfg, torch.zeros(16), 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float_labels_are_refused_as_not_integers(dtype):
    x, y = torch.randn(32, 16), torch.arange(32) % 4
    with pytest.raises(TypeError, match=r"labels of train_data .* are torch\.float.*must be "
                       r"integer class ids"):
        Trainer(_trainer_config(), TensorDataset(x, y.to(dtype)), log=None)
    with pytest.raises(TypeError, match=r"labels of val_data .* are torch\.float.*must be "
                       r"integer class ids"):
        Trainer(_trainer_config(), TensorDataset(x, y),
                val_data=TensorDataset(x, y.to(dtype)), log=None)
    Trainer(_trainer_config(), TensorDataset(x, y), val_data=TensorDataset(x, y), log=None)
