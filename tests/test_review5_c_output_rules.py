"""Output paths follow one rule: a run directory given as an input takes outputs beside
its own files (never onto them), an existing directory is refused as an output file
before any work, saving over another kind of model is refused by the index's
replaceable-directory rule, NaN rows are reported alike by every command, and a kit's
fingerprint message speaks of what any kit learned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import dmlkit.apps
from dmlkit.cli.main import app

runner = CliRunner()

SMALL = """
name: small
data: {name: digits, max_per_class: 6, max_heldout_per_class: 4}
model: {name: mlp, dim: 4, hidden: [8]}
loss: {name: triplet_margin, margin: 0.2}
training: {epochs: 1, num_threads: 1, progress: false}
"""


def _error(res) -> str:
    """The one ``error:`` line of a refused command (exit status 2, no traceback)."""
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def _fake_run(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.yaml").write_text("name: x\n")
    (folder / "model.pt").write_bytes(b"weights")
    return folder


# -- RUN_DIR as an input: only its own files are refused ----------------------------------
def test_an_output_inside_an_input_run_follows_the_run_file_rule(tmp_path):
    from dmlkit.cli._outputs import check_output_path

    run = _fake_run(tmp_path / "run1")
    inputs = {"RUN_DIR": run, "the --data file": tmp_path / "d.npz"}
    check_output_path(run / "anomaly_scores.csv", "--out", inputs)  # beside the run's files
    check_output_path(run / "scores" / "s.csv", "--out", inputs)
    with pytest.raises(ValueError, match="is the run directory .*'s own metrics.json"):
        check_output_path(run / "metrics.json", "--out", inputs)
    with pytest.raises(ValueError, match="is RUN_DIR; writing there would replace it"):
        check_not_input_of(run, inputs)
    # an input folder that is no run still keeps everything inside it
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(ValueError, match="lies inside the --detector directory"):
        check_output_path(plain / "s.csv", "--out", {"the --detector directory": plain})


def check_not_input_of(path: Path, inputs) -> None:
    from dmlkit.cli._outputs import check_not_input

    check_not_input(path, "--out", inputs)


def test_the_run_being_read_guards_its_files_before_it_has_weights(tmp_path):
    from dmlkit.cli._outputs import check_output_path

    run = tmp_path / "fresh"
    run.mkdir()  # no config, no weights yet: not recognisable as a run on its own
    check_output_path(run / "metrics.json", "--out")
    with pytest.raises(ValueError, match="fresh's own metrics.json"):
        check_output_path(run / "metrics.json", "--out", run_dir=run)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    from dmlkit.config import load_config
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("review5_c_run")
    (root / "small.yaml").write_text(SMALL)
    train_run(load_config(root / "small.yaml"), root / "run", log=lambda *a: None)
    return root / "run"


def test_detect_anomalies_writes_its_scores_inside_run_dir(trained_run, tmp_path):
    from dmlkit.data import load_digits

    x = load_digits().x.numpy().reshape(-1, 64)
    np.savez(tmp_path / "n.npz", x=x[:40])
    np.savez(tmp_path / "d.npz", x=x[40:60])
    own = {p.name: p.read_bytes() for p in trained_run.iterdir() if p.is_file()}
    out = trained_run / "anomaly_scores.csv"
    res = runner.invoke(app, ["detect-anomalies", str(trained_run), "--normal",
                              str(tmp_path / "n.npz"), "--data", str(tmp_path / "d.npz"),
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file() and (trained_run / "anomaly_scores.json").is_file()
    assert {name: (trained_run / name).read_bytes() for name in own} == own
    # its own files are still refused
    line = _error(runner.invoke(app, [
        "detect-anomalies", str(trained_run), "--normal", str(tmp_path / "n.npz"),
        "--data", str(tmp_path / "d.npz"), "--out", str(trained_run / "metrics.csv")]))
    assert "its summary" in line and "own metrics.json" in line


# -- an existing directory is no output file -------------------------------------------
@pytest.fixture()
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savez("n.npz", x=rng.normal(size=(60, 4)))
    np.savez("d.npz", x=rng.normal(size=(20, 4)))
    return tmp_path


def test_out_that_is_a_directory_is_refused_before_any_work(files, monkeypatch):
    (files / "outdir").mkdir()

    def never(*args, **kwargs):
        raise AssertionError("fitted before --out was checked")

    monkeypatch.setattr(dmlkit.apps.MetricOutlierDetector, "fit", never)
    line = _error(runner.invoke(app, ["detect-anomalies", "--normal", "n.npz", "--data",
                                      "d.npz", "--out", "outdir", "--save", "kitA"]))
    assert "--out outdir is a directory; give a CSV file name" in line
    assert not (files / "kitA").exists()
    assert sorted(p.name for p in files.iterdir()) == ["d.npz", "n.npz", "outdir"]
    assert not any((files / "outdir").iterdir())


def test_summary_that_is_a_directory_is_refused(files):
    (files / "s.json").mkdir()
    line = _error(runner.invoke(app, ["detect-anomalies", "--normal", "n.npz", "--data",
                                      "d.npz", "--out", "s.csv"]))
    assert "its summary s.json is a directory" in line
    assert not (files / "s.csv").exists()


def test_output_checks_live_in_one_module():
    import dmlkit.cli._errors as errors
    import dmlkit.cli._outputs as outputs

    assert not hasattr(errors, "check_output_file") and not hasattr(errors, "check_output_dir")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        outputs.check_output_folder(Path(__file__) / "sub")


# -- one run-file rule for the CLI, the export and the report -----------------------------
def test_run_file_rule_is_one_function(tmp_path, monkeypatch):
    import dmlkit.runs.run_files as run_files
    from dmlkit.cli._outputs import check_output_path
    from dmlkit.report.html import check_report_path
    from dmlkit.runs.export import check_export_target

    run = _fake_run(tmp_path / "run")
    seen = []
    original = run_files.run_file_owner

    def spy(*args, **kwargs):
        seen.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(run_files, "run_file_owner", spy)
    for check in (lambda: check_output_path(run / "model.pt"),
                  lambda: check_export_target(run, run / "model.pt", force=True),
                  lambda: check_report_path(run / "model.pt", run)):
        with pytest.raises(ValueError, match="own model.pt"):
            check()
    assert len(seen) == 3
    check_report_path(run / "report.html", run)  # the report's own file in its run
    with pytest.raises(ValueError, match="own report.html"):
        check_report_path(run / "report.html", tmp_path / "elsewhere")


def test_apps_has_no_second_is_run_dir():
    import dmlkit.apps.outliers as outliers
    from dmlkit.runs import export, run_files

    assert not hasattr(outliers, "is_run_dir")
    assert export.is_run_dir is run_files.is_run_dir
    assert export.RUN_FILES is run_files.RUN_FILES


# -- saving over another kind of model: the index's rule -----------------------------------
def test_save_over_another_kind_uses_check_replaceable(files, monkeypatch):
    import dmlkit.index.io as io

    assert runner.invoke(app, ["detect-anomalies", "--normal", "n.npz", "--data", "d.npz",
                               "--save", "det", "--out", "s.csv"]).exit_code == 0
    calls = []
    original = io.check_replaceable

    def spy(path, fmt="dmlkit-index", kind=None):
        calls.append(kind)
        return original(path, fmt, kind)

    monkeypatch.setattr(io, "check_replaceable", spy)
    line = _error(runner.invoke(app, ["detect-anomalies", "--normal", "n.npz", "--data",
                                      "d.npz", "--method", "deep_svdd", "--save", "det",
                                      "--out", "s2.csv"]))
    assert "det holds a saved MetricOutlierDetector, not a DeepSVDD" in line
    assert calls == ["DeepSVDD"]


# -- NaN rows: one message everywhere ----------------------------------------------------
def test_evaluate_and_index_report_nan_rows_as_the_kits_do(tmp_path):
    from dmlkit.cli.evaluate import read_embeddings
    from dmlkit.cli.index import _check_embeddings

    emb = np.ones((10, 3), np.float32)
    emb[[2, 5]] = np.nan
    np.savez(tmp_path / "e.npz", embeddings=emb, labels=np.arange(10))
    with pytest.raises(ValueError, match=r"e\.npz: 'embeddings' holds NaN or infinite values "
                                         r"in 2 of 10 rows \(rows 2, 5\); drop those rows"):
        read_embeddings(tmp_path / "e.npz")
    with pytest.raises(ValueError, match=r"e\.npz: embeddings holds NaN or infinite values "
                                         r"in 2 of 10 rows \(rows 2, 5\)"):
        _check_embeddings(tmp_path / "e.npz", emb)


# -- messages that speak of any kit ------------------------------------------------------
def test_a_detectors_fingerprint_message_speaks_of_no_gallery():
    from types import SimpleNamespace

    from dmlkit.apps.persistence import check_kit_model

    det = SimpleNamespace(embedder=None, model_sha256_="a" * 64)
    with pytest.raises(ValueError) as info:
        check_kit_model(det, "b" * 64, "those of --data d.npz", "the detector det")
    message = str(info.value)
    assert "gallery" not in message and "prototypes" not in message
    assert "what it learned from them holds only for that model's embeddings" in message


def test_calibration_folds_docstring_says_it_is_always_checked():
    from dmlkit.apps import MetricOutlierDetector

    doc = MetricOutlierDetector.__doc__
    section = doc[doc.index("calibration_folds : int"):doc.index("batch_size : int")]
    assert "checked by" in section and "whatever the embedder" in section
    x = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match="calibration_folds must be an integer >= 2"):
        MetricOutlierDetector(calibration_folds=1).fit(x)


# -- the detector logic lives in the library ----------------------------------------------
def test_detector_settings_and_fitting_are_library_functions():
    from dmlkit.apps import detectors

    assert detectors.detector_settings() == ("knn", 0.1, 5)
    assert detectors.detector_settings("mahalanobis", 0.2, None) == ("mahalanobis", 0.2, 5)
    with pytest.raises(ValueError, match="--method must be one of"):
        detectors.detector_settings("bogus")
    with pytest.raises(ValueError, match="omit RUN_DIR"):
        detectors.detector_settings("deep_svdd", run_dir=Path("run"))
    assert detectors.detector_kind("deep_svdd") == "DeepSVDD"
    assert detectors.detector_kind("knn") == "MetricOutlierDetector"
    x = np.random.default_rng(0).normal(size=(30, 3))
    det = detectors.fit_detector(x, None, "knn", 0.1, 5)
    assert det.n_neighbors_ == 5 and detectors.fitted_model(det, "c" * 64) == "c" * 64
    with pytest.raises(ValueError, match="holds arrays of shape \\(2, 2\\) per row"):
        detectors.check_features(np.ones((4, 2, 2)), "--data x.npz")
    import dmlkit.cli.anomalies as cli

    for moved in ("check_features", "fitted_model", "check_detector_model", "DEFAULTS",
                  "load_detector", "_fit"):
        assert not hasattr(cli, moved), moved
