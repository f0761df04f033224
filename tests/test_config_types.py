"""Every plain field of the config sections is type- and range-checked when the config is
read (by its rule in :mod:`dmlkit.config.field_rules`), tune spaces are checked value by
value, and ``data.augment`` settings are checked key by key; errors name the key, the
value given and what is expected."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from dmlkit.config import (
    Config,
    DataConfig,
    OptimizerConfig,
    ScheduleConfig,
    TrainingConfig,
    digits_config,
)
from dmlkit.config.field_rules import CUSTOM, RULES
from dmlkit.data.augment import AugmentedDataset, random_shift_flip
from dmlkit.data.augment_ops import AugmentPolicy
from dmlkit.data.dataset import ArrayDataset

SECTIONS = {"data": DataConfig, "optimizer": OptimizerConfig, "schedule": ScheduleConfig,
            "training": TrainingConfig}  # fmt: skip


def _raises(raw: dict, *words: str) -> str:
    with pytest.raises(ValueError) as err:
        Config.from_dict(raw).check()
    for word in words:
        assert word in str(err.value), (word, str(err.value))
    return str(err.value)


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_field_has_a_rule_or_a_check_of_its_own(section: str) -> None:
    names = {f.name for f in dataclasses.fields(SECTIONS[section])}
    assert names == set(RULES[section]) | CUSTOM[section]
    assert not set(RULES[section]) & CUSTOM[section]


@pytest.mark.parametrize("value", ["abc", 0, -1, 2.5, True, [3]])
def test_patience_must_be_an_integer_at_least_one(value) -> None:
    _raises({"training": {"patience": value}}, "training.patience must be an integer >= 1",
            repr(value), "or null for no early stopping")
    with pytest.raises(ValueError, match="training.patience"):
        TrainingConfig(patience=value)  # built directly, too


def test_patience_takes_null_and_whole_numbers() -> None:
    assert Config.from_yaml("training: {patience: null}").training.patience is None
    assert Config.from_yaml("training: {patience: 3}").training.patience == 3
    assert Config.from_yaml("training: {patience: 3.0}").training.patience == 3


def _null_default_fields() -> list[tuple[str, str]]:
    return [(section, f.name) for section, cls in SECTIONS.items()
            for f in dataclasses.fields(cls) if f.default is None and f.name in RULES[section]]


@pytest.mark.parametrize(("section", "key"), _null_default_fields())
def test_every_null_default_field_checks_its_type(section: str, key: str) -> None:
    rule = RULES[section][key]
    bad = 5 if rule.kind is str else "abc"
    _raises({section: {key: bad}}, f"{section}.{key} must be {rule.expected()}", repr(bad))
    assert getattr(Config.from_dict({section: {key: None}}), section).__dict__[key] is None


@pytest.mark.parametrize(("raw", "words"), [
    ({"training": {"grad_cache_chunk": "abc"}}, ["training.grad_cache_chunk", "'abc'"]),
    ({"training": {"grad_cache_chunk": 0}}, ["training.grad_cache_chunk", "integer >= 1"]),
    ({"optimizer": {"loss_lr": "abc"}}, ["optimizer.loss_lr must be a number > 0", "'abc'"]),
    ({"optimizer": {"loss_lr": -1}}, ["optimizer.loss_lr must be a number > 0", "-1"]),
    ({"optimizer": {"loss_lr": 0}}, ["optimizer.loss_lr", "got 0"]),
    ({"optimizer": {"lr": float("inf")}}, ["optimizer.lr must be a number > 0", "inf"]),
    ({"optimizer": {"weight_decay": -0.1}}, ["optimizer.weight_decay", ">= 0"]),
    ({"optimizer": {"momentum": 2}}, ["optimizer.momentum", "in [0, 1]"]),
    ({"schedule": {"gamma": 0}}, ["schedule.gamma must be a number > 0"]),
    ({"schedule": {"min_lr_ratio": 1.5}}, ["schedule.min_lr_ratio", "in [0, 1]"]),
    ({"data": {"num_tuples": 0}}, ["data.num_tuples must be an integer >= 1"]),
    ({"data": {"seed": -1}}, ["data.seed must be an integer in [0, 9223372036854775807]"]),
    ({"data": {"min_score": "high"}}, ["data.min_score must be a number", "'high'"]),
    ({"data": {"name": "npz", "path": 3}}, ["data.path must be a string", "got 3"]),
    ({"training": {"val_fraction": 1.0}}, ["training.val_fraction", "in [0, 1)"]),
])  # fmt: skip
def test_bad_values_name_the_key_the_value_and_what_is_expected(raw, words) -> None:
    _raises(raw, *words)


def test_yaml_strings_of_numbers_still_parse() -> None:
    cfg = Config.from_yaml("optimizer: {lr: 1e-3, loss_lr: 1e-2}\ndata: {min_score: 3}")
    assert cfg.optimizer.loss_lr == 1e-2 and cfg.data.min_score == 3


def test_values_changed_in_place_are_checked_again() -> None:
    cfg = Config.from_yaml("training: {patience: 2}")
    cfg.training.patience = 0
    with pytest.raises(ValueError, match="training.patience must be an integer >= 1"):
        cfg.check()
    with pytest.raises(ValueError, match="training.epochs must be an integer >= 1; got 'x'"):
        TrainingConfig(epochs="x")  # type: ignore[arg-type]


def test_set_override_of_patience_is_rejected_before_training() -> None:
    from dmlkit.cli.train import apply_overrides

    cfg = Config.from_yaml("training: {patience: 6}")
    with pytest.raises(ValueError, match=re.escape("training.patience must be an integer >= 1")):
        apply_overrides(cfg, ["training.patience=abc"])
    assert apply_overrides(cfg, ["training.patience=null"]).training.patience is None


# -- tune spaces ----------------------------------------------------------------------------

BASE = """
name: tiny
data: {name: digits, split: classes, train_classes: [0, 1, 2, 3, 4, 5]}
model: {name: small_cnn, in_channels: 1, image_size: 8, dim: 16, width: 8}
loss: {name: triplet_margin, margin: 0.1}
training: {epochs: 2}
tune:
  folds: 2
  space:
    loss: {choices: [triplet_margin, multi_similarity, contrastive]}
"""


@pytest.mark.parametrize(("param", "words"), [
    ("training.patience: {choices: [3, abc]}", "choice 'abc'"),
    ("training.patience: {choices: [abc]}", "choice 'abc'"),
    # a value only some trials would reach (when) is checked all the same
    ("training.patience: {choices: [2, abc], when: {loss.name: multi_similarity}}",
     "choice 'abc'"),
    ("training.patience: {low: 0, high: 4}", "low 0"),
    ("training.grad_cache_chunk: {choices: [8, 0]}", "choice 0"),
    ("optimizer.loss_lr: {low: -1.0, high: 1.0}", "low -1.0"),
    ("data.augment: {choices: [null, {hflip: 2}]}", "data.augment.hflip must be true or false"),
])  # fmt: skip
def test_tune_space_values_are_checked_when_the_space_is_loaded(param: str, words: str) -> None:
    path = param.split(":")[0]
    with pytest.raises(ValueError, match=re.escape(f"tune.space[{path!r}]")) as err:
        Config.from_yaml(BASE + f"    {param}\n")
    assert words in str(err.value)


def test_sound_tune_space_values_pass() -> None:
    text = BASE + ("    training.patience: {choices: [null, 2, 4]}\n"
                   "    optimizer.loss_lr: {low: 1e-4, high: 1e-2, log: true}\n")
    assert Config.from_yaml(text).tune.space["training.patience"]["choices"] == [None, 2, 4]


# -- data.augment ---------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "words"), [
    ({"degrees": "abc"}, "data.augment.degrees must be a number in [0, 180]; got 'abc'"),
    ({"degrees": float("nan")}, "data.augment.degrees must be a number"),
    ({"degrees": True}, "data.augment.degrees must be a number"),
    ({"crop_scale": 2}, "data.augment.crop_scale must be a pair [a, b] of numbers"),
    ({"crop_scale": [0.5]}, "data.augment.crop_scale must be a pair"),
    ({"crop_scale": "ab"}, "data.augment.crop_scale must be a pair"),
    ({"crop_scale": [0.5, "x"]}, "data.augment.crop_scale must be a pair"),
    ({"crop_scale": [0.9, 0.5]}, "0.01 <= a <= b <= 1.0; got [0.9, 0.5]"),
    ({"crop_ratio": [0, 1]}, "data.augment.crop_ratio must be a pair"),
    ({"hflip": 2}, "data.augment.hflip must be true or false; got 2 (int)"),
    ({"vflip": "yes"}, "data.augment.vflip must be true or false; got 'yes'"),
    ({"translate": 1}, "data.augment.translate must be a number in [0, 1)"),
    ({"brightness": -0.1}, "data.augment.brightness must be a number in [0, 1)"),
    ({"contrast": [0.1]}, "data.augment.contrast must be a number"),
    ({"saturation": None}, "data.augment.saturation must be a number"),
])  # fmt: skip
def test_every_augment_key_is_type_checked(spec: dict, words: str) -> None:
    with pytest.raises(ValueError) as err:
        AugmentPolicy.from_dict(spec)
    assert words in str(err.value)
    _raises({"data": {"augment": spec}}, words)  # through the config, too


def test_sound_augment_settings_are_kept_as_numbers() -> None:
    policy = AugmentPolicy.from_dict({"crop_scale": [0.5, 1], "degrees": 10, "hflip": True})
    assert policy.crop_scale == (0.5, 1.0) and policy.degrees == 10.0 and policy.hflip is True
    assert policy.geometric and AugmentPolicy().geometric is False


def test_augmented_dataset_flip_flags_must_be_bools() -> None:
    data = ArrayDataset(torch.rand(4, 1, 6, 6), torch.arange(4))
    with pytest.raises(ValueError, match="hflip must be True or False, got 2"):
        AugmentedDataset(data, hflip=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hflip must be True or False, got 1"):
        random_shift_flip(data.x, hflip=1)  # type: ignore[arg-type]


def test_python_api_values_of_other_container_types_are_normalized():
    import numpy as np
    import torch

    from dmlkit.config import DataConfig, TrainingConfig

    assert TrainingConfig(device=torch.device("cpu")).device == "cpu"
    for given in (range(3), np.arange(3), (0, 1, 2)):
        cfg = DataConfig(name="digits", split="classes", train_classes=given)
        assert cfg.train_classes == [0, 1, 2] and all(type(c) is int for c in cfg.train_classes)


def test_set_loss_name_drops_the_old_loss_parameters_model_name_keeps_shared_ones() -> None:
    """A triplet margin of 0.2 (a distance) must not become ArcFace's margin (degrees)."""
    from dmlkit.cli.train import apply_overrides

    cfg = digits_config()
    cfg.loss = {"name": "triplet_margin", "margin": 0.2}
    cfg.miner = {"name": "triplet_margin", "margin": 0.3, "type_of_triplets": "hard"}
    cfg.model = {"name": "mlp", "dim": 24, "hidden": [32]}
    out = apply_overrides(cfg, ["loss.name=arcface", "miner.name=multi_similarity",
                                "model.name=small_cnn"])
    assert out.loss == {"name": "arcface"}
    assert out.miner == {"name": "multi_similarity"}
    assert out.model["name"] == "small_cnn" and out.model["dim"] == 24
    assert "hidden" not in out.model
    again = apply_overrides(cfg, ["loss.name=arcface", "loss.margin=10"])
    assert again.loss == {"name": "arcface", "margin": 10}


def test_set_loss_parameters_given_before_the_new_name_are_kept() -> None:
    from dmlkit.cli.train import apply_overrides

    cfg = digits_config()
    cfg.loss = {"name": "contrastive"}
    out = apply_overrides(cfg, ["loss.margin=0.3", "loss.name=triplet_margin",
                                "optimizer.lr=0.002"])
    assert out.loss == {"name": "triplet_margin", "margin": 0.3}
    assert out.optimizer.lr == 0.002


def test_a_tune_space_listing_a_loss_parameter_before_the_loss_name_is_refused() -> None:
    from dmlkit.config.tune import TuneConfig
    from dmlkit.tuning.space import check_space

    cfg = digits_config()
    cfg.loss = {"name": "contrastive"}
    cfg.tune = TuneConfig.from_dict({"space": {
        "loss.margin": {"low": 0.05, "high": 0.5},
        "loss.name": {"choices": ["triplet_margin", "arcface"]}}})
    with pytest.raises(ValueError, match="list 'loss.name' first"):
        check_space(cfg)
