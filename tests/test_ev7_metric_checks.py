"""Evaluation metrics refuse bad settings and degenerate inputs, and say what they cannot
measure: thresholds that separate as reported, TAR at unresolvable FARs, few-shot
intervals, canonical metric names, retrieval cutoffs."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from dmlkit.evaluation import (
    ThresholdCalibrator,
    evaluate_embeddings,
    few_shot_accuracy,
    retrieval_metrics,
    verification_metrics,
)
from dmlkit.evaluation.verification import indexed_pair_scores, pair_scores
from dmlkit.functional.verification import (
    best_accuracy_threshold,
    kfold_accuracy,
    roc_curve,
    threshold_between,
)


def blobs(n_classes=6, per_class=12, d=4, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), per_class)
    x = rng.normal(size=(y.size, d)) + 3.0 * rng.normal(size=(n_classes, d))[y]
    return x.astype(np.float32), y


# -- thresholds ------------------------------------------------------------------------

ADJACENT = np.array([0.5, 0.3, np.nextafter(0.3, 0.0), 0.2, 0.1])
ADJACENT_SAME = np.array([False, True, False, True, False])
LARGE = np.array([1e17, 5e16, 1.0])
LARGE_SAME = np.array([False, True, True])


@pytest.mark.parametrize("scores, same", [(ADJACENT, ADJACENT_SAME), (LARGE, LARGE_SAME)])
def test_threshold_between_accepts_exactly_what_its_point_accepts(scores, same):
    fpr, tpr, thr = roc_curve(scores, same)
    for i in range(thr.size):
        t = threshold_between(thr, i)
        accepted = scores >= t
        assert accepted[~same].mean() == fpr[i], (i, t)
        assert accepted[same].mean() == tpr[i], (i, t)


def test_the_calibrated_threshold_separates_as_its_far_says():
    # the midpoint of 0.3 and the float below it rounds onto the rejected (negative) one
    cal = ThresholdCalibrator(0.5).fit(ADJACENT, ADJACENT_SAME)
    assert cal.far_ == pytest.approx(1 / 3)
    assert cal.predict(ADJACENT[~ADJACENT_SAME]).mean() == pytest.approx(cal.far_)
    assert cal.predict(ADJACENT[ADJACENT_SAME]).mean() == pytest.approx(cal.tar_)
    t, acc = best_accuracy_threshold(ADJACENT, ADJACENT_SAME)
    assert ((ADJACENT >= t) == ADJACENT_SAME).mean() == pytest.approx(acc)


def test_a_threshold_above_the_top_score_at_large_scale():
    # thr + 1.0 is lost to rounding at 1e17: the "accept nothing" threshold accepted 1e17
    with pytest.warns(UserWarning, match="cannot resolve"):
        cal = ThresholdCalibrator(0.5).fit(LARGE, LARGE_SAME)
    assert cal.far_ == 0.0 and not cal.predict(LARGE).any()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = verification_metrics(LARGE, LARGE_SAME, fars=(0.5,), n_folds=2)
    assert not (LARGE >= m["min_dcf_threshold"]).any()  # rejecting every pair is cheapest


# -- TAR at a FAR the pairs cannot resolve ---------------------------------------------

def test_tar_at_an_unresolvable_far_is_nan_with_one_warning():
    rng = np.random.default_rng(0)
    same = np.r_[np.ones(20, bool), np.zeros(30, bool)]  # 30 negative pairs
    scores = rng.normal(size=50) + same
    with pytest.warns(UserWarning) as caught:
        m = verification_metrics(scores, same, fars=(1e-9, 0.01, 0.1))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "30 different" in message and "1000000000 negative pairs" in message
    assert math.isnan(m["tar_at_far_1e-09"]) and math.isnan(m["tar_at_far_0.01"])
    fpr, tpr, _ = roc_curve(scores, same)
    assert m["tar_at_far_0.1"] == tpr[fpr <= 0.1].max()  # resolvable: measured as before
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 1/30 is resolvable by 30 negatives: no warning
        assert not math.isnan(verification_metrics(scores, same, fars=(1 / 30,))[
            f"tar_at_far_{1 / 30:g}"])


def test_threshold_calibrator_warns_below_one_over_the_negatives():
    scores = np.linspace(0, 1, 40)
    same = np.arange(40) >= 10  # 10 negative pairs
    with pytest.warns(UserWarning, match="cannot resolve target_far=0.01.*10 different"):
        ThresholdCalibrator(0.01).fit(scores, same)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ThresholdCalibrator(0.1).fit(scores, same)


def test_verifier_reports_no_interval_around_an_unmeasured_tar():
    from dmlkit.apps import Verifier

    x, y = blobs(n_classes=4, per_class=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        v = Verifier(metric="euclidean", n_bootstrap=20, fars=(0.5, 1e-6)).fit(x, y)
        out = v.evaluate(x, y)
    assert math.isnan(out["tar_at_far_1e-06"]) and out["ci95"]["tar_at_far_1e-06"] is None
    assert out["ci95"]["tar_at_far_0.5"] is not None


# -- settings that were silently NaN, "skipped" or trivially 1.0 -----------------------

def test_negative_seed_and_too_few_folds_are_refused():
    rng = np.random.default_rng(0)
    scores, same = rng.normal(size=40), np.arange(40) % 3 == 0
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        verification_metrics(scores, same, seed=-1)
    with pytest.raises(ValueError, match="n_folds must be an integer >= 2"):
        verification_metrics(scores, same, n_folds=1)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        kfold_accuracy(scores, same, seed=-1)
    x, y = blobs()
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        few_shot_accuracy(x, y, seed=-1)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        evaluate_embeddings(x, y, seed=-1, sections=("clustering",))


def test_bad_few_shot_settings_raise_and_too_little_data_is_skipped():
    x, y = blobs()
    with pytest.raises(ValueError, match="n_way must be an integer >= 2"):
        few_shot_accuracy(x, y, n_way=1, episodes=3)
    with pytest.raises(ValueError, match="few_shot settings"):
        evaluate_embeddings(x, y, sections=("few_shot",), few_shot=((5, 0),))
    out = evaluate_embeddings(x, y, sections=("few_shot",), few_shot=((20, 1),), episodes=3)
    assert "20-way episodes need 20" in out["few_shot"]["20way_1shot"]["skipped"]


def test_few_shot_interval_uses_the_sample_std_and_is_nan_for_one_episode():
    x, y = blobs(n_classes=8, per_class=10)
    got = few_shot_accuracy(x, y, n_way=5, k_shot=1, n_query=3, episodes=2, seed=1)
    rng = np.random.default_rng(1)
    from dmlkit.evaluation.few_shot import sample_episode

    accs = []
    for _ in range(2):
        sup, qry = sample_episode(y, 5, 1, 3, rng, np.unique(y))
        d = ((x[qry.reshape(-1)][:, None] - x[sup[:, 0]][None]) ** 2).sum(-1)
        accs.append(float((d.argmin(1) == np.repeat(np.arange(5), 3)).mean()))
    assert got["accuracy"] == pytest.approx(np.mean(accs))
    assert got["ci95"] == pytest.approx(1.96 * np.std(accs, ddof=1) / math.sqrt(2))
    one = few_shot_accuracy(x, y, n_way=5, k_shot=1, n_query=3, episodes=1, seed=1)
    assert math.isnan(one["ci95"])


def test_metric_name_is_canonical_and_cosine_clusters_on_directions():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    directions = rng.normal(size=(3, 4))
    x = directions[y] * rng.uniform(0.1, 10.0, size=(90, 1)) + 0.05 * rng.normal(size=(90, 4))
    upper = evaluate_embeddings(x, y, metric="COSINE", sections=("clustering",))
    lower = evaluate_embeddings(x, y, metric="cosine", sections=("clustering",))
    assert upper["metric"] == "cosine"
    assert upper["clustering"] == lower["clustering"]


@pytest.mark.parametrize("k", [[1.5], "12", 2.0, True, [0], [], {"a": 1}])
def test_retrieval_k_must_be_integers(k):
    x, y = blobs()
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        retrieval_metrics(x, y, k=k)


def test_retrieval_k_takes_numpy_integers():
    x, y = blobs()
    one = retrieval_metrics(x, y, k=np.int64(3))
    assert one["recall_at_3"] == retrieval_metrics(x, y, k=3)["recall_at_3"]
    many = retrieval_metrics(x, y, k=np.array([1, 3]))
    assert many["recall_at_3"] == one["recall_at_3"]


# -- degenerate inputs -----------------------------------------------------------------

def test_embeddings_without_dimensions_are_refused():
    y = np.arange(10) % 2
    empty = np.zeros((10, 0), np.float32)
    with pytest.raises(ValueError, match=r"d >= 1"):
        retrieval_metrics(empty, y)
    with pytest.raises(ValueError, match=r"d >= 1"):
        retrieval_metrics(np.ones((10, 2), np.float32), y, empty, y)
    with pytest.raises(ValueError, match=r"d >= 1"):
        indexed_pair_scores(empty, np.array([0]), np.array([1]))
    with pytest.raises(ValueError, match=r"d >= 1"):
        pair_scores(empty, empty)
    for section in ("retrieval", "clustering", "verification", "few_shot"):
        with pytest.raises(ValueError, match=r"d >= 1"):
            evaluate_embeddings(empty, y, sections=(section,))


def test_nan_embeddings_get_dmlkit_s_error_before_k_means():
    x, y = blobs()
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"embeddings holds NaN or infinite values in 1 of "
                                         r"72 rows \(row 3\)"):
        evaluate_embeddings(x, y, sections=("clustering",))


@pytest.mark.parametrize("labels, what", [(np.zeros(12, int), "one class"),
                                          (np.arange(12), "occurs once")])
def test_trivial_clustering_warns(labels, what):
    x = np.random.default_rng(0).normal(size=(12, 3))
    with pytest.warns(UserWarning, match=f"clustering metrics are trivial.*{what}"):
        evaluate_embeddings(x, labels, sections=("clustering",))


def test_verifier_says_identities_need_two_items():
    from dmlkit.apps import Verifier

    x = np.random.default_rng(0).normal(size=(8, 3))
    with pytest.raises(ValueError, match="at least 2 items") as err:
        Verifier(metric="euclidean").fit(x, np.arange(8))
    assert "max_pairs" not in str(err.value)
