"""A module named under ``imports:`` and found beside the config file (not on sys.path,
not in the working directory) is saved by its file's path, so the finished run is
evaluated, embedded and resumed from the working directory it was trained in."""

from __future__ import annotations

import sys

import pytest
import yaml
from typer.testing import CliRunner
from user_parts import linear_parts

from dmlkit.cli.main import app
from dmlkit.registry import MODELS

runner = CliRunner()

PARTS = linear_parts("beside_mlp", "BesideMLP")

CONFIG = {"name": "beside", "imports": ["beside_parts"],
          "data": {"name": "digits", "max_per_class": 10, "max_heldout_per_class": 10},
          "model": {"name": "beside_mlp", "dim": 8}, "loss": {"name": "triplet_margin"},
          "sampler": {"name": "m_per_class", "m": 2, "batch_size": 10},
          "training": {"epochs": 1, "num_threads": 1, "progress": False}}  # fmt: skip


def forget() -> None:
    """A new process: the parts' module not imported, its model not registered."""
    sys.modules.pop("beside_parts", None)
    MODELS._entries.pop("beside_mlp", None)


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """``own/custom.yaml`` and ``own/beside_parts.py``, trained from ``tmp_path``."""
    own = tmp_path / "own"
    own.mkdir()
    (own / "beside_parts.py").write_text(PARTS)
    (own / "custom.yaml").write_text(yaml.safe_dump(CONFIG))
    monkeypatch.chdir(tmp_path)
    forget()
    yield tmp_path
    forget()


def test_a_module_beside_the_config_is_saved_by_its_path(layout):
    res = runner.invoke(app, ["train", "own/custom.yaml", "--out", "runs/c"])
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((layout / "runs/c/config.yaml").read_text())["imports"]
    assert saved == [str((layout / "own/beside_parts.py").resolve())]
    forget()  # a later command is another process
    res = runner.invoke(app, ["evaluate", "runs/c", "--sections", "retrieval"])
    assert res.exit_code == 0, res.output
    forget()
    res = runner.invoke(app, ["embed", "runs/c", "--out", "e.npz"])
    assert res.exit_code == 0, res.output


def test_resuming_from_the_config_file_again_accepts_the_saved_run(layout):
    res = runner.invoke(app, ["train", "own/custom.yaml", "--out", "runs/r"])
    assert res.exit_code == 0, res.output
    forget()
    res = runner.invoke(app, ["train", "own/custom.yaml", "--out", "runs/r", "--resume",
                              "--epochs", "2"])  # fmt: skip
    assert res.exit_code == 0, res.output


def test_a_module_on_sys_path_keeps_its_name(layout, monkeypatch):
    monkeypatch.syspath_prepend(str(layout / "own"))
    res = runner.invoke(app, ["train", "own/custom.yaml", "--out", "runs/p"])
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((layout / "runs/p/config.yaml").read_text())["imports"]
    assert saved == ["beside_parts"]  # (found on sys.path: portable by its name)


def test_a_module_beside_a_config_in_the_working_directory_keeps_its_name(layout,
                                                                        monkeypatch):
    monkeypatch.chdir(layout / "own")
    res = runner.invoke(app, ["train", "custom.yaml", "--out", "../runs/w"])
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((layout / "runs/w/config.yaml").read_text())["imports"]
    assert saved == ["beside_parts"]  # (importable from this working directory by name)
