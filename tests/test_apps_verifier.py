"""Verifier: thresholds, calibration, intervals, curves, persistence and bad input."""

from functools import partial

import numpy as np
import pytest
import torch
from blob_helpers import labelled_blobs
from sklearn.exceptions import NotFittedError
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_curve as sk_roc_curve
from sklearn.utils.estimator_checks import (
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
)

from dmlkit.apps import Verifier
from dmlkit.apps.verification_stats import bootstrap_intervals, verification_curves
from dmlkit.evaluation import ThresholdCalibrator, pairs_from_labels, verification_metrics
from dmlkit.functional.verification import equal_error_rate, roc_curve, tar_at_far
from dmlkit.index import IndexFormatError

blobs = partial(labelled_blobs, n_classes=12, per_class=8, d=6, noise=0.6, float32=False)


def cosine_pair_scores(x, i, j):
    a, b = x[i], x[j]
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_defaults_work_on_any_float_array():
    x, y = blobs()
    v = Verifier().fit(x, y)
    assert v.predict(x[:4], x[4:8]).dtype == bool
    proba = v.predict_proba(x[:4], x[8:12])
    assert proba.shape == (4, 2) and np.allclose(proba.sum(1), 1.0)
    assert v.n_features_in_ == x.shape[1]


def test_threshold_for_target_far_matches_calibrator():
    x, y = blobs()
    i, j, same = pairs_from_labels(y)
    s = cosine_pair_scores(x, i, j)
    v = Verifier(target_far=0.05).fit(x, y)
    cal = ThresholdCalibrator(0.05).fit(s, same)
    assert v.threshold_ == pytest.approx(cal.threshold_)
    assert v.far_ <= 0.05 and v.far_ == pytest.approx(cal.far_)
    np.testing.assert_allclose(v.score_pairs(x[i], x[j]), s, atol=1e-6)  # float32 rows


def test_best_accuracy_threshold_is_best():
    x, y = blobs(noise=1.0)
    i, j, same = pairs_from_labels(y)
    s = cosine_pair_scores(x, i, j)
    v = Verifier().fit(x, y)
    accs = [((s >= t) == same).mean() for t in np.r_[s, np.inf]]  # every cut
    assert ((s >= v.threshold_) == same).mean() == pytest.approx(max(accs))


def test_platt_and_isotonic_match_scikit_learn():
    x, y = blobs(noise=1.0)
    i, j, same = pairs_from_labels(y)
    s = cosine_pair_scores(x, i, j)
    v = Verifier(calibration="platt").fit(x, y)
    ref = LogisticRegression(C=1e6).fit(s[:, None], same).predict_proba(s[:, None])[:, 1]
    np.testing.assert_allclose(v.proba_from_scores(s), ref, atol=1e-6)
    v = Verifier(calibration="isotonic").fit(x, y)
    iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(s, same)
    probe = np.linspace(-1.2, 1.2, 50)
    np.testing.assert_allclose(v.proba_from_scores(probe), iso.predict(probe), atol=1e-12)
    with pytest.raises(ValueError, match="calibration"):
        Verifier(calibration=None).fit(x, y).predict_proba(x[:2], x[2:4])


def test_fit_on_pairs_and_on_pair_rows_agree():
    x, y = blobs()
    i, j, same = pairs_from_labels(y, max_pairs=500, seed=3)
    a = Verifier(target_far=0.1).fit(x, pairs=(i, j, same))
    b = Verifier(target_far=0.1).fit_pairs(x[i], x[j], same)
    c = Verifier(target_far=0.1).fit(x, y, pairs=np.stack([i, j], 1))  # same from labels
    assert a.threshold_ == pytest.approx(b.threshold_) == pytest.approx(c.threshold_)
    assert a.n_pairs_ == 500


def test_evaluate_matches_verification_metrics_and_intervals_cover():
    x, y = blobs(noise=1.0)
    xt, yt = blobs(noise=1.0, seed=1)
    v = Verifier(n_bootstrap=200).fit(x, y)
    out = v.evaluate(xt, yt, curves=True)
    i, j, same = pairs_from_labels(yt)
    ref = verification_metrics(cosine_pair_scores(xt, i, j), same, fars=v.fars)
    for key in ("auc", "eer", "tar_at_far_0.01", "accuracy_mean"):
        assert out[key] == pytest.approx(ref[key])
    lo, hi = out["ci95"]["eer"]
    assert lo <= out["eer"] <= hi and hi - lo > 0
    lo, hi = out["ci95"]["tar_at_far_0.1"]
    assert lo <= out["tar_at_far_0.1"] <= hi
    assert 0.0 <= out["far_at_threshold"] <= 1.0 and "curves" in out


def test_bootstrap_matches_resampling_loop():
    rng = np.random.default_rng(5)
    s = rng.normal(size=60).round(1)  # ties
    y = rng.random(60) < 0.4
    out = bootstrap_intervals(s, y, fars=(0.1,), n_bootstrap=40, seed=11)
    order = np.argsort(-s, kind="stable")
    ss, ys = s[order], y[order]
    draw = np.random.default_rng(11)
    eers, tars = [], []
    for _ in range(40):
        idx = draw.integers(0, 60, size=60)
        if ys[idx].all() or not ys[idx].any():
            continue
        fpr, tpr, thr = roc_curve(ss[idx], ys[idx])
        eers.append(equal_error_rate(fpr, tpr, thr)[0])
        tars.append(tar_at_far(fpr, tpr, 0.1))
    np.testing.assert_allclose(out["eer"], np.percentile(eers, [2.5, 97.5]), atol=1e-12)
    np.testing.assert_allclose(out["tar_at_far_0.1"], np.percentile(tars, [2.5, 97.5]),
                               atol=1e-12)


def test_curves_match_scikit_learn():
    rng = np.random.default_rng(2)
    s, y = rng.normal(size=80), rng.random(80) < 0.5
    c = verification_curves(s, y)
    fpr, tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(c["fpr"], fpr)
    np.testing.assert_allclose(c["tpr"], tpr)
    np.testing.assert_allclose(c["frr"], 1 - tpr)
    assert np.all(np.diff(c["far_probit"]) >= 0) and np.all(np.diff(c["frr_probit"]) <= 0)


def test_torch_module_embedder():
    x, y = blobs()
    lin = torch.nn.Linear(6, 4)
    z = lin(torch.from_numpy(x).float()).detach().numpy()
    a = Verifier(embedder=lin).fit(x.astype(np.float32), y)
    b = Verifier().fit(z, y)
    assert a.threshold_ == pytest.approx(b.threshold_, abs=1e-6)
    with pytest.raises(TypeError, match="cannot be saved"):
        a.save("unused")


def test_save_load_round_trip_and_refusals(tmp_path):
    x, y = blobs()
    v = Verifier(target_far=0.05, calibration="isotonic", fars=(0.01, 0.1)).fit(x, y)
    v.save(tmp_path / "v")
    assert not list(tmp_path.glob("**/*.pkl"))
    w = Verifier.load(tmp_path / "v")
    assert w.get_params() == v.get_params()  # the tuple of fars given back as one
    np.testing.assert_array_equal(w.predict_proba(x[:9], x[9:18]),
                                  v.predict_proba(x[:9], x[9:18]))
    (tmp_path / "v" / "isotonic.npy").write_bytes(b"garbage")
    with pytest.raises(IndexFormatError, match="bytes|SHA-256"):
        Verifier.load(tmp_path / "v")
    with pytest.raises(IndexFormatError, match="not a dmlkit-kit|no manifest"):
        Verifier.load(tmp_path)
    from dmlkit.apps import FewShotClassifier

    FewShotClassifier().fit(x, y).save(tmp_path / "f")
    with pytest.raises(IndexFormatError, match="not a Verifier"):
        Verifier.load(tmp_path / "f")


def test_bad_input():
    x, y = blobs()
    with pytest.raises(NotFittedError):
        Verifier().predict(x[:2], x[2:4])
    with pytest.raises(ValueError, match="two identities"):
        Verifier().fit(x, np.zeros(len(x), int))
    with pytest.raises(ValueError, match="NaN"):
        bad = x.copy()
        bad[3, 2] = np.nan
        Verifier().fit(bad, y)
    with pytest.raises(ValueError, match="names row 500, which does not exist"):
        Verifier().fit(x, y, pairs=(np.array([0, 500]), np.array([1, 2])))
    with pytest.raises(ValueError, match="need both same and different"):
        Verifier().fit(x, pairs=(np.array([0, 1]), np.array([1, 2]), np.array([1, 1])))
    v = Verifier().fit(x, y)
    with pytest.raises(ValueError, match="features"):
        v.predict(x[:2, :4], x[2:4, :4])
    with pytest.raises(ValueError, match="different shapes"):
        v.predict(x[:2], x[2:5])
    with pytest.raises(ValueError, match="target_far"):
        Verifier(target_far=2.0).fit(x, y)
    with pytest.raises(ValueError, match="metric"):
        Verifier(metric="manhattan").fit(x, y)


@pytest.mark.parametrize("check", [
    check_parameters_default_constructible, check_no_attributes_set_in_init,
    check_get_params_invariance, check_set_params,
])
def test_scikit_learn_parameter_checks(check):
    # Verifier decides on pairs, not on rows, so only the parameter contract applies
    check("Verifier", Verifier())


def test_string_identities_give_the_same_verifier_as_their_codes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4))
    codes = np.repeat(np.arange(5), 6)
    names = np.array(["alice", "bob", "carol", "dave", "eve"])[codes]
    a = Verifier().fit(x, codes)
    b = Verifier().fit(x, names)
    assert a.threshold_ == b.threshold_
    assert a.evaluate(x, codes)["eer"] == b.evaluate(x, names)["eer"]
    i, j, same = pairs_from_labels(names)
    np.testing.assert_array_equal(same, pairs_from_labels(codes)[2])


def test_few_pairs_of_one_kind_still_evaluate_with_fewer_folds():
    rng = np.random.default_rng(0)
    s = rng.normal(size=20)
    m = verification_metrics(s, [1, 1] + [0] * 18)  # 2 same pairs: 2 folds always work
    assert m["accuracy_folds"] >= 2 and np.isfinite(m["accuracy_mean"])
    one = verification_metrics(s, [1] + [0] * 19)  # 1 same pair: no k-fold accuracy
    assert one["accuracy_folds"] == 0 and np.isnan(one["accuracy_mean"])
    assert 0.0 <= one["eer"] <= 1.0 and 0.0 <= one["auc"] <= 1.0
    plenty = verification_metrics(rng.normal(size=200), rng.integers(0, 2, 200))
    assert plenty["accuracy_folds"] == 10


@pytest.mark.parametrize("max_pairs", [0, -1, 2.5, True])
def test_max_pairs_is_checked(max_pairs):
    x = np.random.default_rng(0).normal(size=(12, 3))
    with pytest.raises(ValueError, match="max_pairs"):
        Verifier(max_pairs=max_pairs).fit(x, np.repeat([0, 1, 2], 4))
