"""Verification, clustering and few-shot metrics against loop references and sklearn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError
from sklearn.metrics import normalized_mutual_info_score, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from dmlkit.evaluation import (
    ThresholdCalibrator,
    clustering_metrics,
    evaluate_embeddings,
    few_shot_accuracy,
    kmeans_labels,
    pair_scores,
    pairs_from_labels,
    verification_metrics,
)
from dmlkit.functional.labels import same_label
from dmlkit.functional.verification import (
    auc,
    best_accuracy_threshold,
    equal_error_rate,
    kfold_accuracy,
    roc_curve,
    tar_at_far,
)


def scored_pairs(n=600, seed=0, ties=True):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    s = rng.normal(size=n) + 1.2 * y
    return (np.round(s, 1) if ties else s), y  # rounding makes many tied scores


def naive_rates(s, y, t):
    acc = [si >= t for si in s]
    tp = sum(a and yi for a, yi in zip(acc, y, strict=True))
    fp = sum(a and not yi for a, yi in zip(acc, y, strict=True))
    return fp / sum(not v for v in y), tp / sum(y)


def test_roc_and_auc_match_sklearn_and_loops():
    s, y = scored_pairs()
    fpr, tpr, thr = roc_curve(s, y)
    sk_fpr, sk_tpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    assert np.allclose(fpr, sk_fpr) and np.allclose(tpr, sk_tpr)
    assert auc(fpr, tpr) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    for i in (1, len(thr) // 2, len(thr) - 1):
        assert (fpr[i], tpr[i]) == pytest.approx(naive_rates(s, y, thr[i]))


def test_tar_at_far_and_eer_against_loops():
    s, y = scored_pairs(ties=False)
    fpr, tpr, thr = roc_curve(s, y)
    for far in (0.1, 0.01, 1e-3):
        best = max(naive_rates(s, y, t)[1] for t in np.r_[np.inf, s]
                   if naive_rates(s, y, t)[0] <= far)
        assert tar_at_far(fpr, tpr, far) == pytest.approx(best)
    eer, t = equal_error_rate(fpr, tpr, thr)
    far_t, tar_t = naive_rates(s, y, t)
    assert abs(far_t - (1 - tar_t)) <= 2.0 / min(y.sum(), (~y).sum())  # within one step
    assert eer == pytest.approx((far_t + 1 - tar_t) / 2, abs=2.0 / y.size)


def test_best_threshold_and_kfold_against_loops():
    s, y = scored_pairs()
    t, acc = best_accuracy_threshold(s, y)
    loop_best = max(np.mean((s >= c) == y) for c in np.r_[np.inf, np.unique(s)])
    assert acc == pytest.approx(loop_best) and np.mean((s >= t) == y) == pytest.approx(acc)
    cv = kfold_accuracy(s, y, n_folds=5, seed=3)
    order = np.random.default_rng(3).permutation(s.size)
    accs = []
    for fold in np.array_split(order, 5):  # loop reference of the LFW protocol
        train = np.setdiff1d(np.arange(s.size), fold)
        cands = np.r_[np.inf, np.unique(s[train])[::-1]]  # highest threshold first
        scores = [np.mean((s[train] >= c) == y[train]) for c in cands]
        i = int(np.argmax(scores))  # ties: the highest threshold, midway to the next score
        c = cands[1] + 1 if i == 0 else (
            cands[i] - 1 if i == len(cands) - 1 else (cands[i] + cands[i + 1]) / 2)
        accs.append(np.mean((s[fold] >= c) == y[fold]))
    assert cv["accuracy_mean"] == pytest.approx(np.mean(accs))
    assert cv["accuracy_std"] == pytest.approx(np.std(accs))
    metrics = verification_metrics(s, y, n_folds=5, seed=3)
    assert metrics["accuracy_mean"] == pytest.approx(np.mean(accs))
    assert metrics["auc"] == pytest.approx(roc_auc_score(y, s))


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(("p_target", "c_miss", "c_fa"), [(0.01, 1.0, 1.0), (0.05, 10.0, 1.0)])
def test_verification_metrics_min_dcf_against_threshold_loop(ties, p_target, c_miss, c_fa):
    s, y = scored_pairs(600, ties=ties)
    kw = {} if (p_target, c_miss, c_fa) == (0.01, 1.0, 1.0) else {
        "p_target": p_target, "c_miss": c_miss, "c_fa": c_fa}
    metrics = verification_metrics(s, y, n_folds=2, **kw)
    best = math.inf
    for t in [math.inf, *sorted(set(s.tolist()))]:  # accept score >= t
        p_miss = float(np.mean(s[y] < t))
        p_fa = float(np.mean(s[~y] >= t))
        cost = c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target)
        best = min(best, cost / min(c_miss * p_target, c_fa * (1 - p_target)))
    assert metrics["min_dcf"] == pytest.approx(best, abs=1e-12)
    t = metrics["min_dcf_threshold"]
    at_t = c_miss * np.mean(s[y] < t) * p_target + c_fa * np.mean(s[~y] >= t) * (1 - p_target)
    assert at_t / min(c_miss * p_target, c_fa * (1 - p_target)) == pytest.approx(best)
    assert 0.0 <= metrics["min_dcf"] <= 1.0
    # rejecting every pair is the cheapest: the threshold is still a finite number (JSON)
    same = np.arange(10) < 4  # the same pairs score lowest
    chance = verification_metrics(np.arange(10.0), same, n_folds=2)
    assert chance["min_dcf"] == pytest.approx(1.0) and np.isfinite(chance["min_dcf_threshold"])
    assert chance["min_dcf_threshold"] > 9.0  # accepts nothing


def test_threshold_calibrator_contract():
    s, y = scored_pairs(2000, ties=False)
    cal = ThresholdCalibrator(target_far=0.05)
    with pytest.raises(NotFittedError):
        cal.predict(s)
    assert cal.fit(s, y) is cal
    pred = cal.predict(s)
    far = pred[~y].mean()
    assert far <= 0.05 and far == pytest.approx(cal.far_) and pred[y].mean() == pytest.approx(
        cal.tar_)
    # the lowest such threshold: accepting one more distinct score would break the target
    next_lower = np.max(s[s < cal.threshold_])
    assert ((s >= next_lower) & ~y).mean() / (~y).mean() > 0.05
    assert cal.get_params() == {"target_far": 0.05}
    with pytest.raises(ValueError, match="target_far"):
        ThresholdCalibrator(target_far=1.5).fit(s, y)
    with pytest.raises(ValueError, match="both"):
        cal.fit(s, np.ones_like(y))


def test_pairs_and_scores():
    labels = torch.tensor([0, 1, 0, 2, 1])
    i, j, same = pairs_from_labels(labels, max_pairs=None)
    assert len(i) == 10 and (i < j).all()
    assert (same == same_label(labels)[i, j].numpy()).all()
    i, j, same = pairs_from_labels(torch.arange(300) % 7, max_pairs=500, seed=1)
    assert len(set(zip(i.tolist(), j.tolist(), strict=True))) == 500 and (i < j).all()
    multi = torch.rand(30, 4, generator=torch.Generator().manual_seed(0)) < 0.4
    i, j, same = pairs_from_labels(multi, max_pairs=None)
    assert (same == same_label(multi)[i, j].numpy()).all()
    a, b = np.random.default_rng(0).normal(size=(2, 5, 3))
    cos = [x @ z / np.linalg.norm(x) / np.linalg.norm(z) for x, z in zip(a, b, strict=True)]
    assert np.allclose(pair_scores(a, b, "cosine"), cos)
    assert np.allclose(pair_scores(a, b, "euclidean"), -np.linalg.norm(a - b, axis=1))


def test_clustering_matches_sklearn_nmi():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 30)
    x = rng.normal(size=(120, 5)) + 4 * np.eye(5)[y]
    got = clustering_metrics(x, y, seed=0)
    pred = kmeans_labels(x, 4, seed=0)
    assert got["nmi"] == pytest.approx(normalized_mutual_info_score(y, pred))
    # loop reference of NMI (arithmetic normalization)
    n = y.size
    joint = {(a, b): np.sum((y == a) & (pred == b)) / n for a in set(y) for b in set(pred)}
    py = {a: np.mean(y == a) for a in set(y)}
    pp = {b: np.mean(pred == b) for b in set(pred)}
    mi = sum(p * math.log(p / (py[a] * pp[b])) for (a, b), p in joint.items() if p > 0)
    h = lambda d: -sum(p * math.log(p) for p in d.values())  # noqa: E731
    assert got["nmi"] == pytest.approx(mi / ((h(py) + h(pp)) / 2))
    assert got == clustering_metrics(x, y, seed=0)  # seeded


def test_few_shot_against_loop_and_seeded():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(8), 12)
    x = rng.normal(size=(96, 4)) + 1.5 * rng.normal(size=(8, 4))[y]
    got = few_shot_accuracy(x, y, n_way=3, k_shot=2, n_query=5, episodes=40, seed=7)
    assert got == few_shot_accuracy(x, y, n_way=3, k_shot=2, n_query=5, episodes=40, seed=7)
    from dmlkit.evaluation.few_shot import sample_episode

    r = np.random.default_rng(7)
    accs = []
    for _ in range(40):
        sup, qry = sample_episode(y, 3, 2, 5, r, np.unique(y))
        protos = [x[s].mean(axis=0) for s in sup]
        correct = 0
        for c, qs in enumerate(qry):
            for q in qs:
                d = [np.sum((x[q] - p) ** 2) for p in protos]
                correct += int(np.argmin(d) == c)
        accs.append(correct / 15)
    assert got["accuracy"] == pytest.approx(np.mean(accs))
    assert got["ci95"] == pytest.approx(1.96 * np.std(accs, ddof=1) / math.sqrt(40))
    with pytest.raises(ValueError, match="classes"):
        few_shot_accuracy(x, y, n_way=9, k_shot=1, n_query=5)


def test_evaluate_embeddings_writes_json(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), 20)
    x = (rng.normal(size=(120, 4)) + 3 * rng.normal(size=(6, 4))[y]).astype(np.float32)
    out = tmp_path / "e.json"
    res = evaluate_embeddings(x, y, out=out, episodes=20, n_folds=5)
    import json

    saved = json.loads(out.read_text())
    assert saved["retrieval"]["map_at_r"] == pytest.approx(res["retrieval"]["map_at_r"])
    assert set(saved) >= {"retrieval", "clustering", "verification", "few_shot"}
    assert 0 <= saved["verification"]["auc"] <= 1 and saved["few_shot"]["5way_1shot"]["accuracy"]
    with pytest.raises(ValueError, match="sections"):
        evaluate_embeddings(x, y, sections=["nope"])
