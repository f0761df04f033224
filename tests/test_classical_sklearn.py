"""Classical learners as scikit-learn estimators: check_estimator, Pipeline, GridSearchCV."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from dmlkit.classical import ITML, LFDA, LMNN, MLKR, NCA, ITMLSupervised


@parametrize_with_checks(
    [
        NCA(max_iter=2, device="cpu"),
        LMNN(max_iter=2, device="cpu"),
        ITMLSupervised(max_iter=2, n_constraints=20),
        LFDA(device="cpu"),
        MLKR(max_iter=2, device="cpu"),
    ]
)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def test_pipeline_and_grid_search():
    rng = np.random.RandomState(0)
    y = np.arange(60) % 3
    X = np.column_stack([y + 0.2 * rng.randn(60), 3 * rng.randn(60), rng.randn(60)])
    pipe = make_pipeline(NCA(device="cpu", max_iter=10), KNeighborsClassifier(3))
    grid = GridSearchCV(pipe, {"nca__n_components": [1, 2]}, cv=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        grid.fit(X, y)
    assert grid.best_score_ > 0.9
    assert grid.best_estimator_[0].components_.shape[0] == grid.best_params_["nca__n_components"]


@pytest.mark.parametrize("cls", [NCA, LMNN, ITML, ITMLSupervised, LFDA, MLKR])
def test_params_round_trip_and_clone(cls):
    est = cls()
    params = est.get_params()
    again = clone(est).set_params(**params)
    assert again.get_params() == params
    assert "n_components" in params
    assert not any(k.endswith("_") for k in vars(est))  # __init__ stores params only
