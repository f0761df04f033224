"""A cross-validation fold that no epoch could score (NaN validation MAP@R: no class
with two items to find) has no best epoch: ``best_epoch`` None, not 0 (as if epoch 0
had been chosen), and ``dmlkit crossval`` says so."""

from __future__ import annotations

import math

import pytest
import yaml
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.config.schema import Config
from dmlkit.training.cross_validation import cross_validate
from dmlkit.training.trainer import Trainer

RAW = {
    "name": "folds",
    "data": {"name": "digits", "split": "classes", "train_classes": [0, 1, 2, 3],
             "test_classes": [5, 6, 7, 8, 9], "max_per_class": 12},
    "model": {"name": "mlp", "dim": 8, "hidden": [16]},
    "loss": {"name": "multi_similarity"},
    "sampler": {"name": "m_per_class", "m": 4, "batch_size": 8},
    "training": {"epochs": 2, "seed": 0, "progress": False, "num_threads": 1},
}


@pytest.fixture
def unscored(monkeypatch):
    nan = float("nan")
    monkeypatch.setattr(Trainer, "validate", lambda self: {
        "val_precision_at_1": nan, "val_r_precision": nan, "val_map_at_r": nan})


@pytest.mark.parametrize("objective", ["final", "best_epoch"])
def test_a_fold_never_scored_has_no_best_epoch(unscored, objective):
    result = cross_validate(Config.from_dict(RAW), 2, objective=objective, log=None)
    for fold in result.folds:
        assert fold.best_epoch is None and math.isnan(fold.best_map_at_r)
    assert all(f["best_epoch"] is None for f in result.to_dict()["folds"])
    assert math.isnan(result.best_score)  # (not -inf: nothing was scored)
    if objective == "best_epoch":
        assert all(math.isnan(v) for v in result.curve)


def test_a_scored_fold_names_its_best_epoch():
    result = cross_validate(Config.from_dict(RAW), 2, objective="best_epoch", log=None)
    for fold in result.folds:
        assert fold.best_epoch in (1, 2) and fold.best_map_at_r == max(fold.curve)


def test_crossval_prints_no_best_for_a_fold_never_scored(unscored, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(RAW))
    out = CliRunner().invoke(app, ["crossval", str(path), "-k", "2"])
    assert out.exit_code == 0, out.output
    folds = [ln for ln in out.output.splitlines() if ln.startswith("fold ")]
    assert len(folds) == 2 and all("no epoch scored, so no best" in ln for ln in folds)
    assert "epoch 0" not in out.output and "epoch None" not in out.output
