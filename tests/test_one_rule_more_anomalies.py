"""`dmlkit detect-anomalies` fitted on embeddings records the model that embedded them
(``model_sha256``, as ``dmlkit embed`` writes it), and a saved detector refuses
embeddings of another model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.apps import DeepSVDD, MetricOutlierDetector
from dmlkit.cli.main import app

runner = CliRunner()
SHA_A, SHA_B = "a" * 64, "b" * 64


def _error(res) -> str:
    lines = [s for s in res.stderr.splitlines() if s.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Normal embeddings and data to score, recording model A or B, or none."""
    root = tmp_path_factory.mktemp("emb")
    rng = np.random.default_rng(0)
    normal, data = rng.normal(size=(60, 4)), rng.normal(size=(20, 4))
    np.savez(root / "normal_a.npz", x=normal, model_sha256=np.asarray(SHA_A))
    np.savez(root / "normal_plain.npz", x=normal)
    np.savez(root / "data_a.npz", x=data, model_sha256=np.asarray(SHA_A))
    np.savez(root / "data_b.npz", x=data, model_sha256=np.asarray(SHA_B))
    np.save(root / "data.npy", data)
    return root


def detect(*args: str):
    return runner.invoke(app, ["detect-anomalies", *args])


def manifest(kit) -> dict:
    return json.loads((kit / "manifest.json").read_text())


@pytest.mark.parametrize("method", ["knn", "prototype", "mahalanobis"])
def test_save_records_the_model_of_the_normal_embeddings(files, tmp_path, method):
    kit = tmp_path / "kit"
    res = detect("--normal", str(files / "normal_a.npz"), "--data", str(files / "data_a.npz"),
                 "--method", method, "--save", str(kit), "--out", str(tmp_path / "s.csv"))
    assert res.exit_code == 0, res.output
    assert manifest(kit)["model_sha256"] == SHA_A
    assert MetricOutlierDetector.load(kit).model_sha256_ == SHA_A


def test_data_recording_the_model_stands_in_for_normal_recording_none(files, tmp_path):
    kit = tmp_path / "kit"
    res = detect("--normal", str(files / "normal_plain.npz"), "--data",
                 str(files / "data_a.npz"), "--save", str(kit), "--out", str(tmp_path / "s.csv"))
    assert res.exit_code == 0, res.output
    assert manifest(kit)["model_sha256"] == SHA_A


def test_nothing_recorded_saves_no_fingerprint(files, tmp_path):
    kit = tmp_path / "kit"
    res = detect("--normal", str(files / "normal_plain.npz"), "--data", str(files / "data.npy"),
                 "--save", str(kit), "--out", str(tmp_path / "s.csv"))
    assert res.exit_code == 0, res.output
    assert "model_sha256" not in manifest(kit)
    assert MetricOutlierDetector.load(kit).model_sha256_ is None


@pytest.fixture(scope="module")
def kit_a(files, tmp_path_factory):
    kit = tmp_path_factory.mktemp("kit") / "kit"
    res = detect("--normal", str(files / "normal_a.npz"), "--data", str(files / "data_a.npz"),
                 "--save", str(kit), "--out", str(kit.parent / "s.csv"))
    assert res.exit_code == 0, res.output
    return kit


def test_a_saved_detector_refuses_embeddings_of_another_model(files, kit_a, tmp_path):
    out = tmp_path / "s.csv"
    res = detect("--detector", str(kit_a), "--data", str(files / "data_b.npz"), "--out", str(out))
    assert res.exit_code == 1
    message = _error(res)
    assert f"the detector {kit_a} was fitted on embeddings of another model than those of " \
           f"--data {files / 'data_b.npz'}" in message
    assert "dmlkit detect-anomalies --normal" in message and "--save KIT" in message
    assert not out.exists()


@pytest.mark.parametrize("data", ["data_a.npz", "data.npy"])
def test_a_saved_detector_scores_the_same_model_or_an_unknown_one(files, kit_a, tmp_path, data):
    res = detect("--detector", str(kit_a), "--data", str(files / data),
                 "--out", str(tmp_path / "s.csv"))
    assert res.exit_code == 0, res.output


def test_a_detector_saved_again_keeps_its_fingerprint(files, kit_a, tmp_path):
    kit = tmp_path / "again"
    res = detect("--detector", str(kit_a), "--data", str(files / "data.npy"), "--save", str(kit),
                 "--out", str(tmp_path / "s.csv"))
    assert res.exit_code == 0, res.output
    assert manifest(kit)["model_sha256"] == SHA_A


def test_fitting_on_one_model_and_scoring_another_is_refused(files, tmp_path):
    res = detect("--normal", str(files / "normal_a.npz"), "--data", str(files / "data_b.npz"),
                 "--out", str(tmp_path / "s.csv"))
    assert res.exit_code == 1
    assert "--normal and --data" in _error(res) and "different weights" in _error(res)


def test_detectors_save_the_fingerprint_they_are_given(tmp_path):
    x = np.random.default_rng(1).normal(size=(40, 3)).astype(np.float32)
    MetricOutlierDetector("knn", n_neighbors=3).fit(x).save(tmp_path / "m", model_sha256=SHA_B)
    assert MetricOutlierDetector.load(tmp_path / "m").model_sha256_ == SHA_B
    svdd = DeepSVDD(dim=4, epochs=2, random_state=0).fit(x)
    svdd.save(tmp_path / "d", model_sha256=SHA_B)
    loaded = DeepSVDD.load(tmp_path / "d")
    assert loaded.model_sha256_ == SHA_B

    from dmlkit.apps.persistence import check_kit_model

    with pytest.raises(ValueError, match=r"^the detector was fitted on embeddings of another "
                                         r"model than X: .*\(REFIT\)$"):
        check_kit_model(loaded, SHA_A, "X", "the detector", refit="REFIT")
    check_kit_model(loaded, SHA_B, "X", "the detector", refit="REFIT")
    check_kit_model(loaded, None, "X", "the detector", refit="REFIT")
