"""With ``embedder="learn"`` the threshold of MetricOutlierDetector is cross-fitted: each
normal row is scored in a metric learned without it, so new normal data is flagged at
about the contamination rate (the metric pulls the rows it was trained on together, and a
threshold from their scores in it flagged 13-21% of new normal digits at 0.1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import dmlkit.apps.outliers as outliers
from dmlkit.apps import MetricOutlierDetector
from dmlkit.apps.outlier_scores import stratified_folds


def test_learned_metric_flags_new_normal_data_at_about_the_contamination_rate():
    # digits 0-4: 300 normal rows to fit on, 550 new normal rows, contamination 0.1
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    rates = []
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(x))
        xs, ys = x[order][y[order] < 5], y[order][y[order] < 5]
        det = MetricOutlierDetector("prototype", embedder="learn", contamination=0.1,
                                    random_state=seed).fit(xs[:300], ys[:300])
        rates.append(float((det.predict(xs[300:850]) == -1).mean()))
    # The flagged rate of one fit spreads by about sqrt(q (1 - q) / n_cal + q (1 - q) /
    # n_new) = sqrt(0.09 / 300 + 0.09 / 550) = 0.022 (the threshold is a 0.1 quantile of
    # 300 held-out scores, the rate a mean over 550 new rows), about 0.03 with the spread
    # between learned metrics; the mean of 3 fits by at most 0.017, so 0.1 +- 0.045. The
    # threshold from the rows the metric was trained on flagged 0.17-0.20 of these rows.
    assert 0.055 <= np.mean(rates) <= 0.145, rates


def test_the_threshold_is_cross_fitted_over_the_folds(monkeypatch):
    # an identity "metric": the cross-fitted scores are then the plain held-out scores,
    # so the threshold equals that of the raw features, and each fold's metric is
    # learned on the rows outside that fold, the final one on all rows
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 12)
    x = (rng.normal(size=(len(y), 4)) + 3.0 * y[:, None]).astype(np.float32)
    seen = []

    def identity(X, labels, overrides, seed):
        seen.append(np.asarray(X).copy())
        return torch.nn.Flatten(), {"name": "identity"}

    monkeypatch.setattr(outliers, "learn_embedder", identity)
    for method in ("knn", "prototype", "mahalanobis"):
        seen.clear()
        learned = MetricOutlierDetector(method, embedder="learn", calibration_folds=4,
                                        contamination=0.2).fit(x, y)
        raw = MetricOutlierDetector(method, contamination=0.2).fit(x, y)
        assert learned.offset_ == pytest.approx(raw.offset_, rel=1e-6)
        folds = stratified_folds(y, 4, 0)
        assert len(seen) == 5  # one metric per fold, then one on all the rows
        for f in range(4):
            np.testing.assert_array_equal(seen[f], x[folds != f])
        np.testing.assert_array_equal(seen[4], x)


@pytest.mark.parametrize("folds", [1, 0, 2.5, True, "5"])
def test_calibration_folds_is_checked(folds):
    x = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match="calibration_folds must be an integer >= 2"):
        MetricOutlierDetector(embedder="learn", calibration_folds=folds).fit(x, np.arange(20) % 2)


def test_a_fold_without_two_classes_is_refused(monkeypatch):
    monkeypatch.setattr(outliers, "learn_embedder",
                        lambda X, labels, overrides, seed: (torch.nn.Flatten(), {}))
    x = np.random.default_rng(0).normal(size=(3, 3))
    with pytest.raises(ValueError, match="holds a single class"):
        MetricOutlierDetector(embedder="learn", calibration_folds=3).fit(x, [0, 0, 1])
