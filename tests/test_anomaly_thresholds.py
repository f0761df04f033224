"""Anomaly thresholds hold on new normal data, and detect-anomalies reads its ground truth
from an ``anomaly`` array (or the array ``--truth-key`` names), saying why when it cannot
use it."""

from __future__ import annotations

import hashlib
import json
import re
import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits
from typer.testing import CliRunner

from dmlkit.apps import DeepSVDD, MetricOutlierDetector
from dmlkit.cli.main import app


def digits_halves():
    """Two disjoint halves of the same normal classes (digits 0-8), shuffled with a seed."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    normal = x[y != 9]
    return normal[::2], normal[1::2], x[y == 9]


# -- Deep SVDD: the threshold is set on rows the network never saw ------------------------
def test_deep_svdd_flags_about_contamination_of_new_normal_data():
    fit_rows, new_normal, _ = digits_halves()
    det = DeepSVDD(contamination=0.1, random_state=0).fit(fit_rows)
    flagged = float((det.predict(new_normal) == -1).mean())
    # a threshold from the rows the network was fitted to flags ~30% here
    assert 0.05 <= flagged <= 0.17, flagged
    assert det.n_samples_fit_ == len(fit_rows)
    assert det.n_calibration_ == round(0.2 * len(fit_rows))


def test_deep_svdd_calibration_split_is_seeded_and_checked():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    a = DeepSVDD(epochs=2, dim=4, calibration_fraction=0.25).fit(x)
    b = DeepSVDD(epochs=2, dim=4, calibration_fraction=0.25).fit(x)
    assert a.offset_ == b.offset_ and a.n_calibration_ == 10
    tiny = DeepSVDD(epochs=1, dim=4).fit(x[:3])  # two rows to train on, one to calibrate
    assert tiny.n_calibration_ == 1
    with pytest.raises(ValueError, match="3 or more training points"):
        DeepSVDD(epochs=1, dim=4).fit(x[:2])
    for bad in (0.0, 1.0, -0.1, True):
        with pytest.raises(ValueError, match="calibration_fraction must be in"):
            DeepSVDD(calibration_fraction=bad).fit(x)


def rewrite(kit, name: str, text: str) -> None:
    """Replace ``kit/name`` and update its manifest entry, as a consistent file would be."""
    (kit / name).write_text(text)
    manifest = json.loads((kit / "manifest.json").read_text())
    data = (kit / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (kit / "manifest.json").write_text(json.dumps(manifest))


def test_a_deep_svdd_saved_before_held_out_calibration_warns(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 5)).astype(np.float32)
    det = DeepSVDD(epochs=1, dim=4).fit(x)
    det.save(tmp_path / "det")
    again = DeepSVDD.load(tmp_path / "det")
    assert again.n_calibration_ == det.n_calibration_
    # an older kit: no n_calibration_ in its state (rewritten with a valid manifest)
    state = json.loads((tmp_path / "det" / "state.json").read_text())
    del state["n_calibration_"]
    rewrite(tmp_path / "det", "state.json", json.dumps(state))
    with pytest.warns(UserWarning, match="older dmlkit.*fit the detector again"):
        DeepSVDD.load(tmp_path / "det")


# -- knn: the same number of neighbours for the threshold and for new points --------------
def test_knn_with_more_neighbours_than_normal_points_uses_n_minus_1_everywhere():
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(3, 4))
    fresh = rng.normal(size=(500, 4))
    with pytest.warns(UserWarning, match="n_neighbors=5 but there are only 3 normal points"):
        clipped = MetricOutlierDetector("knn", n_neighbors=5, contamination=0.5).fit(normal)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # k <= n - 1: nothing to say
        exact = MetricOutlierDetector("knn", n_neighbors=2, contamination=0.5).fit(normal)
    assert clipped.n_neighbors_ == exact.n_neighbors_ == 2
    assert clipped.offset_ == exact.offset_
    np.testing.assert_array_equal(clipped.score_samples(fresh), exact.score_samples(fresh))
    # loop reference: mean distance to the 2 nearest of the 3 normal points
    q = fresh[0]
    ref = -np.sort(np.sqrt(((normal - q) ** 2).sum(1)))[:2].mean()
    assert clipped.score_samples(fresh[:1])[0] == pytest.approx(ref, rel=1e-6)


def test_knn_clipped_k_survives_save_and_load(tmp_path):
    rng = np.random.default_rng(1)
    normal, fresh = rng.normal(size=(4, 3)), rng.normal(size=(20, 3))
    with pytest.warns(UserWarning):
        det = MetricOutlierDetector("knn", n_neighbors=10).fit(normal)
    det.save(tmp_path / "det")
    again = MetricOutlierDetector.load(tmp_path / "det")
    assert again.n_neighbors_ == 3
    np.testing.assert_array_equal(again.score_samples(fresh), det.score_samples(fresh))


# -- detect-anomalies: ground truth from 'anomaly' or --truth-key ---------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("anomaly_cli")
    fit_rows, new_normal, nines = digits_halves()
    np.savez(root / "normal.npz", x=fit_rows[:200])
    x = np.vstack([new_normal[:60], nines[:20]])
    truth = np.r_[np.zeros(60), np.ones(20)].astype(int)
    np.savez(root / "anomaly.npz", x=x, anomaly=truth)
    np.savez(root / "labels.npz", x=x, labels=truth)
    np.savez(root / "classes.npz", x=x, labels=np.r_[np.arange(60) % 9, np.full(20, 9)])
    np.savez(root / "signs.npz", x=x, anomaly=np.where(truth == 1, -1, 1))
    np.savez(root / "all_normal.npz", x=x, labels=np.zeros(80, dtype=int))
    return root


def detect(root, data):
    out = root / f"{data}.csv"
    truth = ["--truth-key", "labels"] if data in ("labels", "classes", "all_normal") else []
    res = CliRunner().invoke(app, ["detect-anomalies", "--normal", str(root / "normal.npz"),
                                   "--data", str(root / f"{data}.npz"), "--out", str(out),
                                   *truth])
    assert res.exit_code == 0, res.output
    return res.output, json.loads(out.with_suffix(".json").read_text())


def test_detect_anomalies_reads_the_truth_key_array_as_the_anomaly_marks(files):
    _, with_anomaly = detect(files, "anomaly")
    output, with_labels = detect(files, "labels")
    assert "auroc" in output and with_labels["auroc"] == with_anomaly["auroc"]
    assert with_labels["average_precision"] == with_anomaly["average_precision"]
    assert with_labels["auroc"] > 0.8


@pytest.mark.parametrize("data, words", [
    ("classes", r"must be 0 \(normal\) or 1 \(anomaly\) per row, got the values 0, 1, 2"),
    ("signs", "the anomaly array of .* got the values -1, 1"),
    ("all_normal", "every row of .* is marked as normal rows"),
])
def test_detect_anomalies_says_why_it_reports_no_metrics(files, data, words):
    output, summary = detect(files, data)
    assert "auroc" not in summary
    assert "warning: no AUROC / average precision" in output
    assert re.search(words, output.replace("\n", " ")), output
    assert re.search(words, summary["metrics_skipped"])
