"""The tune: section of a config and the trial configs it makes (no Optuna needed)."""

from __future__ import annotations

import sys

import pytest

from dmlkit.config import Config
from dmlkit.tuning import FixedTrial, require_optuna, trial_config

BASE = """
name: tiny
data: {name: digits, split: classes, train_classes: [0, 1, 2, 3, 4, 5]}
model: {name: small_cnn, in_channels: 1, image_size: 8, dim: 16, width: 8}
loss: {name: triplet_margin, margin: 0.1}
sampler: {name: m_per_class, m: 6, batch_size: 12}
training: {epochs: 2}
"""
SPACE = (
    BASE
    + """
tune:
  folds: 2
  space:
    loss: {choices: [{name: contrastive, pos_margin: 0.1}, multi_similarity, triplet_margin]}
    loss.margin: {low: 0.05, high: 0.4, when: {loss.name: [triplet_margin]}}
    optimizer.lr: {low: 1e-4, high: 1e-2, log: true}
    model.dim: {choices: [8, 16]}
    miner: {choices: [null, batch_hard]}
    sampler.m: {low: 2, high: 6, step: 2}
    training.epochs: {low: 1, high: 3}
"""
)


def test_space_round_trips_and_parses_numbers() -> None:
    cfg = Config.from_yaml(SPACE)
    assert cfg.tune is not None and cfg.tune.folds == 2
    assert cfg.tune.space["optimizer.lr"]["low"] == 1e-4  # YAML's string "1e-4", parsed
    assert Config.from_yaml(cfg.to_yaml()).to_dict() == cfg.to_dict()
    assert "tune" not in Config.from_yaml(BASE).to_dict()  # configs without one unchanged


def test_trial_config_applies_values_in_order_with_conditions() -> None:
    cfg = Config.from_yaml(SPACE)
    values = {
        "loss": "triplet_margin", "loss.margin": 0.3, "optimizer.lr": 0.002,
        "model.dim": 8, "miner": "batch_hard", "sampler.m": 4, "training.epochs": 3,
    }  # fmt: skip
    out, chosen = trial_config(cfg, FixedTrial(values))
    assert chosen == values
    assert out.loss == {"name": "triplet_margin", "margin": 0.3}
    assert out.optimizer.lr == 0.002 and out.model["dim"] == 8 and out.model["width"] == 8
    assert out.miner == {"name": "batch_hard"} and out.sampler["m"] == 4
    assert out.training.epochs == 3
    # a component mapping among the choices; the condition skips loss.margin
    values["loss"] = '{"name": "contrastive", "pos_margin": 0.1}'
    values["miner"] = None
    out, chosen = trial_config(cfg, FixedTrial(values))
    assert out.loss == {"name": "contrastive", "pos_margin": 0.1} and out.miner is None
    assert "loss.margin" not in chosen


def test_new_component_name_keeps_only_keys_it_accepts() -> None:
    cfg = Config.from_yaml(BASE + "tune: {space: {loss.name: {choices: [multi_similarity]}}}")
    out, _ = trial_config(cfg, FixedTrial({"loss.name": "multi_similarity"}))
    assert out.loss == {"name": "multi_similarity"}  # triplet's margin dropped


def test_impossible_combination_is_a_value_error() -> None:
    cfg = Config.from_yaml(BASE + "tune: {space: {loss.alpha: {low: 1.0, high: 2.0}}}")
    with pytest.raises(ValueError, match="unknown key\\(s\\) \\['alpha'\\] in section 'loss'"):
        trial_config(cfg, FixedTrial({"loss.alpha": 1.5}))


@pytest.mark.parametrize(
    "space, error, match",
    [
        ("{data.train_classes: {choices: [[0, 1]]}}", ValueError, "cannot be tuned"),
        ("{training.val_classes: {choices: [0.5]}}", ValueError, "cannot be tuned"),
        ("{training.seed: {low: 0, high: 3}}", ValueError, "cannot be tuned"),
        ("{optimizer: {choices: [adam]}}", ValueError, "needs a key"),
        ("{foo.bar: {choices: [1]}}", ValueError, "must start with one of"),
        ("{optimizer.lr: {low: 0.1, high: 0.01}}", ValueError, "needs low < high"),
        ("{optimizer.lr: {low: 0, high: 0.01, log: true}}", ValueError, "log range needs low > 0"),
        ("{optimizer.lr: {low: 0.1}}", ValueError, "needs choices, or low and high"),
        ("{model.dim: {choices: []}}", ValueError, "non-empty list"),
        ("{model.dim: {choices: [8, 8]}}", ValueError, "repeats a value"),
        ("{model.dim: {values: [8]}}", ValueError, "unknown key\\(s\\) \\['values'\\]"),
        ("{model.dim: 8}", TypeError, "must be a mapping"),
        ("{optimizer.lr: {low: a, high: 0.1}}", TypeError, "low must be a number"),
    ],
)
def test_bad_space_is_a_clear_error(space: str, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Config.from_yaml(BASE + f"tune: {{space: {space}}}")


def test_bad_tune_options() -> None:
    with pytest.raises(ValueError, match="tune.folds must be >= 2"):
        Config.from_yaml(BASE + "tune: {folds: 1}")
    with pytest.raises(ValueError, match="tune.algorithm must be one of"):
        Config.from_yaml(BASE + "tune: {algorithm: grid}")
    with pytest.raises(ValueError, match="unknown key\\(s\\) \\['trials'\\] in section 'tune'"):
        Config.from_yaml(BASE + "tune: {trials: 3}")
    with pytest.raises(ValueError, match="no tune.space"):
        trial_config(Config.from_yaml(BASE), FixedTrial({}))


def test_missing_optuna_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ImportError, match="pip install 'dmlkit\\[tune\\]'"):
        require_optuna()


@pytest.mark.parametrize("space, words", [
    ("model.widht: {choices: [8, 16]}", "unknown key(s) ['widht'] in section 'model'"),
    ("training.epochs: {low: 1.0, high: 3.0}", "training.epochs must be an int"),
    ("training.epochs: {low: 1, high: 3, step: 0.5}", "training.epochs must be an int"),
    ("model.dim: {low: 8, high: 32.0}", "model.dim must be int"),
    ("loss.name: {choices: [triplet_margin, tripletmargin]}", "unknown loss 'tripletmargin'"),
    ("loss: {choices: [triplet_margin, multi_similarity]}\n    loss.margin: {low: 0.1, high: 0.3}",
     "unknown key(s) ['margin'] in section 'loss' (loss 'multi_similarity')"),
    ("loss.margin: {low: 0.1, high: 0.3, when: {loss.nmae: triplet_margin}}",
     "refers to 'loss.nmae'"),
])
def test_space_mistakes_are_found_before_any_trial(space, words) -> None:
    from dmlkit.tuning.space import check_space

    cfg = Config.from_yaml(BASE + f"tune:\n  folds: 2\n  space:\n    {space}\n")
    with pytest.raises(ValueError, match="tune.space") as err:
        check_space(cfg)
    assert words in str(err.value)
    check_space(Config.from_yaml(SPACE))  # a sound space passes
