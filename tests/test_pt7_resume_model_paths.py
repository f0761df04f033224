"""Resuming with the config a run was trained from, whose model files are relative: the
run saved them absolute, and the two name the same files."""

from __future__ import annotations

import pytest

from dmlkit.config import Config
from dmlkit.config.compare import config_changes


def _config(model: dict) -> Config:
    return Config.from_dict({"name": "p", "data": {"name": "digits"}, "model": model})


def test_relative_model_paths_match_the_saved_absolute_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    given = _config({"name": "efficientnet_lite0", "cache_dir": "cache", "weights": "w.pth"})
    saved = _config({"name": "efficientnet_lite0", "cache_dir": str(tmp_path / "cache"),
                     "weights": str(tmp_path / "w.pth")})
    assert config_changes(given, saved) == []


@pytest.mark.parametrize("key", ["cache_dir", "weights"])
def test_another_model_file_is_a_change(tmp_path, monkeypatch, key):
    monkeypatch.chdir(tmp_path)
    given = _config({"name": "efficientnet_lite0", key: "other"})
    saved = _config({"name": "efficientnet_lite0", key: str(tmp_path / "mine")})
    assert config_changes(given, saved) == [f"model.{key}: {str(tmp_path / 'mine')!r} -> 'other'"]
