"""``dmlkit train`` names its run directory with the run's first message, so a setting
refused before the run starts announces no directory that does not exist."""

from __future__ import annotations

from test_train_robustness import TINY, one_error
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()


def test_a_model_setting_refused_announces_no_run_directory(tmp_path):
    (tmp_path / "bad.yaml").write_text(TINY.replace("hidden: [16]", "hidden: [-3]"))
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(tmp_path / "bad.yaml"), "--out", str(out)])
    one_error(res, "hidden[0] must be an integer >= 1")
    assert "run directory" not in res.output and not out.exists()


def test_a_run_names_its_directory_first(tmp_path):
    (tmp_path / "ok.yaml").write_text(TINY)
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(tmp_path / "ok.yaml"), "--out", str(out),
                              "--epochs", "1"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0] == f"run directory: {out}" and lines[1].startswith("training on ")
    assert sum(line.startswith("run directory") for line in lines) == 1
