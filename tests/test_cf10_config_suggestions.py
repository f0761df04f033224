"""Class lists that the split would ignore, "did you mean" suggestions for misspelled
config keys, component names and choices, and the wording of scalar type errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmlkit.config import Config, DataConfig
from dmlkit.registry import DISTANCES, LOSSES, MINERS, MODELS, SAMPLERS

CONFIGS = sorted(Path(__file__).resolve().parents[1].glob("configs/*.yaml"))


# class lists without split: classes -----------------------------------------------------


@pytest.mark.parametrize("data, named", [
    ({"train_classes": [0, 1], "test_classes": [5, 6]},
     "data.train_classes [0, 1] and data.test_classes [5, 6]"),
    ({"train_classes": [0, 1]}, "data.train_classes [0, 1]"),
    ({"test_classes": ["cat"]}, "data.test_classes ['cat']"),
])  # fmt: skip
def test_class_lists_with_a_stratified_split_are_refused(data, named):
    with pytest.raises(ValueError) as err:
        Config.from_dict({"data": {"name": "digits", **data}})
    message = str(err.value)
    assert message.startswith(named) and "\n" not in message
    assert "data.split: classes" in message and "'stratified'" in message


def test_class_lists_set_on_the_command_line_without_the_split_are_refused():
    from dmlkit.cli.train import apply_overrides

    cfg = Config.from_yaml("configs/digits.yaml")
    with pytest.raises(
        ValueError,
        match=r"data.train_classes \[0, 1\] and data.test_classes "
        r"\[5, 6\] .*data.split: classes",
    ):
        apply_overrides(cfg, ["data.train_classes=[0,1]", "data.test_classes=[5,6]"])
    both = apply_overrides(
        cfg, ["data.train_classes=[0,1]", "data.test_classes=[5,6]", "data.split=classes"]
    )
    assert both.data.split == "classes" and both.data.test_classes == [5, 6]


def test_class_lists_with_the_classes_split_and_the_python_api_still_work():
    cfg = DataConfig(name="digits", split="classes", train_classes=[0, 1], test_classes=[2])
    assert cfg.train_classes == [0, 1]
    with pytest.raises(ValueError, match="data.test_classes"):
        DataConfig(name="digits", test_classes=[3])
    from dmlkit.data import split_dataset

    with pytest.raises(ValueError, match=r"data.train_classes \[0, 1\].*data.split: classes"):
        split_dataset({"name": "digits", "train_classes": [0, 1]})


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_still_load(path):
    Config.from_yaml(path)


# did you mean ---------------------------------------------------------------------------


@pytest.mark.parametrize("text, prefix, suggestion", [
    ("training: {epoch: 2}", "unknown key(s) ['epoch'] in section 'training'; allowed: [",
     "did you mean 'epochs'?"),
    ("trainig: {epochs: 2}", "unknown key(s) ['trainig'] in section 'config'; allowed: [",
     "did you mean 'training'?"),
    ("optimizer: {lr: 0.1, weight_decy: 0.1}", "unknown key(s) ['weight_decy'] in section "
     "'optimizer'", "did you mean 'weight_decay'?"),
    ("loss: {name: triplet_margin, margn: 0.1}", "unknown key(s) ['margn'] in section 'loss' "
     "(loss 'triplet_margin'); allowed: [", "did you mean 'margin'?"),
    ("loss: {name: triplet_margn}", "unknown loss 'triplet_margn'; known: ",
     "did you mean 'triplet_margin'?"),
    ("miner: {name: batch_hrd}", "unknown miner 'batch_hrd'; known: ",
     "did you mean 'batch_hard'?"),
    ("sampler: {name: m_per_clas}", "unknown sampler 'm_per_clas'; known: ",
     "did you mean 'm_per_class'?"),
    ("model: {name: mpl}", "unknown model 'mpl'; known: ", "did you mean 'mlp'?"),
    ("optimizer: {name: adamm}", "optimizer.name must be one of ['adam', 'adamw', 'sgd'], "
     "got 'adamm'", "did you mean 'adam'"),
    ("schedule: {name: cosin}", "schedule.name must be one of ['cosine', 'step', 'none'], "
     "got 'cosin'", "did you mean 'cosine'?"),
    ("data: {name: digit}", "data.name must be one of [", "did you mean 'digits'"),
    ("data: {split: class}", "data.split must be one of ['stratified', 'classes'], got "
     "'class'", "did you mean 'classes'?"),
    ("tune: {fold: 2}", "unknown key(s) ['fold'] in section 'tune'; allowed: [",
     "did you mean 'folds'?"),
    ("tune: {space: {optimizer.lr: {low: 0.1, hihg: 0.2}}}",
     "unknown key(s) ['hihg'] in tune.space['optimizer.lr']; allowed: [",
     "did you mean 'high'?"),
])  # fmt: skip
def test_misspelled_names_get_a_suggestion_after_the_message(text, prefix, suggestion):
    with pytest.raises(ValueError) as err:
        Config.from_yaml(text).check()
    message = str(err.value)
    assert message.startswith(prefix), message
    assert message.endswith(suggestion) or message.endswith(suggestion + "?"), message
    assert message.count("did you mean") == 1 and "\n" not in message


def test_several_misspelled_keys_each_get_their_suggestion():
    with pytest.raises(ValueError) as err:
        Config.from_yaml("training: {epoch: 2, batch_sise: 8}")
    message = str(err.value)
    assert message.startswith("unknown key(s) ['batch_sise', 'epoch'] in section 'training'")
    assert message.endswith("did you mean 'batch_size' for 'batch_sise', 'epochs' for 'epoch'?")


def test_names_with_nothing_close_get_no_suggestion():
    for text in ("training: {zzzz: 2}", "loss: {name: qqqqqq}", "optimizer: {name: xyzzy}"):
        with pytest.raises(ValueError) as err:
            Config.from_yaml(text).check()
        assert "did you mean" not in str(err.value)


def test_suggestions_ignore_case_and_dashes():
    with pytest.raises(ValueError, match=r"did you mean 'triplet_margin'\?$"):
        LOSSES.get("Triplet-Margin")
    with pytest.raises(ValueError, match=r"did you mean 'cosine'\?$"):
        Config.from_yaml("schedule: {name: Cosine}")


@pytest.mark.parametrize("registry, wrong, right", [
    (LOSSES, "multi_similarty", "multi_similarity"),
    (MINERS, "multi_similarty", "multi_similarity"),
    (SAMPLERS, "m_per_clas", "m_per_class"),
    (MODELS, "small_cn", "small_cnn"),
    (DISTANCES, "cosin", "cosine"),
])  # fmt: skip
def test_every_registry_suggests_close_names(registry, wrong, right):
    assert right in registry.names()
    with pytest.raises(ValueError) as err:
        registry.get(wrong)
    message = str(err.value)
    assert message.startswith(f"unknown {registry.family} {wrong!r}; known: ")
    assert message.endswith(f"; did you mean {right!r}?")


def test_unknown_build_parameters_get_a_suggestion():
    with pytest.raises(ValueError) as err:
        LOSSES.build("triplet_margin", margn=0.1)
    message = str(err.value)
    assert message.startswith(
        "loss 'triplet_margin' got unknown parameter(s) ['margn']; allowed: ["
    )
    assert message.endswith("; did you mean 'margin'?")


def test_command_line_misspellings_are_one_line_with_the_suggestion(capsys):
    from typer.testing import CliRunner

    from dmlkit.cli.main import app

    for key, words in (
        ("training.epoch=3", "did you mean 'epochs'?"),
        ("loss.name=triplet_margn", "did you mean 'triplet_margin'?"),
    ):
        result = CliRunner().invoke(app, ["train", "configs/digits.yaml", "--set", key])
        assert result.exit_code != 0
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and words in lines[0], result.output


# wording of scalar type errors ----------------------------------------------------------


@pytest.mark.parametrize("text, words", [
    ("training: {epochs: 2.5}", "training.epochs must be an int, got 2.5"),
    ("training: {epochs: many}", "training.epochs must be an int, got 'many'"),
    ("optimizer: {lr: fast}", "optimizer.lr must be a float, got 'fast'"),
    ("training: {amp: 1}", "training.amp must be a bool, got 1"),
])  # fmt: skip
def test_scalar_type_errors_use_the_right_article(text, words):
    with pytest.raises(ValueError) as err:
        Config.from_yaml(text)
    assert str(err.value) == words
