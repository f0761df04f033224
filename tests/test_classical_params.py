"""Every classical learner refuses a bad numeric parameter at fit with a ValueError that
names it: iteration counts are integers >= 1 (never truncated floats or bools),
tolerances finite and >= 0, weights inside their interval, ITML's bounds ordered."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_iris

from dmlkit.classical import ITML, LFDA, LMNN, MLKR, NCA, ITMLSupervised

X, Y = load_iris(return_X_y=True)
RNG = np.random.default_rng(0)
A = RNG.integers(0, 150, 60)
B = (A + 1 + RNG.integers(0, 149, 60)) % 150
PAIRS = np.stack([X[A], X[B]], axis=1)  # (60, 2, 4)
PAIR_Y = np.where(Y[A] == Y[B], 1, -1)


def _fit(learner):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (convergence warnings of short solves)
        if isinstance(learner, ITML) and not isinstance(learner, ITMLSupervised):
            return learner.fit(PAIRS, PAIR_Y)
        return learner.fit(X, Y)


BAD_MAX_ITER = [0, -3, 2.5, True, 10.0]
BAD_TOL = [-1.0, float("nan"), float("inf"), True, "1e-3"]


@pytest.mark.parametrize("make", [
    lambda **kw: ITML(**kw), lambda **kw: ITMLSupervised(random_state=0, **kw),
    lambda **kw: NCA(device="cpu", **kw), lambda **kw: LMNN(device="cpu", **kw),
    lambda **kw: MLKR(device="cpu", **kw),
], ids=["ITML", "ITMLSupervised", "NCA", "LMNN", "MLKR"])
def test_solver_params_are_checked(make):
    for value in BAD_MAX_ITER:
        with pytest.raises(ValueError, match=rf"max_iter must be an integer >= 1, got {value!r}"):
            _fit(make(max_iter=value))
    for tol in BAD_TOL:
        with pytest.raises(ValueError, match=r"tol must be a real number in \[0, inf\)"):
            _fit(make(tol=tol))
    assert _fit(make(max_iter=np.int64(3), tol=0)).n_iter_ >= 1


def test_itml_refuses_bounds_with_similar_above_dissimilar():
    with pytest.raises(ValueError, match=r"bound u on similar pairs.*must not exceed"):
        _fit(ITML(bounds=(5, 1)))
    with pytest.raises(ValueError, match="two finite positive numbers"):
        _fit(ITML(bounds=("a", "b")))
    assert np.array_equal(_fit(ITML(bounds=(1, 5), max_iter=5)).bounds_, [1.0, 5.0])


@pytest.mark.parametrize("gamma", [0, -1.0, float("nan"), True, "1"])
def test_itml_refuses_a_bad_gamma(gamma):
    with pytest.raises(ValueError, match=r"gamma must be a real number in \(0, inf\]"):
        _fit(ITML(gamma=gamma))


@pytest.mark.parametrize("n", [0, -1, 2.7, True, 3.0])
def test_itml_supervised_refuses_a_non_integer_n_constraints(n):
    with pytest.raises(ValueError, match=rf"n_constraints must be an integer >= 1, got {n!r}"):
        _fit(ITMLSupervised(n_constraints=n))


def test_itml_supervised_takes_numpy_integers():
    assert _fit(ITMLSupervised(n_constraints=np.int32(20), max_iter=5,
                               random_state=0)).n_iter_ >= 1


@pytest.mark.parametrize("mu", [-0.1, 1.5, float("nan"), True])
def test_lmnn_refuses_a_mu_outside_0_1(mu):
    with pytest.raises(ValueError, match=r"mu must be a real number in \(0, 1\]"):
        _fit(LMNN(mu=mu, device="cpu"))


@pytest.mark.parametrize("reg", [-1e-6, float("nan"), float("inf"), True])
def test_lfda_refuses_a_bad_reg(reg):
    with pytest.raises(ValueError, match=r"reg must be a real number in \[0, inf\)"):
        _fit(LFDA(reg=reg, device="cpu"))


@pytest.mark.parametrize("n", [0, 2.5, True])
def test_neighbour_counts_are_integers(n):
    for learner in (LMNN(n_neighbors=n, device="cpu"), LFDA(n_neighbors=n, device="cpu")):
        with pytest.raises(ValueError, match="n_neighbors must be an integer >= 1"):
            _fit(learner)
