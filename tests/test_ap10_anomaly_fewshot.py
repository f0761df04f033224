"""``detect-anomalies`` ground truth and feature widths, the contamination rule the
anomaly detectors share, episodic evaluation of an unfitted few-shot classifier and the
wording of the input-range warning of the recognition commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted
from typer.testing import CliRunner

from dmlkit.apps import FewShotClassifier, MetricOutlierDetector
from dmlkit.apps.deep_svdd import DeepSVDD
from dmlkit.cli.main import app

runner = CliRunner()


def blobs(n: int = 60, d: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Normal rows around the origin and a far cluster of 20 rows."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(20, d)) + 8.0


# -- detect-anomalies: ground truth only from 'anomaly' or --truth-key ----------------------
@pytest.fixture
def scored(tmp_path):
    normal, far = blobs()
    fresh, _ = blobs(n=40, seed=3)
    x = np.vstack([fresh, far])
    truth = np.r_[np.zeros(40), np.ones(20)].astype(int)
    np.savez(tmp_path / "normal.npz", x=normal)
    np.savez(tmp_path / "classes.npz", x=x, labels=truth)  # class labels 0/1
    np.savez(tmp_path / "marked.npz", x=x, anomaly=truth, labels=1 - truth)
    np.savez(tmp_path / "other.npz", x=x, outlier=truth)
    return tmp_path


def detect(root, data, *extra):
    out = root / f"{data}.csv"
    res = runner.invoke(app, ["detect-anomalies", "--normal", str(root / "normal.npz"),
                              "--data", str(root / f"{data}.npz"), "--out", str(out), *extra])
    summary = json.loads(out.with_suffix(".json").read_text()) if res.exit_code == 0 else None
    return res, summary


def test_a_labels_array_is_not_read_as_anomaly_marks(scored):
    res, summary = detect(scored, "classes")
    assert res.exit_code == 0, res.output
    assert "auroc" not in summary and "average_precision" not in summary
    notes = [line for line in res.output.splitlines() if line.startswith("note:")]
    assert len(notes) == 1, res.output
    assert "'anomaly' array" in notes[0] and "--truth-key labels" in notes[0]


def test_truth_key_names_the_array_of_anomaly_marks(scored):
    res, summary = detect(scored, "classes", "--truth-key", "labels")
    assert res.exit_code == 0, res.output
    assert summary["auroc"] == pytest.approx(1.0)
    assert "note:" not in res.output
    res, summary = detect(scored, "other", "--truth-key", "outlier")
    assert res.exit_code == 0, res.output
    assert summary["auroc"] == pytest.approx(1.0)


def test_an_anomaly_array_is_used_before_class_labels(scored):
    res, summary = detect(scored, "marked")
    assert res.exit_code == 0, res.output
    assert summary["auroc"] == pytest.approx(1.0) and "note:" not in res.output


def test_a_missing_truth_key_array_is_an_error_naming_it(scored):
    res, _ = detect(scored, "other", "--truth-key", "anomalies")
    assert res.exit_code == 1
    assert "error:" in res.output and "'anomalies'" in res.output and "outlier" in res.output


# -- detect-anomalies: --normal and --data of different widths ------------------------------
@pytest.mark.parametrize("method", ["knn", "deep_svdd"])
def test_feature_width_mismatch_is_refused_before_fitting_and_saving(tmp_path, method):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "normal.npz", x=rng.normal(size=(40, 4)))
    np.savez(tmp_path / "new.npz", x=rng.normal(size=(10, 5)))
    save = tmp_path / "det"
    res = runner.invoke(app, ["detect-anomalies", "--normal", str(tmp_path / "normal.npz"),
                              "--data", str(tmp_path / "new.npz"), "--method", method,
                              "--save", str(save), "--out", str(tmp_path / "s.csv")])
    assert res.exit_code == 1
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("error:") and "DeepSVDD is expecting" not in line
    assert str(tmp_path / "normal.npz") in line and str(tmp_path / "new.npz") in line
    assert "4 features" in line and "5" in line
    assert not save.exists()
    assert "epoch" not in res.output.lower()  # (nothing trained)


# -- one contamination rule for both detectors ---------------------------------------------
@pytest.mark.parametrize("value", ["0.1", np.array([0.1, 0.2]), True, 0.0, 0.6, float("nan")])
@pytest.mark.parametrize("cls", [DeepSVDD, MetricOutlierDetector])
def test_both_detectors_refuse_a_contamination_that_is_not_a_fraction(cls, value):
    x = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match=r"contamination must be in \(0, 0\.5\], got"):
        cls(contamination=value).fit(x)


def test_deep_svdd_takes_a_numpy_fraction_as_contamination():
    x = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    det = DeepSVDD(epochs=1, batch_size=8, dim=4, contamination=np.float64(0.2)).fit(x)
    assert np.isfinite(det.offset_)


# -- episodic evaluation leaves an unfitted classifier unfitted -----------------------------
def test_evaluate_episodes_keeps_an_unfitted_classifier_unfitted():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 10)
    clf = FewShotClassifier()
    clf.evaluate_episodes(rng.normal(size=(40, 5)), y, n_way=2, k_shot=1, n_query=3,
                          episodes=5)
    assert not hasattr(clf, "n_features_in_")
    with pytest.raises(NotFittedError):
        check_is_fitted(clf)
    out = clf.evaluate_episodes(rng.normal(size=(40, 7)), y, n_way=2, k_shot=1, n_query=3,
                                episodes=5)
    assert 0.0 <= out["accuracy"] <= 1.0


def test_evaluate_episodes_of_a_fitted_classifier_checks_the_fitted_width():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 10)
    clf = FewShotClassifier().fit(rng.normal(size=(40, 5)), y)
    with pytest.raises(ValueError, match="expecting 5 features"):
        clf.evaluate_episodes(rng.normal(size=(40, 7)), y, n_way=2, episodes=5, n_query=3)
    assert clf.n_features_in_ == 5


# -- the range warning names the inputs by the option that gave them ------------------------
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """An untrained MLP run on the digits (inputs in [0, 1])."""
    from dmlkit.config import Config
    from dmlkit.data import load_digits
    from dmlkit.training.build import build_model, resolve_config

    root = tmp_path_factory.mktemp("digits_run")
    cfg = Config.from_dict({"name": "mlp", "data": {"name": "digits"},
                            "model": {"name": "mlp", "dim": 8, "hidden": [16]},
                            "training": {"epochs": 1}})
    resolved = resolve_config(cfg, load_digits().x[0], 10)
    resolved.to_yaml(root / "config.yaml")
    torch.manual_seed(0)
    torch.save(build_model(resolved).state_dict(), root / "model.pt")
    return root


def test_fewshot_range_warnings_do_not_call_support_or_episodes_queries(digits_run, tmp_path):
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x, y = bunch.data[:300].astype(np.float32), bunch.target[:300]  # values 0..16
    np.savez(tmp_path / "sup.npz", x=x[::10], labels=y[::10])
    np.savez(tmp_path / "q.npz", x=x / 16.0, labels=y)
    res = runner.invoke(app, ["fewshot", str(digits_run), "--support", str(tmp_path / "sup.npz"),
                              "--query", str(tmp_path / "q.npz"), "-o", str(tmp_path / "f.json")])
    assert res.exit_code == 0, res.output
    assert f"--support {tmp_path / 'sup.npz'}: inputs range over [0, 16]" in res.output
    assert "query inputs" not in res.output
    np.savez(tmp_path / "ep.npz", x=x, labels=y)
    res = runner.invoke(app, ["fewshot", str(digits_run), "--episodes", str(tmp_path / "ep.npz"),
                              "--way", "2", "--n-episodes", "2", "--n-query", "2",
                              "-o", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    assert f"--episodes {tmp_path / 'ep.npz'}: inputs range over [0, 16]" in res.output
    assert "query inputs" not in res.output
