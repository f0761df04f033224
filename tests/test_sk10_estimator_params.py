"""Fitted state owns its data, and parameters are checked the same way by every kit."""

from __future__ import annotations

import numpy as np
import pytest

from dmlkit.apps import DeepSVDD, Identifier, MetricOutlierDetector, Verifier
from dmlkit.classical import LMNN


def _rows(n: int = 60, d: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _labelled(n: int = 80, d: int = 6) -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(n) % 4
    X = _rows(n, d) + y[:, None].astype(np.float32) * 3.0
    return X, y


# -- fitted state does not follow the caller's buffer ----------------------------------
@pytest.mark.parametrize("method", ["knn", "prototype", "mahalanobis"])
def test_outlier_detector_unaffected_by_changes_to_fit_input(method, tmp_path):
    X = _rows()
    original = X.copy()
    det = MetricOutlierDetector(method=method, n_prototypes=2).fit(X)
    q = np.zeros((2, X.shape[1]), dtype=np.float32)
    before = det.score_samples(q)
    X += 100.0
    assert not np.shares_memory(det.reference_.numpy(), X)
    np.testing.assert_array_equal(det.score_samples(q), before)
    det.save(tmp_path / "det")
    saved = MetricOutlierDetector.load(tmp_path / "det")
    np.testing.assert_array_equal(saved.reference_.numpy(), original)


def test_identifier_unaffected_by_changes_to_fit_input():
    X, y = _labelled()
    ident = Identifier(mode="nearest", target_far=None).fit(X, y)
    before = ident.predict(X[:8].copy())
    query = X[:8].copy()
    X += 1000.0
    np.testing.assert_array_equal(ident.predict(query), before)


# -- random_state: None, an integer or a RandomState ------------------------------------
@pytest.mark.parametrize("random_state", [None, 3, np.random.RandomState(0)])
@pytest.mark.parametrize("method", ["knn", "prototype", "mahalanobis"])
def test_outlier_detector_accepts_random_state_kinds(method, random_state):
    det = MetricOutlierDetector(method=method, n_prototypes=2, random_state=random_state).fit(
        _rows()
    )
    assert det.predict(_rows(5, seed=1)).shape == (5,)


@pytest.mark.parametrize("random_state", [None, 3, np.random.RandomState(0)])
def test_deep_svdd_accepts_random_state_kinds(random_state):
    m = DeepSVDD(dim=4, epochs=1, random_state=random_state).fit(_rows())
    assert m.score_samples(_rows(5, seed=1)).shape == (5,)


@pytest.mark.parametrize("random_state", [np.random.RandomState(0), None])
def test_identifier_and_verifier_accept_random_state_kinds(random_state):
    X, y = _labelled()
    Identifier(random_state=random_state).fit(X, y)
    Verifier(random_state=random_state, n_bootstrap=5).fit(X, y)


def test_random_state_seed_repeats_fit():
    X = _rows()
    a = MetricOutlierDetector(method="mahalanobis", random_state=7).fit(X)
    b = MetricOutlierDetector(method="mahalanobis", random_state=7).fit(X)
    assert a.offset_ == b.offset_


@pytest.mark.parametrize("bad", ["0", 1.5, True, -1, object()])
@pytest.mark.parametrize(
    "make",
    [
        lambda rs: MetricOutlierDetector(method="mahalanobis", random_state=rs),
        lambda rs: MetricOutlierDetector(method="knn", random_state=rs),
        lambda rs: DeepSVDD(epochs=1, random_state=rs),
        lambda rs: Identifier(random_state=rs),
        lambda rs: Verifier(random_state=rs),
    ],
)
def test_bad_random_state_refused_naming_it(make, bad):
    X, y = _labelled()
    with pytest.raises(ValueError, match="random_state"):
        make(bad).fit(X, y)


# -- Verifier: probabilities from the calibrator that was fitted ------------------------
@pytest.mark.parametrize(
    "fitted, changed", [("isotonic", "platt"), ("platt", "isotonic"), ("platt", None)]
)
def test_verifier_proba_uses_fitted_calibration(fitted, changed, tmp_path):
    X, y = _labelled()
    v = Verifier(calibration=fitted, n_bootstrap=5).fit(X, y)
    before = v.predict_proba(X[:6], X[1:7])
    assert v.calibration_ == fitted
    v.set_params(calibration=changed)
    np.testing.assert_array_equal(v.predict_proba(X[:6], X[1:7]), before)
    v.save(tmp_path / "v")
    np.testing.assert_array_equal(
        Verifier.load(tmp_path / "v").predict_proba(X[:6], X[1:7]), before
    )


def test_verifier_without_fitted_calibration_has_no_proba():
    X, y = _labelled()
    v = Verifier(calibration=None, n_bootstrap=5).fit(X, y)
    v.set_params(calibration="platt")
    with pytest.raises(ValueError, match="calibration"):
        v.predict_proba(X[:3], X[:3])


# -- LMNN: mu in (0, 1] ----------------------------------------------------------------
def test_lmnn_refuses_mu_zero():
    X, y = _labelled(40, 3)
    with pytest.raises(ValueError, match=r"mu must be .*\(0, 1\]"):
        LMNN(mu=0.0, device="cpu").fit(X, y)


def test_lmnn_accepts_mu_one():
    X, y = _labelled(40, 3)
    assert LMNN(mu=1.0, device="cpu", max_iter=5).fit(X, y).components_.shape[1] == 3


# -- DeepSVDD: integers stay integers, center_eps >= 0 ----------------------------------
@pytest.mark.parametrize(
    "param, value",
    [
        ("dim", 2.5),
        ("epochs", 1.9),
        ("dim", True),
        ("epochs", 0),
        ("center_eps", -0.1),
        ("center_eps", float("nan")),
        ("lr", "0.1"),
    ],
)
def test_deep_svdd_refuses_bad_numbers(param, value):
    with pytest.raises(ValueError, match=param):
        DeepSVDD(**{param: value}).fit(_rows())


@pytest.mark.parametrize("make", [Identifier, Verifier])
@pytest.mark.parametrize("value", ["a", "0.1", b"0.1"])
def test_target_far_text_refused(make, value):
    X, y = _labelled()
    with pytest.raises(ValueError, match="target_far"):
        make(target_far=value).fit(X, y)
