"""Saving and loading the anomaly detectors, and the recommender's recorded holdout."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from typer.testing import CliRunner

from dmlkit.apps import CMLRecommender, DeepSVDD, MetricOutlierDetector, Verifier
from dmlkit.cli.main import app
from dmlkit.index import IndexFormatError


def blobs(n=60, d=5, seed=0):
    """Three labelled normal classes and a far query set."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, d)) * 3
    y = np.repeat(np.arange(3), n // 3)
    x = (centres[y] + rng.normal(size=(n, d))).astype(np.float32)
    queries = np.vstack([centres[y[:10]] + rng.normal(size=(10, d)),
                         rng.normal(size=(10, d)) + 8.0]).astype(np.float32)
    return x, y, queries


def rewrite(kit: Path, name: str, text: str) -> None:
    """Replace ``kit/name`` and update its manifest entry, as a consistent file would be."""
    (kit / name).write_text(text)
    manifest = json.loads((kit / "manifest.json").read_text())
    data = (kit / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (kit / "manifest.json").write_text(json.dumps(manifest))


def edit_manifest(kit: Path, **params) -> None:
    manifest = json.loads((kit / "manifest.json").read_text())
    manifest["params"].update(params)
    (kit / "manifest.json").write_text(json.dumps(manifest))


# -- MetricOutlierDetector ---------------------------------------------------------------
@pytest.mark.parametrize("method", ["knn", "prototype", "mahalanobis"])
@pytest.mark.parametrize("labelled", [False, True])
def test_outlier_detector_round_trip_gives_identical_scores(tmp_path, method, labelled):
    x, y, queries = blobs()
    det = MetricOutlierDetector(method, n_neighbors=3, n_prototypes=4, normalize=labelled,
                                contamination=0.2).fit(x, y if labelled else None)
    assert det.save(tmp_path / "det") == tmp_path / "det"
    again = MetricOutlierDetector.load(tmp_path / "det")
    assert again.get_params() == det.get_params()
    assert again.offset_ == det.offset_ and again.n_features_in_ == 5
    np.testing.assert_array_equal(again.score_samples(queries), det.score_samples(queries))
    np.testing.assert_array_equal(again.predict(queries), det.predict(queries))
    assert (again.predict(queries)[10:] == -1).all()  # the far points stay outliers
    with pytest.raises(ValueError, match="expecting 5 features"):
        again.score_samples(queries[:, :4])


def test_outlier_detector_with_a_learned_metric_round_trips(tmp_path):
    x, y, queries = blobs()
    det = MetricOutlierDetector("prototype", embedder="learn", learn_config={
        "model": {"dim": 8, "hidden": [16]}, "training": {"epochs": 1}}).fit(x, y)
    det.save(tmp_path / "det")
    again = MetricOutlierDetector.load(tmp_path / "det")
    assert again.embedder == "learn"  # a keyword, not a path to a run directory
    assert isinstance(again.embedder_, torch.nn.Module) and not again.embedder_.training
    assert again.embedder_config_["in_features"] == 5 and again.embedder_config_["dim"] == 8
    np.testing.assert_array_equal(again.score_samples(queries), det.score_samples(queries))


def test_outlier_detector_with_a_run_directory_round_trips_from_another_directory(
        tmp_path, monkeypatch):
    from dmlkit.config import Config
    from dmlkit.training import train_run

    cfg = Config.from_dict({
        "data": {"name": "digits", "max_per_class": 10, "max_heldout_per_class": 10},
        "model": {"name": "mlp", "dim": 8, "hidden": [16]},
        "training": {"epochs": 1, "progress": False}})
    train_run(cfg, tmp_path / "run", log=lambda *a: None)
    x = np.random.default_rng(0).random((40, 64)).astype(np.float32)
    monkeypatch.chdir(tmp_path)
    det = MetricOutlierDetector(embedder="run").fit(x[:30])  # a relative path
    det.save("det")
    expected = det.score_samples(x[30:])
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = MetricOutlierDetector.load(tmp_path / "det")
    assert again.embedder == str(tmp_path / "run")
    np.testing.assert_array_equal(again.score_samples(x[30:]), expected)


def test_outlier_detector_refuses_unsaveable_and_bad_files(tmp_path):
    x, y, _ = blobs()
    with pytest.raises(NotFittedError):
        MetricOutlierDetector().save(tmp_path / "unfitted")
    assert not (tmp_path / "unfitted").exists()
    module = MetricOutlierDetector(embedder=torch.nn.Flatten()).fit(x)
    with pytest.raises(TypeError, match="cannot be saved"):
        module.save(tmp_path / "module")
    MetricOutlierDetector("mahalanobis").fit(x, y).save(tmp_path / "det")
    Verifier(calibration=None).fit(x, y).save(tmp_path / "verifier")
    with pytest.raises(IndexFormatError, match="not a MetricOutlierDetector"):
        MetricOutlierDetector.load(tmp_path / "verifier")
    with pytest.raises(IndexFormatError, match="not a dmlkit-kit|no manifest"):
        MetricOutlierDetector.load(tmp_path)
    edit_manifest(tmp_path / "det", method="knn")  # arrays of another method
    with pytest.raises(IndexFormatError, match="do not match"):
        MetricOutlierDetector.load(tmp_path / "det")
    edit_manifest(tmp_path / "det", method="mahalanobis")
    MetricOutlierDetector.load(tmp_path / "det")  # back as it was: loads
    (tmp_path / "det" / "precision.npy").write_bytes(b"junk")
    with pytest.raises(IndexFormatError, match="bytes|SHA-256"):
        MetricOutlierDetector.load(tmp_path / "det")


# -- DeepSVDD -----------------------------------------------------------------------------
def test_deep_svdd_round_trip_gives_identical_scores(tmp_path):
    x, _, queries = blobs()
    det = DeepSVDD(epochs=2, batch_size=16, dim=4, contamination=0.2).fit(x)
    det.save(tmp_path / "mlp")
    again = DeepSVDD.load(tmp_path / "mlp")
    assert type(again.model_) is type(det.model_) and not again.model_.training
    assert again.offset_ == det.offset_ and again.n_samples_fit_ == 60
    np.testing.assert_array_equal(again.center_, det.center_)
    np.testing.assert_array_equal(again.score_samples(queries), det.score_samples(queries))
    rng = np.random.default_rng(1)
    flat = rng.random((32, 1 * 8 * 6)).astype(np.float32)
    cnn = DeepSVDD(epochs=1, batch_size=16, dim=4, image_shape=(1, 8, 6)).fit(flat)
    cnn.save(tmp_path / "cnn")
    again = DeepSVDD.load(tmp_path / "cnn")
    assert again.image_shape == (1, 8, 6) and again.model_.__class__.__name__ == "BiasFreeCNN"
    np.testing.assert_array_equal(again.score_samples(flat), cnn.score_samples(flat))
    np.testing.assert_array_equal(again.score_samples(flat.reshape(32, 1, 8, 6)),
                                  cnn.score_samples(flat))


def test_deep_svdd_refuses_unfitted_and_bad_files(tmp_path):
    x, _, _ = blobs()
    with pytest.raises(NotFittedError):
        DeepSVDD().save(tmp_path / "unfitted")
    DeepSVDD(epochs=1, batch_size=16, dim=4).fit(x).save(tmp_path / "det")
    with pytest.raises(IndexFormatError, match="not a MetricOutlierDetector"):
        MetricOutlierDetector.load(tmp_path / "det")
    state = json.loads((tmp_path / "det" / "state.json").read_text())
    rewrite(tmp_path / "det", "state.json",
            json.dumps({**state, "model_config": {**state["model_config"], "hidden": [32]}}))
    with pytest.raises(IndexFormatError, match="weights do not fit"):
        DeepSVDD.load(tmp_path / "det")
    rewrite(tmp_path / "det", "state.json",
            json.dumps({k: v for k, v in state.items() if k != "offset_"}))
    with pytest.raises(IndexFormatError, match="incomplete"):
        DeepSVDD.load(tmp_path / "det")
    rewrite(tmp_path / "det", "state.json", json.dumps(state))
    DeepSVDD.load(tmp_path / "det")  # restored: loads
    weights = next((tmp_path / "det").glob("model.*weight.npy"))
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(IndexFormatError, match="bytes"):
        DeepSVDD.load(tmp_path / "det")


# -- detect-anomalies --save / --detector --------------------------------------------------
@pytest.mark.parametrize("method", ["mahalanobis", "deep_svdd"])
def test_cli_saves_a_detector_and_scores_with_it(tmp_path, method):
    x, y, queries = blobs()
    np.savez(tmp_path / "normal.npz", x=x, labels=y)
    np.savez(tmp_path / "data.npz", x=queries)
    runner = CliRunner()
    res = runner.invoke(app, ["detect-anomalies", "--normal", str(tmp_path / "normal.npz"),
                              "--data", str(tmp_path / "data.npz"), "--method", method,
                              "--out", str(tmp_path / "a.csv"), "--save", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["detect-anomalies", "--detector", str(tmp_path / "d"),
                              "--data", str(tmp_path / "data.npz"),
                              "--out", str(tmp_path / "b.csv")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    summary = json.loads((tmp_path / "b.json").read_text())
    assert summary["method"] == method and summary["detector"] == str(tmp_path / "d")
    assert summary["normal"] is None
    cls = DeepSVDD if method == "deep_svdd" else MetricOutlierDetector
    scores = np.loadtxt(tmp_path / "b.csv", delimiter=",", skiprows=1)[:, 1]
    np.testing.assert_allclose(scores, cls.load(tmp_path / "d").score_samples(queries),
                               rtol=1e-6)


def test_cli_detector_option_errors(tmp_path):
    x, y, queries = blobs()
    np.savez(tmp_path / "normal.npz", x=x)
    np.savez(tmp_path / "data.npz", x=queries)
    Verifier(calibration=None).fit(x, y).save(tmp_path / "verifier")
    runner = CliRunner()
    for args, message in [
        (["--normal", str(tmp_path / "normal.npz"), "--detector", str(tmp_path / "v")],
         "not both or neither"),
        ([], "not both or neither"),
        (["--detector", str(tmp_path / "verifier")], "holds a Verifier, not an anomaly"),
        (["--detector", str(tmp_path / "missing")], "no manifest"),
    ]:
        res = runner.invoke(app, ["detect-anomalies", "--data", str(tmp_path / "data.npz"),
                                  "--out", str(tmp_path / "s.csv"), *args])
        assert res.exit_code == 1 and message in res.output, (args, res.output)
    assert not (tmp_path / "s.csv").exists()


# -- the recommender's holdout ------------------------------------------------------------
def interactions(n_users=30, per_user=6, seed=0):
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        pool = np.arange(12) + (12 if u % 2 else 0)
        for i in rng.choice(pool, per_user, replace=False):
            users.append(f"u{u}")
            items.append(f"i{i}")
    return np.array(users), np.array(items)


def test_recommender_records_and_saves_its_holdout(tmp_path):
    users, items = interactions()
    model = CMLRecommender(dim=4, epochs=1)
    assert model.fit(users, items).holdout_ is None
    model.fit(users, items, holdout="none")
    assert model.holdout_ == "none"
    model.save(tmp_path / "m")
    assert CMLRecommender.load(tmp_path / "m").holdout_ == "none"
    with pytest.raises(ValueError, match="holdout must be one of"):
        CMLRecommender(dim=4, epochs=1).fit(users, items, holdout="first")
    state = json.loads((tmp_path / "m" / "state.json").read_text())
    del state["holdout"]  # as written before the holdout was recorded
    rewrite(tmp_path / "m", "state.json", json.dumps(state))
    older = CMLRecommender.load(tmp_path / "m")
    assert older.holdout_ is None
    np.testing.assert_array_equal(older.recommend(["u0", "u1"], 3),
                                  model.recommend(["u0", "u1"], 3))
    rewrite(tmp_path / "m", "state.json", json.dumps({**state, "holdout": "random"}))
    with pytest.raises(IndexFormatError, match="unknown holdout 'random'"):
        CMLRecommender.load(tmp_path / "m")


def test_fitted_on_matches_the_training_pairs():
    users, items = interactions()
    model = CMLRecommender(dim=4, epochs=1).fit(users[::2], items[::2])
    pairs = set(zip(users[::2].tolist(), items[::2].tolist(), strict=True))
    query_u = np.r_[users, ["ghost", "u0"]]
    query_i = np.r_[items, ["i0", "nothing"]]
    expected = [(u, i) in pairs for u, i in zip(query_u, query_i, strict=True)]
    np.testing.assert_array_equal(model.fitted_on(query_u, query_i), expected)
    assert 0 < sum(expected) < len(expected)
    with pytest.raises(ValueError, match="differ in length"):
        model.fitted_on(["u0"], ["i0", "i1"])


def _write_csv(path: Path) -> None:
    users, items = interactions()
    rows = [f"{u},{i},1,{t}" for t, (u, i) in enumerate(zip(users, items, strict=True))]
    path.write_text("user,item,rating,timestamp\n" + "\n".join(rows) + "\n")


def test_cli_evaluate_refuses_a_model_that_held_nothing_out(tmp_path):
    data = tmp_path / "data.csv"
    _write_csv(data)
    runner = CliRunner()
    train = ["recommend", "train", str(data), "--epochs", "2", "--dim", "4"]
    res = runner.invoke(app, [*train, "--out", str(tmp_path / "all"), "--holdout", "none"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["recommend", "evaluate", str(tmp_path / "all"), "--data",
                              str(data), "-k", "5"])
    assert res.exit_code == 1 and "--holdout none" in res.output
    assert "nothing to evaluate" in res.output and not (tmp_path / "all.json").exists()
    # a model saved without the field: the held-out interactions are its training data
    state = json.loads((tmp_path / "all" / "state.json").read_text())
    del state["holdout"]
    rewrite(tmp_path / "all", "state.json", json.dumps(state))
    res = runner.invoke(app, ["recommend", "evaluate", str(tmp_path / "all"), "--data",
                              str(data), "-k", "5"])
    assert res.exit_code == 1, res.output
    assert "all 30 held-out interactions" in res.output and "were used to train" in res.output
    # the default holdout still evaluates, on interactions the model did not see
    res = runner.invoke(app, [*train, "--out", str(tmp_path / "last")])
    assert res.exit_code == 0, res.output
    assert CMLRecommender.load(tmp_path / "last").holdout_ == "last"
    res = runner.invoke(app, ["recommend", "evaluate", str(tmp_path / "last"), "--data",
                              str(data), "-k", "5"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "last.json").read_text())
    assert metrics["users"] == 30 and 0.0 <= metrics["recall_at_5"] <= 1.0
