"""dmlkit tune's space: paths that choose the items read are frozen, values the model's
own constructor refuses are found before the first trial, and a fractional setting given
an integer range is searched as floats."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from dmlkit.config import Config
from dmlkit.config.tune import TuneConfig

needs_optuna = pytest.mark.skipif(importlib.util.find_spec("optuna") is None,
                                  reason="dmlkit tune needs optuna")

BASE = """
name: tiny
data: {name: digits, split: classes, train_classes: [0, 1, 2, 3, 4, 5], test_classes: [6, 7],
       max_per_class: 16}
model: {name: mlp, in_features: 64, dim: 16, hidden: [32]}
loss: {name: multi_similarity}
sampler: {name: m_per_class, m: 4, batch_size: 8}
training: {epochs: 1, seed: 0, num_threads: 1, progress: false}
"""


def _space(space: str) -> Config:
    return Config.from_yaml(BASE + "tune:\n  folds: 2\n  space:\n" + "".join(
        f"    {line}\n" for line in space.strip().splitlines()))


@pytest.mark.parametrize("path", [
    "data.seed", "data.max_per_class", "data.max_heldout_per_class", "data.num_tuples",
    "data.min_score", "data.crop_seconds", "data.trim_silence",
])
def test_paths_that_choose_the_items_read_cannot_be_tuned(path: str) -> None:
    with pytest.raises(ValueError, match=rf"{path}' cannot be tuned: .*the items read"):
        TuneConfig.from_dict({"space": {path: {"choices": [1, 2]}}})


def test_data_settings_that_keep_the_items_can_still_be_tuned() -> None:
    TuneConfig.from_dict({"space": {"data.augment_shift": {"choices": [0, 1]},
                                    "data.image_size": {"choices": [8, 16]}}})


@needs_optuna
@pytest.mark.parametrize("space, words", [
    ("model.dropout: {low: 0, high: 1}",
     r"'model.dropout': 1.0\} make an invalid config: mlp: dropout must be a number in \[0, 1\)"),
    ("model.dim: {low: 0, high: 8}",
     r"'model.dim': 0\} make an invalid config: mlp: dim must be an integer >= 1"),
    ("model.hidden: {choices: [[0], [32]]}",
     r"'model.hidden': \[0\]\} make an invalid config: mlp: hidden\[0\] must be"),
    ("loss: {choices: [multi_similarity, {name: ntxent, temperature: 0.0}]}",
     r"make an invalid config: temperature must be > 0"),
])
def test_values_the_parts_refuse_fail_before_any_trial(tmp_path: Path, space: str,
                                                       words: str) -> None:
    from dmlkit.tuning import tune

    lines: list[str] = []
    with pytest.raises(ValueError, match=r"^tune.space: the trial's parameters .*" + words):
        tune(_space(space), 3, tmp_path / "out", log=lines.append)
    assert not (tmp_path / "out").exists() and lines == []  # no study, no trial


@needs_optuna
def test_the_parts_check_builds_each_distinct_part_once_and_leaves_the_rng(monkeypatch) -> None:
    import torch

    from dmlkit.training import build
    from dmlkit.tuning.space import check_parts

    built: list[Any] = []
    real = build.build_model
    monkeypatch.setattr(build, "build_model", lambda c: built.append(c.model) or real(c))
    config = _space("model.dim: {choices: [8, 16]}\noptimizer.lr: {low: 0.001, high: 0.01}")
    torch.manual_seed(5)
    before = torch.get_rng_state()
    check_parts(config, torch.zeros(64), 6)
    assert sorted(m["dim"] for m in built) == [8, 16]
    assert torch.equal(torch.get_rng_state(), before)
    built.clear()
    check_parts(_space("optimizer.lr: {low: 0.001, high: 0.01}"), torch.zeros(64), 6)
    assert built == []  # the space leaves the model as configured: nothing to build


class _Recorder:
    """A trial that records how each parameter was sampled (the middle of its range)."""

    def __init__(self) -> None:
        self.kinds: dict[str, str] = {}

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        self.kinds[name] = "categorical"
        return list(choices)[0]

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1,
                    log: bool = False) -> int:
        self.kinds[name] = "int"
        return (low + high) // 2

    def suggest_float(self, name: str, low: float, high: float, *,
                      step: float | None = None, log: bool = False) -> float:
        assert isinstance(low, float) and isinstance(high, float)
        self.kinds[name] = "float"
        return (low + high) / 2


def test_an_integer_range_of_a_fractional_setting_samples_floats() -> None:
    from dmlkit.tuning.space import trial_config

    config = _space("loss: {choices: [triplet_margin]}\n"
                    "loss.margin: {low: 0, high: 1}\n"
                    "model.dropout: {low: 0, high: 1}\n"
                    "optimizer.weight_decay: {low: 0, high: 1}\n"
                    "model.dim: {low: 8, high: 32}\n"
                    "training.epochs: {low: 1, high: 3}")
    trial = _Recorder()
    cfg, chosen = trial_config(config, trial)
    assert trial.kinds == {"loss": "categorical", "loss.margin": "float",
                           "model.dropout": "float", "optimizer.weight_decay": "float",
                           "model.dim": "int", "training.epochs": "int"}
    assert chosen["model.dropout"] == cfg.model["dropout"] == 0.5
    assert cfg.loss["margin"] == 0.5 and cfg.optimizer.weight_decay == 0.5
    assert cfg.model["dim"] == 20 and cfg.training.epochs == 2


def test_takes_fractions_reads_the_type_of_the_setting() -> None:
    from dmlkit.tuning.space import takes_fractions

    raw = _space("optimizer.lr: {low: 0.001, high: 0.01}").to_dict()
    assert takes_fractions(raw, "model.dropout") and takes_fractions(raw, "optimizer.lr")
    assert takes_fractions(raw, "training.grad_clip")  # float | None
    assert not takes_fractions(raw, "model.dim") and not takes_fractions(raw, "training.epochs")
    assert not takes_fractions(raw, "model.nonexistent") and not takes_fractions(raw, "model")
    raw["model"]["name"] = "no_such_model"
    assert not takes_fractions(raw, "model.dropout")
