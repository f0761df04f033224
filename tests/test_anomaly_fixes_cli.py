"""detect-anomalies and explain refuse outputs that would replace their inputs or break a
saved directory (as report --out refuses a run's own files), check --save before any
fitting, refuse the options a saved detector fixes, and say in one line what is wrong
with NaN rows or images given without a model to embed them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import dmlkit.apps
from dmlkit.cli.main import app

runner = CliRunner()


def _error(res) -> str:
    """The one ``error:`` line of a refused command (exit status 2, no traceback)."""
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


@pytest.fixture()
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savez("n2.npz", x=rng.normal(size=(60, 4)))
    np.savetxt("t2.csv", rng.normal(size=(20, 4)), delimiter=",")
    np.savez("dt.npz", x=rng.normal(size=(20, 4)))
    return tmp_path


def detect(*args: str):
    return runner.invoke(app, ["detect-anomalies", *args])


# -- --out never replaces an input or writes inside a saved directory --------------------
@pytest.mark.parametrize("args, out, words", [
    (["--normal", "n2.npz", "--data", "t2.csv"], "t2.csv", "is the --data file"),
    (["--normal", "n2.npz", "--data", "t2.csv"], "n2.npz", "is the --normal file"),
])
def test_out_is_never_an_input(files, args, out, words):
    before = {p.name: p.read_bytes() for p in files.iterdir()}
    line = _error(detect(*args, "--out", out))
    assert words in line and "give another name" in line
    assert {p.name: p.read_bytes() for p in files.iterdir()} == before  # nothing written


def test_out_never_lies_inside_the_detector_or_another_saved_directory(files):
    res = detect("--normal", "n2.npz", "--data", "dt.npz", "--save", "det", "--out", "s.csv")
    assert res.exit_code == 0, res.output
    kit = {p.name: p.read_bytes() for p in (files / "det").iterdir()}
    line = _error(detect("--detector", "det", "--data", "dt.npz", "--out",
                         "det/reference.npy"))
    assert "lies inside the --detector directory det" in line
    line = _error(detect("--normal", "n2.npz", "--data", "dt.npz", "--out", "det/s.csv"))
    assert "a saved dmlkit-kit directory" in line
    assert {p.name: p.read_bytes() for p in (files / "det").iterdir()} == kit
    from dmlkit.apps import MetricOutlierDetector

    MetricOutlierDetector.load(files / "det")  # still whole


def test_out_is_never_a_run_directorys_own_file(files):
    run = files / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: x\n")
    (run / "model.pt").write_bytes(b"weights")
    line = _error(detect("--normal", "n2.npz", "--data", "dt.npz", "--out",
                         "run/metrics.json"))
    assert "is the run directory" in line and "own metrics.json" in line
    # the summary beside the scores would replace the run's metrics.json
    line = _error(detect("--normal", "n2.npz", "--data", "dt.npz", "--out",
                         "run/metrics.csv"))
    assert "--out run/metrics.csv: its summary run/metrics.json is the run directory" in line
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "model.pt"]


# -- --save is checked before the fitting -------------------------------------------------
@pytest.mark.parametrize("make, words", [
    (lambda p: (p.mkdir(), (p / "notes.txt").write_text("mine")), "no manifest.json"),
    (lambda p: p.write_text("a file"), "not a directory"),
])
def test_deep_svdd_save_is_refused_before_training(files, monkeypatch, make, words):
    def never(*args, **kwargs):
        raise AssertionError("trained before the save path was checked")

    monkeypatch.setattr(dmlkit.apps.DeepSVDD, "fit", never)
    make(files / "mydir")
    line = _error(detect("--normal", "n2.npz", "--data", "dt.npz", "--method", "deep_svdd",
                         "--save", "mydir", "--out", "s.csv"))
    assert "mydir" in line and words in line
    assert not (files / "s.csv").exists()


def test_save_over_another_kind_of_detector_is_refused_before_training(files, monkeypatch):
    assert detect("--normal", "n2.npz", "--data", "dt.npz", "--save", "det",
                  "--out", "s.csv").exit_code == 0

    def never(*args, **kwargs):
        raise AssertionError("trained before the save path was checked")

    monkeypatch.setattr(dmlkit.apps.DeepSVDD, "fit", never)
    line = _error(detect("--normal", "n2.npz", "--data", "dt.npz", "--method", "deep_svdd",
                         "--save", "det", "--out", "s.csv"))
    assert "holds a saved MetricOutlierDetector, not a DeepSVDD" in line


# -- a saved detector fixes its method, contamination and neighbours ----------------------
def test_options_a_saved_detector_fixes_are_refused(files):
    assert detect("--normal", "n2.npz", "--data", "dt.npz", "--save", "det",
                  "--out", "s.csv").exit_code == 0
    line = _error(detect("--detector", "det", "--data", "dt.npz", "--contamination", "0.3",
                         "--method", "mahalanobis", "--k", "50", "--out", "s2.csv"))
    assert "omit --method, --contamination, --k" in line
    line = _error(detect("--detector", "det", "--data", "dt.npz", "--contamination", "0.1",
                         "--out", "s2.csv"))  # even the default value: it would be ignored
    assert "omit --contamination" in line and "--method" not in line
    res = detect("--detector", "det", "--data", "dt.npz", "--out", "s2.csv")
    assert res.exit_code == 0, res.output
    assert json.loads((files / "s2.json").read_text())["contamination"] == 0.1


def test_fitting_takes_the_options(files):
    res = detect("--normal", "n2.npz", "--data", "dt.npz", "--contamination", "0.3",
                 "--method", "prototype", "--out", "s.csv")
    assert res.exit_code == 0, res.output
    summary = json.loads((files / "s.json").read_text())
    assert summary["contamination"] == 0.3 and summary["method"] == "prototype"


# -- bad rows: one line naming the file, the rows and what to do -------------------------
@pytest.mark.parametrize("option", ["--normal", "--data"])
def test_nan_rows_are_named(files, option):
    x = np.random.default_rng(1).normal(size=(20, 4))
    x[3, 1], x[7, 0] = np.nan, np.inf
    np.savez("nan.npz", x=x)
    args = {"--normal": "n2.npz", "--data": "dt.npz", option: "nan.npz"}
    line = _error(detect("--normal", args["--normal"], "--data", args["--data"],
                         "--out", "s.csv"))
    assert (f"{option} nan.npz holds NaN or infinite values in 2 of 20 rows (rows 3, 7); "
            "drop those rows") in line
    assert "HistGradientBoosting" not in line


def test_images_without_a_run_say_what_to_do(files):
    np.savez("img.npz", x=np.random.default_rng(1).normal(size=(20, 1, 4, 4)))
    line = _error(detect("--normal", "img.npz", "--data", "img.npz", "--out", "s.csv"))
    assert "--normal img.npz holds arrays of shape (1, 4, 4) per row" in line
    assert "give RUN_DIR" in line and "--method deep_svdd" in line and "16 values" in line
    assert "Found array with dim" not in line
    assert detect("--normal", "n2.npz", "--data", "dt.npz", "--save", "det",
                  "--out", "s.csv").exit_code == 0
    line = _error(detect("--detector", "det", "--data", "img.npz", "--out", "s2.csv"))
    assert "the detector det scores rows of features" in line


# -- explain and report: never into a run directory or a saved one -------------------------
@pytest.fixture()
def fake_run(tmp_path):
    """A folder that looks like a run directory (the checks run before it is read)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: x\n")
    (run / "model.pt").write_bytes(b"weights")
    return run


def test_explain_out_is_never_the_run_directory(fake_run):
    before = sorted(p.name for p in fake_run.iterdir())
    line = _error(runner.invoke(app, ["explain", str(fake_run), "--a", "heldout:0",
                                      "--b", "heldout:1", "--out", str(fake_run)]))
    assert "is a run directory" in line and "give another folder" in line
    assert sorted(p.name for p in fake_run.iterdir()) == before


def test_explain_and_report_out_never_lie_inside_a_saved_directory(fake_run, tmp_path):
    kit = tmp_path / "kit"
    kit.mkdir()
    (kit / "manifest.json").write_text(json.dumps({"format": "dmlkit-kit"}))
    line = _error(runner.invoke(app, ["explain", str(fake_run), "--a", "heldout:0",
                                      "--b", "heldout:1", "--out", str(kit)]))
    assert "is a saved dmlkit-kit directory" in line
    line = _error(runner.invoke(app, ["report", str(fake_run), "--out",
                                      str(kit / "r.html")]))
    assert "lies inside" in line and "saved dmlkit-kit directory" in line
