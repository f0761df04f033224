"""A ``.py`` file under ``imports:`` given other than in a config file (``--set
imports=[...]``, ``Config.from_dict``, ``config.imports = [...]``) is saved in the run's
config.yaml as the absolute path it was imported from, so the run loads and evaluates
from another working directory."""

from __future__ import annotations

import sys

import pytest
import yaml
from typer.testing import CliRunner
from user_parts import linear_parts

from dmlkit.cli.main import app
from dmlkit.config import Config
from dmlkit.registry import MODELS

runner = CliRunner()

PARTS = linear_parts("md7_mlp", "MD7MLP")

RAW = {"name": "md7", "data": {"name": "digits", "max_per_class": 10,
                                "max_heldout_per_class": 10},
       "model": {"name": "md7_mlp", "dim": 8}, "loss": {"name": "triplet_margin"},
       "miner": {"name": "batch_hard"},
       "sampler": {"name": "m_per_class", "m": 2, "batch_size": 10},
       "training": {"epochs": 1, "num_threads": 1, "progress": False}}  # fmt: skip


def forget() -> None:
    """A new process: the parts' module not imported, its model not registered."""
    sys.modules.pop("md7_parts", None)
    MODELS._entries.pop("md7_mlp", None)


@pytest.fixture
def parts(tmp_path, monkeypatch):
    """``md7_parts.py`` in the working directory ``tmp_path/work``; its path."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "md7_parts.py").write_text(PARTS)
    monkeypatch.chdir(work)
    forget()
    yield (work / "md7_parts.py").resolve()
    forget()


def test_from_dict_records_a_py_entry_absolute(parts, tmp_path):
    config = Config.from_dict({**RAW, "imports": ["md7_parts.py"]})
    assert config.imports == [str(parts)]
    assert "md7_mlp" in MODELS
    forget()  # relative to the folder given, where there is one
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "md7_parts.py").write_text(PARTS)
    config = Config.from_dict({**RAW, "imports": ["md7_parts.py"]}, folder=tmp_path / "other")
    assert config.imports == [str((tmp_path / "other" / "md7_parts.py").resolve())]
    forget()
    config = Config.from_dict(RAW | {"model": {"name": "mlp"}})
    config.imports = ["md7_parts.py"]  # (set in place: check records it too)
    config.check()
    assert config.imports == [str(parts)]


def test_a_run_trained_with_from_dict_imports_evaluates_elsewhere(parts, tmp_path,
                                                                  monkeypatch):
    from dmlkit.training import load_run, train_run

    out = tmp_path / "run"
    train_run(Config.from_dict({**RAW, "imports": ["md7_parts.py"]}), out, log=lambda _m: None)
    assert yaml.safe_load((out / "config.yaml").read_text())["imports"] == [str(parts)]
    monkeypatch.chdir(tmp_path)
    forget()
    assert type(load_run(out).model).__name__ == "MD7MLP"


def test_a_run_trained_with_set_imports_evaluates_elsewhere(parts, tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "md7.yaml"
    config.write_text(yaml.safe_dump(RAW))
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(config), "--out", str(out), "--no-progress",
                                 "--set", "imports=[md7_parts.py]"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((out / "config.yaml").read_text())["imports"] == [str(parts)]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    forget()
    result = runner.invoke(app, ["evaluate", str(out)])
    assert result.exit_code == 0, result.output


def test_set_imports_registers_a_part_another_set_names(parts, tmp_path):
    """``--set model.name=PART --set imports=[parts.py]``: the module is imported first,
    whatever the order the overrides were given in."""
    raw = RAW | {"model": {"name": "mlp", "hidden": [8]}}
    config = tmp_path / "plain.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(config), "--out", str(out), "--no-progress",
                                 "--set", "model.name=md7_mlp", "--set",
                                 "imports=[md7_parts.py]"])
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["name"] == "md7_mlp" and saved["imports"] == [str(parts)]
