"""Anomaly detection kits: MetricOutlierDetector and DeepSVDD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from dmlkit.apps import DeepSVDD, MetricOutlierDetector

LOO_REASON = ("training points are scored held out (leave-one-out, or out of fold for "
              "mahalanobis), so predict(X_train) differs by design")
HELD_OUT_REASON = ("the threshold is set on held-out rows, not on those the network was "
                   "trained on, so predict(X_train) differs by design")


def blobs(n=120, d=5, seed=0):
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(n, d))
    far = rng.normal(size=(20, d)) + 6.0
    return normal, far


@parametrize_with_checks(
    [MetricOutlierDetector(), MetricOutlierDetector("prototype", n_prototypes=3),
     MetricOutlierDetector("mahalanobis"), DeepSVDD(epochs=1, batch_size=16, dim=4)],
    expected_failed_checks=lambda est: (
        dict.fromkeys(["check_outliers_train", "check_outliers_fit_predict"], LOO_REASON)
        if isinstance(est, MetricOutlierDetector) else
        dict.fromkeys(["check_outliers_train", "check_outliers_fit_predict"], HELD_OUT_REASON)
        if isinstance(est, DeepSVDD) else {}),
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_knn_scores_equal_loop_reference():
    normal, far = blobs()
    query = np.vstack([normal[:7], far[:5]])
    det = MetricOutlierDetector("knn", n_neighbors=3).fit(normal)
    ref = []
    for q in query:
        d = np.sort(np.sqrt(((normal - q) ** 2).sum(1)))[:3]
        ref.append(-d.mean())
    np.testing.assert_allclose(det.score_samples(query), ref, rtol=1e-6, atol=1e-6)
    # leave-one-out training scores: each point against the others
    loo = []
    for i, q in enumerate(normal):
        others = np.delete(normal, i, axis=0)
        loo.append(-np.sort(np.sqrt(((others - q) ** 2).sum(1)))[:3].mean())
    assert det.offset_ == pytest.approx(np.quantile(loo, 0.1), rel=1e-6)


def test_prototype_and_mahalanobis_with_labels_equal_loop_reference():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 30)
    x = rng.normal(size=(90, 4)) + 3 * y[:, None]
    q = rng.normal(size=(9, 4)) * 3
    means = np.stack([x[y == c].mean(0) for c in range(3)])
    proto = MetricOutlierDetector("prototype").fit(x, y)
    ref = [-min(np.linalg.norm(v - m) for m in means) for v in q]
    np.testing.assert_allclose(proto.score_samples(q), ref, rtol=1e-5)
    maha = MetricOutlierDetector("mahalanobis").fit(x, y)
    cov = LedoitWolf(assume_centered=True).fit(x - means[y]).covariance_
    prec = np.linalg.pinv(cov + 1e-6 * np.trace(cov) / 4 * np.eye(4))  # the ridge
    ref = [-min(np.sqrt((v - m) @ prec @ (v - m)) for m in means) for v in q]
    np.testing.assert_allclose(maha.score_samples(q), ref, rtol=1e-5)


@pytest.mark.parametrize("method", ["knn", "prototype", "mahalanobis"])
def test_far_points_are_outliers_and_contamination_sets_the_rate(method):
    normal, far = blobs(n=400)
    det = MetricOutlierDetector(method, contamination=0.05).fit(normal)
    assert (det.predict(far) == -1).all()
    fresh, _ = blobs(n=2000, seed=5)
    flagged = (det.predict(fresh) == -1).mean()
    assert 0.02 < flagged < 0.10  # about the contamination on new normal data
    labels = det.fit_predict(normal)
    assert (labels == -1).mean() == pytest.approx(0.05, abs=0.01)
    np.testing.assert_allclose(det.decision_function(far), det.score_samples(far) - det.offset_)


def test_embedders_module_callable_and_normalize():
    normal, far = blobs()
    lin = torch.nn.Linear(5, 3)
    a = MetricOutlierDetector(embedder=lin).fit(normal).score_samples(far)
    with torch.no_grad():
        w, b = lin.weight.numpy().copy(), lin.bias.numpy().copy()
    b_ = MetricOutlierDetector(embedder=lambda v: v @ w.T + b).fit(normal).score_samples(far)
    c = MetricOutlierDetector().fit(normal @ w.T + b).score_samples(far @ w.T + b)
    np.testing.assert_allclose(a, b_, rtol=1e-5)
    np.testing.assert_allclose(a, c, rtol=1e-5)
    n = MetricOutlierDetector(normalize=True).fit(normal)
    unit = normal / np.linalg.norm(normal, axis=1, keepdims=True)
    np.testing.assert_allclose(n.score_samples(normal[:3] * 7.0),
                               MetricOutlierDetector().fit(unit).score_samples(unit[:3]),
                               rtol=1e-5)


def test_learned_metric_on_labelled_normal_classes_detects_a_new_class():
    from dmlkit.data import load_digits

    data = load_digits()
    x, y = data.x.numpy(), data.labels.numpy()
    normal = y < 8
    det = MetricOutlierDetector(
        "knn", embedder="learn", learn_config={"training": {"epochs": 4}}
    ).fit(x[normal], y[normal])
    assert isinstance(det.embedder_, torch.nn.Module)
    auroc = roc_auc_score(~normal, -det.score_samples(x))
    assert auroc > 0.8


def test_run_directory_as_embedder(tmp_path):
    from dmlkit.config import Config
    from dmlkit.data import load_digits
    from dmlkit.runs import embed, load_run
    from dmlkit.training import train_run

    cfg = Config.from_dict({
        "data": {"name": "digits", "max_per_class": 10, "max_heldout_per_class": 10},
        "model": {"name": "mlp", "dim": 8, "hidden": [16]},
        "training": {"epochs": 1, "progress": False}})
    train_run(cfg, tmp_path / "run", log=lambda *a: None)
    x = load_digits().x.numpy()[:100]
    det = MetricOutlierDetector(embedder=tmp_path / "run").fit(x[:80])
    z, _ = embed(load_run(tmp_path / "run").model, torch.from_numpy(x))
    ref = MetricOutlierDetector().fit(z[:80].numpy())
    np.testing.assert_allclose(det.score_samples(x[80:]), ref.score_samples(z[80:].numpy()),
                               rtol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"contamination": 0.0}, "contamination"),
    ({"contamination": 0.6}, "contamination"),
    ({"method": "lof"}, "method must be one of"),
    ({"n_neighbors": 0}, "n_neighbors"),
])
def test_bad_parameters(kwargs, match):
    normal, _ = blobs()
    with pytest.raises(ValueError, match=match):
        MetricOutlierDetector(**kwargs).fit(normal)


def test_bad_input():
    normal, far = blobs()
    bad = normal.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        MetricOutlierDetector().fit(bad)
    det = MetricOutlierDetector().fit(normal)
    with pytest.raises(ValueError, match="features"):
        det.score_samples(far[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        det.score_samples(bad)
    with pytest.raises(ValueError, match="at least two classes"):
        MetricOutlierDetector(embedder="learn").fit(normal)
    with pytest.raises(ValueError, match="contamination"):
        DeepSVDD(contamination=0.9).fit(normal)
    with pytest.raises(ValueError, match="NaN"):
        DeepSVDD().fit(bad)
    with pytest.raises(ValueError, match="image_shape"):
        DeepSVDD(model="cnn").fit(normal)


def test_deep_svdd_is_bias_free_and_separates_a_far_cluster():
    normal, far = blobs(n=300, d=8)
    normal, far = normal.astype(np.float32), far.astype(np.float32)
    det = DeepSVDD(epochs=15, dim=8, contamination=0.05).fit(normal)
    assert not any(name.endswith("bias") for name, _ in det.model_.named_parameters())
    assert (np.abs(det.center_) >= det.center_eps - 1e-7).all()
    fresh, _ = blobs(n=300, d=8, seed=3)
    labels = np.r_[np.zeros(300), np.ones(20)]
    auroc = roc_auc_score(labels, -det.score_samples(np.vstack([fresh, far])))
    assert auroc > 0.95


def test_deep_svdd_cnn_on_images_and_flat_rows():
    rng = np.random.default_rng(0)
    imgs = rng.random((64, 1, 12, 10)).astype(np.float32)
    a = DeepSVDD(epochs=1, batch_size=16).fit(imgs)
    assert a.model_.__class__.__name__ == "BiasFreeCNN"
    b = DeepSVDD(epochs=1, batch_size=16, image_shape=(1, 12, 10)).fit(imgs.reshape(64, -1))
    np.testing.assert_allclose(a.score_samples(imgs), b.score_samples(imgs.reshape(64, -1)),
                               rtol=1e-5)


def test_cli_detect_anomalies(tmp_path):
    import json

    from typer.testing import CliRunner

    from dmlkit.cli.main import app

    normal, far = blobs(n=200)
    fresh, _ = blobs(n=50, seed=9)
    np.savez(tmp_path / "normal.npz", x=normal)
    np.savez(tmp_path / "data.npz", x=np.vstack([fresh, far]),
             anomaly=np.r_[np.zeros(50), np.ones(20)].astype(int))
    out = tmp_path / "scores.csv"
    res = CliRunner().invoke(app, ["detect-anomalies", "--normal", str(tmp_path / "normal.npz"),
                                   "--data", str(tmp_path / "data.npz"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = np.loadtxt(out, delimiter=",", skiprows=1)
    det = MetricOutlierDetector().fit(normal)
    np.testing.assert_allclose(rows[:, 1], det.score_samples(np.vstack([fresh, far])), rtol=1e-6)
    assert rows[50:, 2].all()  # the far cluster is flagged
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["auroc"] == pytest.approx(1.0) and summary["rows"] == 70
    np.save(tmp_path / "bad.npy", np.full((3, 5), np.nan))
    res = CliRunner().invoke(app, ["detect-anomalies", "--normal", str(tmp_path / "bad.npy"),
                                   "--data", str(tmp_path / "data.npz"), "--out", str(out)])
    assert res.exit_code == 1 and "NaN" in res.output
    res = CliRunner().invoke(app, ["detect-anomalies", "--normal", str(tmp_path / "none.npz"),
                                   "--data", str(tmp_path / "data.npz")])
    assert res.exit_code == 1 and "not found" in res.output


@pytest.mark.parametrize("x, y", [
    (np.eye(4), [0, 1, 2, 3]),  # one item per class: no residual at all
    (np.ones((10, 3)), None),  # constant data
])
def test_mahalanobis_without_variance_still_flags_what_is_off_the_data(x, y):
    det = MetricOutlierDetector("mahalanobis").fit(x, y)
    off = x[:1] + 5.0
    assert det.predict(off)[0] == -1
    assert det.score_samples(off)[0] < det.score_samples(x[:1])[0]


def test_detect_anomalies_keeps_the_scores_when_out_ends_in_json(tmp_path):
    from typer.testing import CliRunner

    from dmlkit.cli.main import app

    normal, far = blobs(n=60)
    np.savez(tmp_path / "normal.npz", x=normal)
    np.savez(tmp_path / "test.npz", x=np.vstack([normal[:20], far]),
             anomaly=np.r_[np.zeros(20), np.ones(len(far))])
    res = CliRunner().invoke(app, ["detect-anomalies", "--normal", str(tmp_path / "normal.npz"),
                                   "--data", str(tmp_path / "test.npz"), "--out",
                                   str(tmp_path / "res.json")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "res.summary.json").is_file()
    assert "auroc" in (tmp_path / "res.summary.json").read_text()
    assert (tmp_path / "res.json").read_text() != (tmp_path / "res.summary.json").read_text()
