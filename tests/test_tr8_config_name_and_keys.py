"""``--set name=...`` names the run; a name that is no folder name, and a YAML key given
twice in a config, are refused with one line."""

from __future__ import annotations

import pytest

from dmlkit.cli.train import apply_overrides
from dmlkit.config import Config
from dmlkit.config.tune import set_path


def test_set_name_sets_the_text():
    cfg = apply_overrides(Config(), ["name=myexp"])
    assert cfg.name == "myexp"
    raw = {"name": "run", "loss": {"name": "triplet_margin"}}
    set_path(raw, "name", "other")
    set_path(raw, "loss", "arcface")  # a component section: a name string is its name
    assert raw == {"name": "other", "loss": {"name": "arcface"}}


@pytest.mark.parametrize(("value", "match"), [
    ({"name": "x"}, "name must be text"), (1.5, "name must be text"), (True, "name must be text"),
    ("", "not a folder name"), ("a/b", "not a folder name"), ("..", "not a folder name"),
])
def test_a_name_that_is_no_folder_name_is_refused(value, match):
    """(A whole number is the text of it: ``--set name=2024`` names runs/2024.)"""
    assert Config.from_dict({"name": 2024}).name == "2024"
    with pytest.raises(ValueError, match=match) as err:
        Config.from_dict({"name": value})
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("text", "key", "line", "first"), [
    ("name: a\nmodel: {name: mlp}\ntraining: {epochs: 1}\nmodel: {name: conv}\n",
     "model", 4, 2),
    ("training:\n  epochs: 2\n  seed: 1\n  epochs: 5\n", "epochs", 4, 2),
    ("name: a\ntraining:\n  epochs: 2\ntraining:\n  seed: 3\n", "training", 4, 2),
])
def test_a_key_given_twice_is_refused(tmp_path, text, key, line, first):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        Config.from_yaml(path)
    message = str(err.value)
    assert f"at line {line}" in message and f"key {key!r} is given twice" in message
    assert f"(first at line {first})" in message and "\n" not in message


def test_merge_keys_still_load():
    from dmlkit.config.yaml_text import load_config_text

    raw = load_config_text("a: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n", "t")
    assert raw == {"a": {"x": 1, "y": 2}, "c": {"x": 3, "y": 2}}
