"""A YAML true is no number in any numeric field; a warmup as long as the run is warned
of; `schedule: null` means no schedule."""

from __future__ import annotations

import pytest

from dmlkit.config import Config
from dmlkit.training import train_run

BASE = {"name": "t", "data": {"name": "digits", "max_per_class": 10,
                              "max_heldout_per_class": 5},
        "model": {"name": "mlp", "hidden": [16], "dim": 8},
        "training": {"epochs": 1, "batch_size": 20}}


def _with(section: str, key: str, value: object) -> dict:
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    raw.setdefault(section, {})[key] = value
    return raw


@pytest.mark.parametrize(("section", "key"), [
    ("optimizer", "lr"), ("optimizer", "weight_decay"), ("training", "epochs"),
    ("training", "seed"), ("data", "seed"), ("schedule", "warmup_epochs"),
    ("training", "anchor_weight")])
def test_a_boolean_is_refused_where_a_number_is_due(section, key):
    with pytest.raises(ValueError, match=rf"{section}\.{key} must be a"):
        Config.from_dict(_with(section, key, True))


def test_numbers_still_coerce():
    cfg = Config.from_dict(_with("optimizer", "lr", "1e-3"))
    assert cfg.optimizer.lr == 1e-3
    assert Config.from_dict(_with("training", "epochs", 2.0)).training.epochs == 2


@pytest.mark.parametrize("warmup", [1, 3])
def test_a_warmup_as_long_as_the_run_is_warned_of(tmp_path, warmup):
    cfg = Config.from_dict(_with("schedule", "warmup_epochs", warmup))
    with pytest.warns(UserWarning, match=r"warmup_epochs \(\d\) is not below training"):
        train_run(cfg, tmp_path / "run", log=lambda _m: None)
    assert (tmp_path / "run" / "model.pt").is_file()  # (a smoke run still trains)


def test_a_shorter_warmup_is_not_warned_of(tmp_path):
    import warnings

    raw = _with("schedule", "warmup_epochs", 0.5)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*warmup")
        train_run(Config.from_dict(raw), tmp_path / "run", log=lambda _m: None)
    assert (tmp_path / "run" / "model.pt").is_file()


def test_schedule_null_means_no_schedule():
    raw = dict(BASE, schedule=None)
    assert Config.from_dict(raw).schedule.name == "none"
    assert Config.from_dict(BASE).schedule.name == "cosine"  # (left out: the default)
