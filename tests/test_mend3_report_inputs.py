"""What `dmlkit report` and `dmlkit explain` say of inputs that are not a run: a
metrics.json of the wrong shape, a file or a missing folder given as the run directory;
and the report's tables and curves on sparse (but valid) metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from dmlkit.config import Config
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("mend3")
    config = {"name": "m3", "model": {"name": "mlp", "dim": 4, "hidden": [8]},
              "training": {"epochs": 1, "num_threads": 1, "progress": False},
              "data": {"name": "digits", "max_per_class": 8, "max_heldout_per_class": 4}}
    train_run(Config.from_dict(config), root / "run", log=lambda *a: None)
    return root / "run"


def _copy(trained: Path, dest: Path, metrics: str | None) -> Path:
    dest.mkdir()
    for name in ("config.yaml", "model.pt"):
        shutil.copy(trained / name, dest / name)
    if metrics is not None:
        (dest / "metrics.json").write_text(metrics)
    return dest


def _error(res, code: int = 1) -> str:
    assert res.exit_code == code, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    lines = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


WRONG_SHAPES = {
    "[1, 2]": "it holds an array [1, 2], not an object of metrics",
    '"text"': 'it holds a string "text", not an object of metrics',
    '{"history": [{"loss": 1.0}]}': "its history's record 1 has no epoch",
    '{"history": "abc"}': 'its history is a string "abc", not an array',
    '{"history": [3]}': "its history's record 1 is a number 3, not an object",
    '{"history": [{"epoch": 1, "lr": "x"}]}': "record 1: lr is a string \"x\", not a number",
    '{"history": [{"epoch": 1, "val_map_at_r": null}]}': "val_map_at_r is null, not a number",
    '{"map_at_r": 0.5, "baseline": 3}': "baseline is a number 3, not an object of metrics",
    '{"baseline": {"map_at_r": true}}': "baseline.map_at_r is a boolean true, not a number",
    '{"precision_at_1": "abc"}': 'precision_at_1 is a string "abc", not a number',
}


@pytest.mark.parametrize("text", list(WRONG_SHAPES))
def test_wrong_shaped_metrics_refused_in_one_line_naming_the_file(trained, tmp_path, text):
    run = _copy(trained, tmp_path / "run", text)
    line = _error(runner.invoke(app, ["report", str(run), "--projection", "pca",
                                      "--max-items", "20"]))
    assert line.startswith(f"error: {run / 'metrics.json'} is not a dmlkit metrics file: ")
    assert WRONG_SHAPES[text] in line
    assert "dmlkit train --resume --out" in line  # the way back
    assert not (run / "report.html").exists()


def test_metrics_problem_accepts_what_training_writes(trained):
    from dmlkit.report.metrics_file import check_metrics, metrics_problem

    written = json.loads((trained / "metrics.json").read_text())
    assert metrics_problem(written) is None
    assert metrics_problem(None) is None and check_metrics(None, "m.json", "fix") == {}
    # no loss (an epoch that trained no batch), NaN metrics, null table values: valid
    assert metrics_problem({"map_at_r": None, "r_precision": float("nan"),
                            "history": [{"epoch": 1, "loss": None, "lr": 0.1,
                                         "val_map_at_r": float("nan")}]}) is None


def test_sparse_metrics_render(trained, tmp_path):
    """A baseline lacking a metric shows n/a; a learning rate missing from a later epoch
    draws no learning-rate curve (rather than failing)."""
    run = _copy(trained, tmp_path / "run", json.dumps({
        "map_at_r": 0.5, "precision_at_1": 0.75, "baseline": {"map_at_r": 0.25},
        "history": [{"epoch": 1, "loss": 1.0, "lr": 0.1}, {"epoch": 2, "loss": 0.5}]}))
    res = runner.invoke(app, ["report", str(run), "--projection", "pca", "--max-items", "20",
                              "--png-dir", str(tmp_path / "figs")])
    assert res.exit_code == 0, res.output
    html = (run / "report.html").read_text()
    assert "0.2500" in html and "n/a" in html
    assert "training loss" in html and "<title>learning rate" not in html
    assert not (tmp_path / "figs" / "learning_rate.png").exists()
    assert (tmp_path / "figs" / "curves.png").is_file()


def test_report_of_a_file_says_it_is_not_a_run_directory(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("x")
    line = _error(runner.invoke(app, ["report", str(path)]))
    assert f"{path} is not a dmlkit run directory (it is a file)" in line
    assert "--out" not in line.split(":")[0]


@pytest.mark.parametrize("command", [["report"], ["evaluate"],
                                     ["explain", "--a", "heldout:0", "--b", "heldout:1"]])
def test_missing_run_directory_said_missing(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, [command[0], "missingdir", *command[1:]])
    line = _error(res)
    assert "missingdir does not exist" in line and "config.yaml" not in line


def test_load_run_says_why_a_path_is_no_run(tmp_path):
    from dmlkit.runs import load_run

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run(tmp_path / "missing")
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"is not a dmlkit run directory \(it is a file"):
        load_run(tmp_path / "f")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"not a dmlkit run directory \(no config.yaml"):
        load_run(tmp_path / "empty")
