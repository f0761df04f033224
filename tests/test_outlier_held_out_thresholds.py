"""The thresholds of MetricOutlierDetector come from held-out training scores (exact
leave-one-out for knn and prototype, class-stratified out-of-fold for mahalanobis), so
new normal data is flagged at about the contamination rate, also for small classes in
many dimensions, where scores of points against models fitted on them are far too good."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf

from dmlkit.apps import MetricOutlierDetector
from dmlkit.apps.outlier_scores import prototype_loo_sq, stratified_folds


def gaussian_classes(rng, centres, per):
    y = np.repeat(np.arange(len(centres)), per)
    return centres[y] + rng.normal(size=(len(y), centres.shape[1])), y


@pytest.mark.parametrize("method, labelled", [
    ("knn", False), ("prototype", True), ("mahalanobis", True),
    ("prototype", False), ("mahalanobis", False),
])
def test_new_normal_data_is_flagged_at_about_the_contamination_rate(method, labelled):
    # 5 Gaussian classes of 8 points in 20 dimensions (QA's case: a threshold from the
    # points' own scores flagged 0.47 (prototype) and 0.63 (mahalanobis) of new normals)
    rates = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        centres = rng.normal(scale=5, size=(5, 20))
        x, y = gaussian_classes(rng, centres, 8)
        fresh, _ = gaussian_classes(rng, centres, 200)
        det = MetricOutlierDetector(method, contamination=0.1, n_prototypes=5)
        det.fit(x, y if labelled else None)
        rates.append(float((det.predict(fresh) == -1).mean()))
    # 8 x 1000 new points; a 0.1 quantile of 40 held-out scores varies by about 0.05 per
    # data set, so the mean over 8 lies well within [0.04, 0.2]
    assert 0.04 <= np.mean(rates) <= 0.2, rates


def test_prototype_threshold_is_the_quantile_of_exact_leave_one_out_scores():
    rng = np.random.default_rng(3)
    y = np.array([0] * 6 + [1] * 4 + [2] * 5 + [3])  # class 3 holds one point
    x = rng.normal(size=(len(y), 4)) + 2.0 * y[:, None]
    loo = []
    for i in range(len(x)):
        dists = []
        for c in range(4):
            members = (y == c) & (np.arange(len(y)) != i)
            if members.any():  # the point's own class without it; none left: skipped
                dists.append(np.linalg.norm(x[i] - x[members].mean(0)))
        loo.append(-min(dists))
    det = MetricOutlierDetector("prototype", contamination=0.25).fit(x, y)
    assert det.offset_ == pytest.approx(np.quantile(loo, 0.25), rel=1e-6)
    np.testing.assert_array_equal(det.fit_predict(x, y), np.where(np.array(loo) >= det.offset_,
                                                                   1, -1))
    # new points are still scored against the class means of all the points
    means = np.stack([x[y == c].mean(0) for c in range(4)])
    q = rng.normal(size=(5, 4)) * 3
    np.testing.assert_allclose(det.score_samples(q),
                               [-np.linalg.norm(v - means, axis=1).min() for v in q], rtol=1e-5)


def test_prototype_loo_sq_equals_a_loop():
    rng = np.random.default_rng(0)
    z = torch.from_numpy(rng.normal(size=(9, 3)))
    assignment = torch.tensor([0, 0, 0, 1, 1, 2, 1, 0, 3])  # classes 2 and 3: one point each
    centres = torch.stack([z[assignment == c].mean(0) for c in range(4)])
    ref = []
    for i in range(9):
        own = int(assignment[i])
        d2 = []
        for c in range(4):
            members = [j for j in range(9) if int(assignment[j]) == c and j != i]
            if members:
                d2.append(float(((z[i] - z[members].mean(0)) ** 2).sum()))
        assert len(d2) == (3 if own >= 2 else 4)
        ref.append(min(d2))
    np.testing.assert_allclose(prototype_loo_sq(z, centres, assignment).numpy(), ref,
                               rtol=1e-12)


def test_every_point_alone_in_its_class_is_scored_against_the_others():
    x = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    det = MetricOutlierDetector("prototype", contamination=0.5).fit(x, [0, 1, 2])
    # held out, each point's nearest prototype is another point: distances 3, 3, 4
    assert det.offset_ == pytest.approx(-3.0)
    np.testing.assert_array_equal(det.fit_predict(x, [0, 1, 2]), [1, 1, -1])


def test_mahalanobis_threshold_is_the_quantile_of_out_of_fold_scores():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], [12, 9, 1])  # class 2: one point, left out with its fold
    x = rng.normal(size=(len(y), 3)) + 3.0 * y[:, None]
    det = MetricOutlierDetector("mahalanobis", contamination=0.2, random_state=4).fit(x, y)
    folds = stratified_folds(y, 10, 4)
    assert np.bincount(folds).tolist() == [3, 3, 2, 2, 2, 2, 2, 2, 2, 2]
    for c in (0, 1):  # about as many of each class in every fold
        assert np.bincount(folds[y == c], minlength=10).max() <= 2
    oof = np.empty(len(y))
    for f in range(10):
        rest = folds != f
        classes = np.unique(y[rest])
        means = np.stack([x[rest & (y == c)].mean(0) for c in classes])
        resid = x[rest] - means[np.searchsorted(classes, y[rest])]
        cov = LedoitWolf(assume_centered=True).fit(resid).covariance_
        scale = max(np.trace(cov), (x[rest] ** 2).sum(1).mean())
        prec = np.linalg.pinv(cov + 1e-6 * scale / 3 * np.eye(3))
        for i in np.flatnonzero(~rest):
            oof[i] = -min(np.sqrt((x[i] - m) @ prec @ (x[i] - m)) for m in means)
    assert det.offset_ == pytest.approx(np.quantile(oof, 0.2), rel=1e-6)
    np.testing.assert_array_equal(det.fit_predict(x, y), np.where(oof >= det.offset_, 1, -1))
    # the threshold's folds are seeded: the same seed, the same threshold
    again = MetricOutlierDetector("mahalanobis", contamination=0.2, random_state=4).fit(x, y)
    assert again.offset_ == det.offset_
