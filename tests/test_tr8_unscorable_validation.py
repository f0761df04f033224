"""A validation split no epoch could score is refused before training, and a run whose
epochs were never scored records no best epoch (not epoch 0, which never ran)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dmlkit.training.trainer as trainer_module
from dmlkit.config import Config
from dmlkit.training import train_run


def _npz(path):
    rng = np.random.default_rng(0)
    labels = np.concatenate([[0, 1], np.repeat(np.arange(2, 8), 10)])  # 0, 1: one item each
    x = rng.normal(size=(len(labels), 8)).astype(np.float32) + labels[:, None]
    np.savez(path, x=x, labels=labels.astype(np.int64))
    return path


def _config(path, **training) -> Config:
    return Config.from_dict({
        "name": "v", "data": {"name": "npz", "path": str(path)},
        "model": {"name": "mlp", "dim": 4, "hidden": [8]},
        "loss": {"name": "multi_similarity"},
        "sampler": {"name": "m_per_class", "m": 2, "batch_size": 8},
        "training": {"epochs": 2, "seed": 0, "progress": False, "num_threads": 1,
                     **training}})


def test_validation_classes_of_one_item_each_are_refused(tmp_path):
    cfg = _config(_npz(tmp_path / "d.npz"), val_classes=[0, 1], patience=2)
    with pytest.raises(ValueError, match=r"training.val_classes holds out classes \[0, 1\]"
                       r".*one item each.*two or more items") as err:
        train_run(cfg, tmp_path / "run", log=lambda *_: None)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "model.pt").exists()


def test_no_scored_epoch_records_no_best_epoch(tmp_path, monkeypatch):
    nan = float("nan")
    monkeypatch.setattr(trainer_module.Trainer, "validate", lambda self: {
        "val_precision_at_1": nan, "val_r_precision": nan, "val_map_at_r": nan})
    cfg = _config(_npz(tmp_path / "d.npz"), val_classes=[2, 3])
    train_run(cfg, tmp_path / "run", log=lambda *_: None)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["validation"]["best_epoch"] is None
    assert metrics["validation"]["best_map_at_r"] is None
