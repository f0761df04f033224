"""A run records its model's file and folder settings (the pretrained backbone's
``weights`` and ``cache_dir``) absolute, as it records its data paths, so it is evaluated
and embedded from any directory with the same weights and the same feature cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dmlkit.config.schema import Config
from dmlkit.models.pretrained.efficientnet_lite import EfficientNetLite0
from dmlkit.training.build import absolute_model_paths, resolve_config


def _config(model: dict) -> Config:
    return Config.from_dict({
        "name": "paths", "data": {"name": "digits", "max_per_class": 3,
                                  "max_heldout_per_class": 2},
        "model": {"name": "efficientnet_lite0", "resolution": 32, "taps": [16],
                  "head_type": "linear", "dim": 8, **model},
        "loss": {"name": "multi_similarity"},
        "training": {"epochs": 1, "batch_size": 30, "seed": 0, "progress": False}})


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "w.pth"
    torch.manual_seed(0)
    torch.save(EfficientNetLite0().state_dict(), path)
    return path


def test_relative_model_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pth").write_bytes(b"")
    cfg = _config({"weights": "w.pth", "cache_dir": "feats/here"})  # (no folder yet)
    resolved = resolve_config(cfg, torch.rand(8, 8), 10)
    assert resolved.model["weights"] == str(tmp_path / "w.pth")
    assert resolved.model["cache_dir"] == str(tmp_path / "feats" / "here")
    assert cfg.model["cache_dir"] == "feats/here"  # (the given config is not changed)


def test_absolute_and_home_paths_are_kept_and_other_models_have_none(tmp_path):
    spec = {"name": "efficientnet_lite0", "weights": str(tmp_path / "w.pth"),
            "cache_dir": "~/feats"}
    assert absolute_model_paths(spec) == {}
    assert absolute_model_paths({"name": "mlp", "dim": 4}) == {}


def test_a_run_trained_with_relative_paths_is_used_from_another_directory(
        tmp_path, monkeypatch, weights_file):
    from dmlkit.runs.data import run_data
    from dmlkit.training import load_run, train_run
    from dmlkit.training.frozen_features import backbone_inputs

    here, other = tmp_path / "here", tmp_path / "other"
    here.mkdir()
    other.mkdir()
    (here / "w.pth").write_bytes(weights_file.read_bytes())
    monkeypatch.chdir(here)
    train_run(_config({"weights": "w.pth", "cache_dir": "cache"}), here / "run",
              log=lambda _m: None)
    cached = sorted(p.name for p in (here / "cache").glob("*.pt"))
    assert cached  # the training set's features
    monkeypatch.chdir(other)
    run = load_run(here / "run")  # (the weights file is found from here too)
    assert run.model.cache_dir == str(here / "cache")
    said: list[str] = []
    backbone_inputs(run.model, run_data(run, "train").x, log=said.append)
    assert said == [f"backbone features of 30 items read from {here / 'cache' / cached[0]}"]
    assert not (other / "cache").exists()  # no new cache relative to this directory
