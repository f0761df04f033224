"""Thresholds of the application kits and what they say about them: the unlabelled
prototype detector's threshold flags about ``contamination`` of new normal data, verify /
identify report the FAR they were calibrated for and reached, and messages name the
use, the identity, the impostor scores, the command's option and the episode sizes."""

import json
import warnings
from functools import partial

import numpy as np
import pytest
from blob_helpers import labelled_blobs
from typer.testing import CliRunner

from dmlkit.apps import FewShotClassifier, Identifier, MetricOutlierDetector, Verifier
from dmlkit.cli.main import app

runner = CliRunner()


blobs = partial(labelled_blobs, n_classes=6, per_class=10, d=5, noise=0.4, spread=2.0)


# -- 1. the k-means prototype threshold -------------------------------------------------

@pytest.fixture
def one_thread():
    """torch on one thread while k-means runs (two OpenMP pools on two cores slow the
    many small k-means fits of these tests several-fold)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _flagged(labelled: bool, seeds: int = 20) -> float:
    rates = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        x, fresh = rng.normal(size=(50, 3)), rng.normal(size=(2000, 3))
        y = np.repeat(np.arange(5), 10) if labelled else None
        det = MetricOutlierDetector("prototype", contamination=0.1,
                                    random_state=seed).fit(x, y)
        rates.append(float((det.predict(fresh) == -1).mean()))
    return float(np.mean(rates))


def test_unlabelled_prototype_threshold_flags_about_contamination_of_new_normal_data(
        one_thread):
    # k-means centres fitted with each point scored it too well: about 0.18 was flagged
    assert 0.06 <= _flagged(labelled=False) <= 0.14


def test_labelled_prototype_threshold_stays_near_contamination(one_thread):
    assert 0.06 <= _flagged(labelled=True) <= 0.14  # exact leave-one-out class means


def test_unlabelled_prototype_threshold_on_digits_and_determinism(one_thread):
    from sklearn.datasets import load_digits

    x, _ = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    train, test = x[order[:1000]], x[order[1000:]]
    det = MetricOutlierDetector("prototype", contamination=0.1, random_state=3).fit(train)
    assert 0.06 <= (det.predict(test) == -1).mean() <= 0.14
    again = MetricOutlierDetector("prototype", contamination=0.1, random_state=3).fit(train)
    assert again.offset_ == det.offset_
    assert np.array_equal(again.fit_predict(train), det.fit_predict(train))


def test_kmeans_out_of_fold_scores_use_centres_fitted_without_the_fold():
    import torch

    from dmlkit.apps.outlier_scores import kmeans_oof_sq, stratified_folds

    z = torch.from_numpy(np.random.default_rng(1).normal(size=(30, 2)))
    got = kmeans_oof_sq(z, 4, n_folds=3, seed=5)
    folds = stratified_folds(np.zeros(30, dtype=np.int64), 3, 5)
    from sklearn.cluster import KMeans

    for f in range(3):
        held = folds == f
        km = KMeans(n_clusters=4, n_init=3, random_state=5).fit(z[~held].numpy())
        centres = km.cluster_centers_.astype(np.float32).astype(np.float64)
        want = ((z[held].numpy()[:, None] - centres[None]) ** 2).sum(-1).min(1)
        np.testing.assert_allclose(got[held].numpy(), want, rtol=1e-5)


# -- 2. verify / identify report the FAR of their calibration ---------------------------

def _save_identities(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(40, 8)) * 2
    y = np.repeat(np.arange(40), 6)
    x = (centers[y] + rng.normal(size=(240, 8))).astype(np.float32)
    np.savez(tmp_path / "v.npz", x=x, labels=y)
    gallery = y < 20
    query = ~gallery | (np.arange(240) % 6 == 0)
    np.savez(tmp_path / "g.npz", x=x[gallery], labels=y[gallery])
    np.savez(tmp_path / "q.npz", x=x[query], labels=y[query])
    return x, y


def test_verify_reports_target_far_and_the_calibration_rates(tmp_path):
    x, y = _save_identities(tmp_path)
    out = tmp_path / "verify.json"
    res = runner.invoke(app, ["verify", "--data", str(tmp_path / "v.npz"), "--target-far",
                              "0.01", "--bootstrap", "20", "--out", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["target_far"] == 0.01
    assert 0.0 < result["calibration_far"] <= 0.01
    assert 0.0 < result["calibration_tar"] <= 1.0
    assert "calibrated for target_far 0.01 on pairs of 20 identities" in result["threshold_note"]
    assert "other than the 20 it is evaluated on" in result["threshold_note"]
    for key in ("target_far", "calibration_far", "calibration_tar"):
        assert f"  {key:24s} " in res.output
    assert "note: the threshold was calibrated" in res.output
    keys = list(result)  # beside the threshold, before the rates measured at it
    assert keys.index("threshold") < keys.index("target_far") < keys.index("far_at_threshold")


def test_verify_calibration_rates_are_the_verifiers(tmp_path):
    x, y = _save_identities(tmp_path)
    np.savez(tmp_path / "c.npz", x=x[y < 20], labels=y[y < 20])
    np.savez(tmp_path / "e.npz", x=x[y >= 20], labels=y[y >= 20])
    out = tmp_path / "verify.json"
    res = runner.invoke(app, ["verify", "--data", str(tmp_path / "e.npz"), "--calibrate",
                              str(tmp_path / "c.npz"), "--bootstrap", "20", "--out", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    v = Verifier(metric="cosine").fit(x[y < 20], y[y < 20])
    assert result["target_far"] is None  # the threshold of best accuracy
    assert result["calibration_far"] == pytest.approx(v.far_)
    assert result["calibration_tar"] == pytest.approx(v.tar_)
    assert "calibrated for the best accuracy on pairs of --calibrate" in result["threshold_note"]


def test_identify_reports_target_far_and_where_the_threshold_was_set(tmp_path):
    _save_identities(tmp_path)
    out = tmp_path / "identify.json"
    res = runner.invoke(app, ["identify", "--gallery", str(tmp_path / "g.npz"), "--query",
                              str(tmp_path / "q.npz"), "--target-far", "0.05", "--out",
                              str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["target_far"] == 0.05
    assert "not on the unknown identities of --query" in result["threshold_note"]
    assert "on the 120 unknown queries" in result["threshold_note"]
    assert f"  {'target_far':24s} 0.0500" in res.output
    closed = runner.invoke(app, ["identify", "--gallery", str(tmp_path / "g.npz"), "--query",
                                 str(tmp_path / "q.npz"), "--closed-set", "--out", str(out)])
    assert closed.exit_code == 0, closed.output
    assert "target_far" not in json.loads(out.read_text()) and "note:" not in closed.output


# -- 3. a Verifier given one identity ---------------------------------------------------

def test_one_identity_message_names_the_use_and_the_identity():
    x, y = blobs()
    v = Verifier().fit(x, y)
    with pytest.raises(ValueError) as err:
        v.evaluate(x, np.zeros(len(x)))
    assert str(err.value) == (
        "evaluate draws the pairs it measures from y; different-identity pairs need at "
        "least two identities, but y has only one identity (0.0): pass items of two or more "
        "identities, or pairs with is_same")
    with pytest.raises(ValueError, match=r"^fit draws the pairs that set the threshold from "
                                         r"y; .* only one identity \('alice'\)"):
        Verifier().fit(x, np.full(len(x), "alice"))


# -- 4. an Identifier's unresolvable target_far speaks of impostor scores ---------------

def test_identifier_calibration_warning_counts_impostor_scores():
    x, y = blobs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Identifier(target_far=0.1).fit(x[:6], np.arange(6))
    (w,) = [c for c in caught if issubclass(c.category, UserWarning)]
    message = str(w.message)
    assert message.startswith("the calibration set cannot resolve target_far=0.1: its 6 "
                              "impostor scores (each item's best score against an identity "
                              "other than its own) resolve no FAR between 0 and 1/6")
    assert "needs at least 10 impostor scores" in message and "pairs" not in message
    assert w.filename == __file__  # attributed to the caller of fit


# -- 5. detect-anomalies names its own option --------------------------------------------

def test_detect_anomalies_warning_names_the_k_option(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", x=rng.normal(size=(250, 4)).astype(np.float32))
    np.savez(tmp_path / "b.npz", x=rng.normal(size=(40, 4)).astype(np.float32))
    with warnings.catch_warnings(record=True) as caught:  # (on a terminal: "warning: ...")
        warnings.simplefilter("always")
        res = runner.invoke(app, ["detect-anomalies", "--normal", str(tmp_path / "a.npz"),
                                  "--data", str(tmp_path / "b.npz"), "-k", "1000",
                                  "--out", str(tmp_path / "s.csv")])
    assert res.exit_code == 0, res.output
    (message,) = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert message.startswith("--k 1000 but there are only 250 normal points")
    assert "pass --k <= 249 (or more normal data)" in message
    assert "n_neighbors" not in message + res.output


def test_option_words_leaves_other_names_alone():
    from dmlkit.cli.anomalies import option_words

    assert option_words("n_neighbors=7; pass n_neighbors <= 3, not my_n_neighbors") == (
        "--k 7; pass --k <= 3, not my_n_neighbors")


# -- 6. episodes a labelled set cannot fill ----------------------------------------------

def test_episode_size_message_names_k_shot_and_n_query():
    x, y = blobs()
    with pytest.raises(ValueError) as err:
        FewShotClassifier().evaluate_episodes(x, y, k_shot=200)
    assert str(err.value) == (
        "5-way episodes need 5 classes with at least 215 items each (k_shot=200 support + "
        "n_query=15 queries), but only 0 of the 6 classes have that many; lower n_way, "
        "k_shot or n_query (or pass more items per class)")
