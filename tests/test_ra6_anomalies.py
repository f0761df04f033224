"""``dmlkit detect-anomalies``: an --out inside a --save folder not made yet, embeddings
where raw inputs are expected, options a method does not use, NaN class labels, CSV
errors, mis-scaled inputs and the progress of a network's training."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.apps import MetricOutlierDetector
from dmlkit.apps.detectors import detector_settings
from dmlkit.cli.main import app

runner = CliRunner()

TINY = {
    "name": "tiny",
    "data": {"name": "digits", "max_per_class": 10, "max_heldout_per_class": 10},
    "model": {"name": "mlp", "dim": 8, "hidden": [16]},
    "training": {"epochs": 1, "progress": False},
}


def detect(*args: str):
    return runner.invoke(app, ["detect-anomalies", *args])


def _error(res, *words: str) -> str:
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = [s for s in res.stderr.splitlines() if s.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.savez("n.npz", x=rng.normal(size=(40, 3)), labels=np.repeat([0.0, 1.0], 20))
    np.savez("d.npz", x=rng.normal(size=(10, 3)))
    return tmp_path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from dmlkit.config import Config
    from dmlkit.runs import build_splits, load_run
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("ra6_run")
    train_run(Config.from_dict(TINY), root / "run", log=lambda *a: None)
    _, heldout = build_splits(load_run(root / "run").config)
    x = heldout.x.numpy().reshape(len(heldout.x), -1)
    np.savez(root / "raw.npz", x=x)
    res = runner.invoke(app, ["embed", str(root / "run"), "--data", str(root / "raw.npz"),
                              "--out", str(root / "emb.npz")])
    assert res.exit_code == 0, res.output
    with np.load(root / "emb.npz") as f:
        assert "model_sha256" in f.files
        np.savez(root / "emb_x.npz", x=f["embeddings"], model_sha256=f["model_sha256"])
    return root


# -- an --out inside the --save folder ---------------------------------------------------
def test_an_out_inside_a_save_folder_not_made_yet_is_refused(files):
    _error(detect("--normal", "n.npz", "--data", "d.npz", "--out", "det/s.csv",
                  "--save", "det"), "--save directory", "outside")
    assert not (files / "det").exists()


def test_an_out_beside_a_new_save_folder_is_fine(files):
    res = detect("--normal", "n.npz", "--data", "d.npz", "--out", "s.csv", "--save", "det")
    assert res.exit_code == 0, res.output
    MetricOutlierDetector.load(files / "det")
    assert (files / "s.csv").is_file()


# -- embeddings where raw inputs are expected --------------------------------------------
@pytest.mark.parametrize("normal, data, option", [
    ("emb_x.npz", "raw.npz", "--normal"), ("raw.npz", "emb_x.npz", "--data")])
def test_run_dir_mode_refuses_an_embeddings_file(run, tmp_path, normal, data, option):
    line = _error(detect(str(run / "run"), "--normal", str(run / normal), "--data",
                         str(run / data), "--out", str(tmp_path / "s.csv")),
                  option, "holds embeddings", "raw inputs")
    assert "omit RUN_DIR" in line
    assert not (tmp_path / "s.csv").exists()


def test_a_detector_that_embeds_refuses_an_embeddings_file(run, tmp_path):
    res = detect(str(run / "run"), "--normal", str(run / "raw.npz"), "--data",
                 str(run / "raw.npz"), "--out", str(tmp_path / "a.csv"),
                 "--save", str(tmp_path / "det"))
    assert res.exit_code == 0, res.output
    _error(detect("--detector", str(tmp_path / "det"), "--data", str(run / "emb_x.npz"),
                  "--out", str(tmp_path / "b.csv")), "--data", "holds embeddings")
    # its raw inputs still score
    res = detect("--detector", str(tmp_path / "det"), "--data", str(run / "raw.npz"),
                 "--out", str(tmp_path / "c.csv"))
    assert res.exit_code == 0, res.output


def test_embeddings_without_a_run_are_still_fine(run, tmp_path):
    res = detect("--normal", str(run / "emb_x.npz"), "--data", str(run / "emb_x.npz"),
                 "--out", str(tmp_path / "s.csv"))
    assert res.exit_code == 0, res.output


def test_run_dir_mode_warns_of_inputs_scaled_unlike_the_runs(run, tmp_path):
    with np.load(run / "raw.npz") as f:
        np.savez(tmp_path / "big.npz", x=f["x"] * 16)
    res = detect(str(run / "run"), "--normal", str(tmp_path / "big.npz"), "--data",
                 str(run / "raw.npz"), "--out", str(tmp_path / "s.csv"))
    assert res.exit_code == 0, res.output
    warned = [s for s in res.stderr.splitlines() if s.startswith("warning:")]
    assert len(warned) == 1 and "big.npz" in warned[0] and "scale" in warned[0], res.stderr
    res = detect(str(run / "run"), "--normal", str(run / "raw.npz"), "--data",
                 str(run / "raw.npz"), "--out", str(tmp_path / "t.csv"))
    assert res.exit_code == 0 and "warning:" not in res.stderr, res.stderr


# -- options and labels ------------------------------------------------------------------
@pytest.mark.parametrize("method", ["prototype", "mahalanobis", "deep_svdd"])
def test_k_is_refused_with_a_method_without_neighbours(files, method):
    _error(detect("--normal", "n.npz", "--data", "d.npz", "--method", method, "--k", "3"),
           "--k", method, "omit --k")
    with pytest.raises(ValueError, match="omit --k"):
        detector_settings(method, None, 3)
    assert detector_settings(method)[0] == method  # (the default neighbours pass)


def test_k_still_sets_the_knn_neighbours(files):
    res = detect("--normal", "n.npz", "--data", "d.npz", "--k", "3", "--save", "det")
    assert res.exit_code == 0, res.output
    assert MetricOutlierDetector.load(files / "det").n_neighbors == 3


@pytest.mark.parametrize("method", ["prototype", "mahalanobis"])
def test_nan_class_labels_are_refused(files, method):
    rng = np.random.default_rng(1)
    labels = np.repeat([0.0, 1.0], 20)
    labels[3] = np.nan
    np.savez("nanlab.npz", x=rng.normal(size=(40, 3)), labels=labels)
    _error(detect("--normal", "nanlab.npz", "--data", "d.npz", "--method", method),
           "nanlab.npz", "NaN", "class label")
    with pytest.raises(ValueError, match="NaN"):
        MetricOutlierDetector(method).fit(rng.normal(size=(40, 3)), labels)


# -- CSV errors --------------------------------------------------------------------------
@pytest.mark.parametrize("text, where", [
    ("a,b,c\n1,2,3\n\n4,,6\n", "line 4, column 2"),
    ("1,2,3\n\n\n4,x,6\n", "line 4, column 2"),
    ("1,2,3\n4,5,6,7\n", "line 2 has 4 fields"),
])
def test_a_csv_parse_error_names_the_file_and_its_line(files, text, where):
    (files / "bad.csv").write_text(text)
    _error(detect("--normal", "n.npz", "--data", "bad.csv"), "bad.csv", where)


# -- progress ----------------------------------------------------------------------------
def test_deep_svdd_reports_each_epoch_on_stderr(files):
    res = detect("--normal", "n.npz", "--data", "d.npz", "--method", "deep_svdd")
    assert res.exit_code == 0, res.output
    epochs = [s for s in res.stderr.splitlines() if s.startswith("epoch ")]
    assert len(epochs) == 30, res.stderr  # (DeepSVDD's default epochs)
    assert "epoch " not in res.stdout


# -- the remedy of a stale detector ------------------------------------------------------
def test_a_stale_detector_names_the_command_that_fits_a_detector(run, tmp_path):
    import shutil

    import torch

    from dmlkit.apps.persistence import StaleKitError

    copy = tmp_path / "run"
    shutil.copytree(run / "run", copy)
    with np.load(run / "raw.npz") as f:
        MetricOutlierDetector(embedder=str(copy)).fit(f["x"]).save(tmp_path / "det")
    state = torch.load(copy / "model.pt", map_location="cpu", weights_only=True)
    torch.save({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()},
               copy / "model.pt")
    with pytest.raises(StaleKitError, match="save it again") as info:
        MetricOutlierDetector.load(tmp_path / "det")
    assert "detect-anomalies" in str(info.value)
    assert "verify" not in str(info.value) and "re-enroll" not in str(info.value)
