"""Re-identification protocol and open-set rates, against hand-computed values."""

import numpy as np
import pytest

from dmlkit.apps.identification_metrics import (
    dir_at_far,
    far_threshold,
    open_set_roc,
    reid_metrics,
)

# 1-d embeddings: similarity under "dot" with a query at +1 is the gallery value itself,
# so the ranking is the gallery sorted by value, descending.
GALLERY = np.array([[0.9], [0.8], [0.7], [0.6], [0.5], [0.4]])
G_IDS = np.array([1, 2, 1, 3, 1, 2])
G_CAMS = np.array([0, 1, 1, 0, 2, 0])


def test_market_protocol_hand_computed():
    # query 0: identity 1, camera 0 -> item 0 (id 1, cam 0) is excluded.
    #   kept ranking: ids [2, 1, 3, 1, 2] -> matches at ranks 2 and 4
    #   CMC first hit at rank 2; AP = (1/2 + 2/4) / 2 = 0.5
    # query 1: identity 2, camera 1 -> item 1 (id 2, cam 1) is excluded.
    #   kept ranking: ids [1, 1, 3, 1, 2] -> match at rank 5; AP = 1/5
    # query 2: identity 3, camera 0 -> item 3 excluded, no match left: skipped.
    q = np.array([[1.0], [1.0], [1.0]])
    out = reid_metrics(q, GALLERY, [1, 2, 3], G_IDS, [0, 1, 0], G_CAMS, metric="dot",
                       max_rank=5)
    assert out["num_queries"] == 2 and out["num_skipped"] == 1
    np.testing.assert_allclose(out["cmc"], [0.0, 0.5, 0.5, 0.5, 1.0])
    assert out["rank1"] == 0.0 and out["rank5"] == 1.0
    assert out["map"] == pytest.approx((0.5 + 0.2) / 2)


def test_without_cameras_nothing_is_excluded():
    # query identity 1: ranking ids [1, 2, 1, 3, 1, 2] -> hits at 1, 3, 5
    # AP = (1/1 + 2/3 + 3/5) / 3
    out = reid_metrics(np.array([[1.0]]), GALLERY, [1], G_IDS, metric="dot", max_rank=3)
    assert out["cmc"] == [1.0, 1.0, 1.0]
    assert out["map"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_multi_shot_pools_a_group():
    # two query items of identity 1, camera 0, at +1 and -1 (dot):
    # "mean" pools them to 0: all scores tie at 0, the stable order is gallery order
    #   kept ids [2, 1, 3, 1, 2] (item 0 excluded) -> hits at 2, 4: AP 0.5
    # "max" takes max(g, -g) = |g| per item: the same order as the values -> AP 0.5,
    # but queries at +1 and +0.5 ("mean" 0.75) keep the one-query ranking.
    q = np.array([[1.0], [-1.0]])
    for mode in ("mean", "max"):
        out = reid_metrics(q, GALLERY, [1, 1], G_IDS, [0, 0], G_CAMS, metric="dot",
                           multi_shot=mode, max_rank=5)
        assert out["num_queries"] == 1
        assert out["map"] == pytest.approx(0.5)
    # a negative gallery value makes "max" and "mean" differ:
    g = np.array([[0.5], [-0.9], [0.1]])
    out_max = reid_metrics(q, g, [7, 7], [8, 7, 8], metric="dot", multi_shot="max", max_rank=3)
    out_mean = reid_metrics(q, g, [7, 7], [8, 7, 8], metric="dot", multi_shot="mean",
                            max_rank=3)
    assert out_max["rank1"] == 1.0  # |-0.9| is the best score
    assert out_mean["cmc"] == [0.0, 1.0, 1.0]  # all tie at 0: gallery order, match 2nd


def test_euclidean_and_cosine_rank_like_a_loop():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(7, 4)), rng.normal(size=(30, 4))
    qid, gid = rng.integers(0, 3, 7), rng.integers(0, 3, 30)
    for metric in ("euclidean", "cosine"):
        aps, firsts = [], []
        for i in range(7):
            if metric == "euclidean":
                key = ((g - q[i]) ** 2).sum(1)
            else:
                key = -(g @ q[i]) / np.linalg.norm(g, axis=1) / np.linalg.norm(q[i])
            m = gid[np.argsort(key, kind="stable")] == qid[i]
            hits = np.flatnonzero(m)
            firsts.append(hits[0])
            aps.append(np.mean([(r + 1) / (h + 1) for r, h in enumerate(hits)]))
        out = reid_metrics(q, g, qid, gid, metric=metric, max_rank=30, chunk=3)
        assert out["map"] == pytest.approx(np.mean(aps))
        assert out["rank1"] == pytest.approx(np.mean(np.array(firsts) == 0))


def test_reid_bad_input():
    with pytest.raises(ValueError, match="one d"):
        reid_metrics(np.zeros((2, 3)), np.zeros((4, 2)), [0, 1], [0, 1, 0, 1])
    with pytest.raises(ValueError, match="non-empty"):
        reid_metrics(np.zeros((2, 3)), np.zeros((0, 3)), [0, 1], [])
    with pytest.raises(ValueError, match="NaN"):
        reid_metrics(np.full((1, 2), np.nan), np.zeros((2, 2)), [0], [0, 1])
    with pytest.raises(ValueError, match="both"):
        reid_metrics(np.zeros((1, 2)), np.zeros((2, 2)), [0], [0, 1], query_cams=[0])
    with pytest.raises(ValueError, match="no query"):
        reid_metrics(np.zeros((1, 2)), np.zeros((2, 2)), [5], [0, 1])


def test_far_threshold_and_dir():
    unknown = np.array([0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.05])
    # FAR 0.1 of 10 impostors: one may pass -> just above the 2nd highest (0.8)
    t = far_threshold(unknown, 0.1)
    assert 0.8 < t < 0.9 and (unknown >= t).mean() == pytest.approx(0.1)
    assert far_threshold(unknown, 0.05) > 0.9  # none may pass
    known = np.array([0.95, 0.85, 0.82, 0.5])
    correct = np.array([True, True, False, True])
    out = dir_at_far(known, correct, unknown, [0.1, 0.3])
    assert out["dir_at_far_0.1"] == pytest.approx(0.5)  # 0.95 and 0.85 (0.82 is wrong)
    assert out["dir_at_far_0.3"] == pytest.approx(0.5)  # t just above 0.6
    roc = open_set_roc(known, correct, unknown)
    assert roc["far"][0] == 0.0 and roc["dir"][0] == 0.0  # threshold +inf
    assert roc["far"][-1] == 1.0 and roc["dir"][-1] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="far must be"):
        far_threshold(unknown, 1.5)
    with pytest.raises(ValueError, match="at least one"):
        far_threshold([], 0.1)


def test_rank_k_does_not_depend_on_max_rank_and_max_rank_is_checked():
    rng = np.random.default_rng(0)
    g, gid = rng.normal(size=(40, 3)), np.repeat(np.arange(10), 4)
    q, qid = g[::4] + rng.normal(size=(10, 3)), np.arange(10)
    full = reid_metrics(q, g, qid, gid, max_rank=20)
    short = reid_metrics(q, g, qid, gid, max_rank=1)
    for key in ("rank1", "rank5", "rank10", "map"):
        assert short[key] == full[key]
    assert short["cmc"] == full["cmc"][:1]
    with pytest.raises(ValueError, match="max_rank"):
        reid_metrics(q, g, qid, gid, max_rank=0)
