"""Batch easy/hard, pair-margin, multi-similarity, distance-weighted and quadruplet miners
against naive fp64 loops and pytorch-metric-learning."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from dmlkit.distances import CosineSimilarity, EuclideanDistance
from dmlkit.functional import Pairs, Quadruplets, Triplets
from dmlkit.miners import (
    BatchEasyHardMiner,
    DistanceWeightedMiner,
    MultiSimilarityMiner,
    PairMarginMiner,
    QuadrupletMiner,
)

pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
pml_dist = pytest.importorskip("pytorch_metric_learning.distances")

STRATEGIES = ["easy", "semihard", "hard", "all"]
VALID_COMBOS = [
    (p, n)
    for p in STRATEGIES
    for n in STRATEGIES
    if not (p == n == "semihard") and {p, n} != {"semihard", "all"}
]


def data(n=20, d=6, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def unit_rows(x):
    return [[float(v) / math.sqrt(sum(float(u) ** 2 for u in row)) for v in row] for row in x]


def l2(a, b):
    return math.sqrt(sum((u - v) ** 2 for u, v in zip(a, b, strict=True)))


def cos(a, b):
    return sum(u * v for u, v in zip(a, b, strict=True))


def ours_distance(sim):
    return CosineSimilarity() if sim else EuclideanDistance()


def pml_distance(sim):
    return pml_dist.CosineSimilarity() if sim else pml_dist.LpDistance()


def as_list(t):
    return list(zip(*(v.tolist() for v in t), strict=True))


def pair_sets(pairs):
    a1, p, a2, n = (v.tolist() for v in pairs)
    return sorted(zip(a1, p, strict=True)), sorted(zip(a2, n, strict=True))


def candidates(y, ry, same_set):
    """Naive positive / negative lists per anchor."""
    pos = [
        [j for j in range(len(ry)) if y[i] == ry[j] and not (same_set and i == j)]
        for i in range(len(y))
    ]
    neg = [[j for j in range(len(ry)) if y[i] != ry[j]] for i in range(len(y))]
    return pos, neg


# -- batch easy/hard ---------------------------------------------------------------------


def naive_easy_hard(x, y, pos_s, neg_s, sim, pos_range=None, neg_range=None):
    e = unit_rows(x)
    m = cos if sim else l2
    far = (lambda v: -v) if sim else (lambda v: v)  # larger = farther
    pos, neg = candidates(y, y, True)

    def in_range(v, r):
        return r is None or r[0] <= v <= r[1]

    def pick_pos(i, thr=None):
        c = [j for j in pos[i] if in_range(m(e[i], e[j]), pos_range)]
        if thr is not None:
            c = [j for j in c if far(m(e[i], e[j])) < thr]
        if not c:
            return None
        key = lambda j: far(m(e[i], e[j]))  # noqa: E731
        return min(c, key=key) if pos_s == "easy" else max(c, key=key)

    def pick_neg(i, thr=None):
        c = [j for j in neg[i] if in_range(m(e[i], e[j]), neg_range)]
        if thr is not None:
            c = [j for j in c if far(m(e[i], e[j])) > thr]
        if not c:
            return None
        key = lambda j: far(m(e[i], e[j]))  # noqa: E731
        return max(c, key=key) if neg_s == "easy" else min(c, key=key)

    a1p, a2n = [], []
    for i in range(len(e)):
        if pos_s == "all":
            a1p += [(i, j) for j in pos[i]]
        if neg_s == "all":
            a2n += [(i, j) for j in neg[i]]
        if pos_s == "semihard":
            q = pick_neg(i)
            p = pick_pos(i, far(m(e[i], e[q]))) if q is not None else None
        elif neg_s == "semihard":
            p = pick_pos(i)
            q = pick_neg(i, far(m(e[i], e[p]))) if p is not None else None
        else:
            p = pick_pos(i) if pos_s != "all" else None
            q = pick_neg(i) if neg_s != "all" else None
        if pos_s != "all" and neg_s != "all":
            if p is not None and q is not None:
                a1p.append((i, p))
                a2n.append((i, q))
        elif pos_s != "all" and p is not None:
            a1p.append((i, p))
        elif neg_s != "all" and q is not None:
            a2n.append((i, q))
    return sorted(a1p), sorted(a2n)


@pytest.mark.parametrize("pos_s,neg_s", VALID_COMBOS)
@pytest.mark.parametrize("sim", [False, True])
def test_batch_easy_hard_naive_and_pml(pos_s, neg_s, sim):
    x, y = data(seed=1)
    got = BatchEasyHardMiner(pos_s, neg_s, distance=ours_distance(sim))(x, y)
    assert isinstance(got, Pairs)
    assert pair_sets(got) == naive_easy_hard(x, y, pos_s, neg_s, sim)
    theirs = pml_miners.BatchEasyHardMiner(pos_s, neg_s, distance=pml_distance(sim))(x, y)
    assert pair_sets(got) == pair_sets(theirs)


@pytest.mark.parametrize("sim", [False, True])
def test_batch_easy_hard_ranges(sim):
    x, y = data(seed=2)
    pr, nr = ((-0.2, 0.9), (-0.5, 0.5)) if sim else ((0.3, 1.3), (0.6, 1.6))
    for pos_s, neg_s in [("hard", "hard"), ("easy", "semihard"), ("semihard", "easy")]:
        miner = BatchEasyHardMiner(pos_s, neg_s, pr, nr, distance=ours_distance(sim))
        got = pair_sets(miner(x, y))
        assert got == naive_easy_hard(x, y, pos_s, neg_s, sim, pr, nr)
        theirs = pml_miners.BatchEasyHardMiner(
            pos_s, neg_s, allowed_pos_range=pr, allowed_neg_range=nr, distance=pml_distance(sim)
        )(x, y)
        assert got == pair_sets(theirs)


def test_batch_easy_hard_rejects_bad_strategies():
    with pytest.raises(ValueError, match="medium"):
        BatchEasyHardMiner("medium")
    with pytest.raises(ValueError, match="semihard"):
        BatchEasyHardMiner("semihard", "semihard")
    with pytest.raises(ValueError, match="all"):
        BatchEasyHardMiner("semihard", "all")
    with pytest.raises(ValueError, match="allowed_pos_range"):
        BatchEasyHardMiner(allowed_pos_range=(1.0, 0.0))


# -- pair margin -------------------------------------------------------------------------


@pytest.mark.parametrize("sim", [False, True])
def test_pair_margin_naive_and_pml(sim):
    x, y = data(seed=3)
    pm, nm = (0.6, 0.2) if sim else (0.8, 1.2)
    got = PairMarginMiner(pm, nm, distance=ours_distance(sim))(x, y)
    e = unit_rows(x)
    m = cos if sim else l2
    pos, neg = candidates(y, y, True)
    exp_p = [
        (i, j)
        for i in range(len(e))
        for j in pos[i]
        if (m(e[i], e[j]) < pm if sim else m(e[i], e[j]) > pm)
    ]
    exp_n = [
        (i, j)
        for i in range(len(e))
        for j in neg[i]
        if (m(e[i], e[j]) > nm if sim else m(e[i], e[j]) < nm)
    ]
    # row-major order, as PML
    assert list(zip(got.a1.tolist(), got.p.tolist(), strict=True)) == exp_p
    assert list(zip(got.a2.tolist(), got.n.tolist(), strict=True)) == exp_n
    theirs = pml_miners.PairMarginMiner(pm, nm, distance=pml_distance(sim))(x, y)
    assert all(torch.equal(u, v) for u, v in zip(got, theirs, strict=True))


# -- multi-similarity --------------------------------------------------------------------


@pytest.mark.parametrize("sim", [True, False])
@pytest.mark.parametrize("epsilon", [0.1, 0.4])
def test_multi_similarity_naive_and_pml(sim, epsilon):
    x, y = data(seed=4)
    got = MultiSimilarityMiner(epsilon, distance=ours_distance(sim))(x, y)
    e = unit_rows(x)
    m = cos if sim else l2
    pos, neg = candidates(y, y, True)
    exp_p, exp_n = [], []
    for i in range(len(e)):
        if not pos[i] or not neg[i]:
            continue
        sp = [m(e[i], e[j]) for j in pos[i]]
        sn = [m(e[i], e[j]) for j in neg[i]]
        for j, v in zip(pos[i], sp, strict=True):
            if (v - epsilon < max(sn)) if sim else (v + epsilon > min(sn)):
                exp_p.append((i, j))
        for j, v in zip(neg[i], sn, strict=True):
            if (v + epsilon > min(sp)) if sim else (v - epsilon < max(sp)):
                exp_n.append((i, j))
    assert pair_sets(got) == (sorted(exp_p), sorted(exp_n))
    assert len(exp_p) > 0 and len(exp_n) > 0
    theirs = pml_miners.MultiSimilarityMiner(epsilon, distance=pml_distance(sim))(x, y)
    assert pair_sets(got) == pair_sets(theirs)


def test_multi_similarity_default_is_cosine_like_pml():
    x, y = data(seed=5)
    assert pair_sets(MultiSimilarityMiner()(x, y)) == pair_sets(
        pml_miners.MultiSimilarityMiner()(x, y)
    )


# -- reference sets and chunking ---------------------------------------------------------

PAIR_MINERS = [
    (
        lambda: BatchEasyHardMiner("hard", "semihard"),
        lambda: pml_miners.BatchEasyHardMiner("hard", "semihard"),
    ),
    (lambda: PairMarginMiner(), lambda: pml_miners.PairMarginMiner()),
    (lambda: MultiSimilarityMiner(), lambda: pml_miners.MultiSimilarityMiner()),
]


@pytest.mark.parametrize("ours,theirs", PAIR_MINERS)
def test_pair_miners_with_reference_set(ours, theirs):
    x, y = data(n=10, seed=6)
    r, ry = data(n=14, seed=7)
    assert pair_sets(ours()(x, y, r, ry)) == pair_sets(theirs()(x, y, r, ry))


ALL_MINERS = [
    lambda: BatchEasyHardMiner("easy", "semihard"),
    lambda: BatchEasyHardMiner("all", "hard"),
    lambda: PairMarginMiner(),
    lambda: MultiSimilarityMiner(),
    lambda: QuadrupletMiner(),
    lambda: DistanceWeightedMiner(seed=3),
]


@pytest.mark.parametrize("make", ALL_MINERS)
def test_chunked_equals_unchunked(make, monkeypatch):
    import dmlkit.miners.base as base

    x, y = data(n=30, seed=8)
    full = make()(x, y)
    monkeypatch.setattr(base, "chunk_size_for", lambda n, e, budget=0: 4)
    small = make()(x, y)
    if isinstance(full, Triplets):  # random draws: compare the triplets per anchor
        assert Counter(full.anchor.tolist()) == Counter(small.anchor.tolist())
    elif isinstance(full, Pairs):
        assert pair_sets(full) == pair_sets(small) and len(full.a1) > 0
    else:
        assert as_list(full) == as_list(small) and len(full.anchor) > 0


# -- quadruplets -------------------------------------------------------------------------


def naive_quadruplets(x, y, rx, ry, same_set, kind="hardest", margin=0.2, margin2=0.1):
    e, r = unit_rows(x), unit_rows(rx)
    pos, neg = candidates(y, ry, same_set)
    out = []
    for i in range(len(e)):
        if not pos[i] or not neg[i]:
            continue
        p = max(pos[i], key=lambda j: l2(e[i], r[j]))
        q = min(neg[i], key=lambda j: l2(e[i], r[j]))
        cand = [j for j in range(len(r)) if ry[j] != y[i] and ry[j] != ry[q]]
        if not cand:
            continue
        q2 = min(cand, key=lambda j: l2(r[q], r[j]))
        d_ap, d_an, d_nn = l2(e[i], r[p]), l2(e[i], r[q]), l2(r[q], r[q2])
        if kind == "violating" and not (d_ap - d_an + margin > 0 or d_ap - d_nn + margin2 > 0):
            continue
        out.append((i, p, q, q2))
    return out


@pytest.mark.parametrize("kind", ["hardest", "violating"])
def test_quadruplet_miner_naive(kind):
    x, y = data(n=24, seed=9)
    got = QuadrupletMiner(kind, margin=-1.0, margin2=-1.0)(x, y)
    assert isinstance(got, Quadruplets)
    expected = naive_quadruplets(x, y, x, y, True, kind, -1.0, -1.0)
    assert as_list(got) == expected and len(expected) > 0
    if kind == "violating":
        assert len(expected) < len(naive_quadruplets(x, y, x, y, True))
    a, p, n, n2 = got
    assert (y[a] == y[p]).all() and (a != p).all()
    assert (y[n] != y[a]).all() and (y[n2] != y[a]).all() and (y[n2] != y[n]).all()


def test_quadruplet_miner_reference_set_and_two_classes():
    x, y = data(n=8, seed=10)
    r, ry = data(n=12, seed=11)
    assert as_list(QuadrupletMiner()(x, y, r, ry)) == naive_quadruplets(x, y, r, ry, False)
    # with two classes there is no second negative class
    assert QuadrupletMiner()(x, torch.arange(8) % 2).anchor.numel() == 0


# -- distance-weighted -------------------------------------------------------------------


def naive_dw_probs(x, y, cutoff=0.5, nonzero_loss_cutoff=1.4):
    """Negative-sampling probabilities per anchor, from the paper's formula (fp64)."""
    e = unit_rows(x)
    k = len(e[0])
    probs = {}
    for i in range(len(e)):
        w = {}
        for j in range(len(e)):
            if y[j] == y[i]:
                continue
            d = max(l2(e[i], e[j]), cutoff)
            if d >= nonzero_loss_cutoff or d >= 2.0:
                continue
            w[j] = d ** (2.0 - k) * (1.0 - 0.25 * d * d) ** (-(k - 3.0) / 2.0)
        total = sum(w.values())
        if total > 0:
            probs[i] = {j: v / total for j, v in w.items()}
    return probs


def empirical(triplets, n):
    """Per-anchor counts of sampled negatives, folding a batch tiled from ``n`` items."""
    a, _, q = (t % n for t in triplets)
    counts = torch.bincount(a * n + q, minlength=n * n).view(n, n).double()  # (n, n)
    return counts / counts.sum(dim=1, keepdim=True).clamp_min(1)


def max_tv(freq, probs):
    """Largest total-variation distance between sampled and exact negative distributions."""
    n = freq.shape[0]
    exact = torch.zeros(n, n, dtype=torch.float64)
    for a, p in probs.items():
        for j, v in p.items():
            exact[a, j] = v
    rows = list(probs)
    return float(0.5 * (freq[rows] - exact[rows]).abs().sum(dim=1).max())


def test_distance_weighted_distribution_matches_formula_and_pml():
    x, y = data(n=16, d=5, classes=3, seed=12)
    probs = naive_dw_probs(x, y)
    # each anchor gets as many triplets as its class has members, positives are valid
    once = DistanceWeightedMiner(seed=0)(x, y)
    class_size = Counter(y.tolist())
    per_anchor = Counter(once.anchor.tolist())
    assert per_anchor == {a: class_size[int(y[a])] for a in probs}
    a, p, q = once
    assert (y[a] == y[p]).all() and (a != p).all() and (y[a] != y[q]).all()
    # a batch of 16 copies draws ~1000 negatives per original anchor in one call; copies
    # of a point share its weight, so folded frequencies follow the untiled probabilities
    xt, yt = x.repeat(16, 1), y.repeat(16)
    ours = DistanceWeightedMiner(seed=0)(xt, yt)
    assert max_tv(empirical(ours, 16), probs) < 0.1
    # positives are uniform over the anchor's class members
    pos_counts = torch.bincount(ours.positive[ours.anchor % 16 == 0] % 16, minlength=16)
    members = pos_counts[y == y[0]].double()
    assert members.max() / members.min() < 1.3
    torch.manual_seed(0)  # PML draws from the global generator
    theirs = pml_miners.DistanceWeightedMiner()(xt.float(), yt)
    assert max_tv(empirical(theirs, 16), probs) < 0.1
    assert Counter(pml_miners.DistanceWeightedMiner()(x.float(), y)[0].tolist()) == per_anchor


def test_distance_weighted_seeded_and_global_rng_untouched():
    x, y = data(n=16, seed=13)
    state = torch.get_rng_state()
    first = DistanceWeightedMiner(seed=5)(x, y)
    assert torch.equal(state, torch.get_rng_state())
    assert all(
        torch.equal(u, v) for u, v in zip(first, DistanceWeightedMiner(seed=5)(x, y), strict=True)
    )
    other = DistanceWeightedMiner(seed=6)(x, y)
    assert not all(torch.equal(u, v) for u, v in zip(first, other, strict=True))


def test_distance_weighted_requires_unit_euclidean():
    with pytest.raises(ValueError, match="EuclideanDistance"):
        DistanceWeightedMiner(distance=CosineSimilarity())
    with pytest.raises(ValueError, match="EuclideanDistance"):
        DistanceWeightedMiner(distance=EuclideanDistance(squared=True))
    with pytest.raises(ValueError, match="cutoff"):
        DistanceWeightedMiner(cutoff=0.0)


def test_distance_weighted_skips_anchors_without_weighted_negatives():
    x, y = data(n=12, seed=14)
    # nonzero_loss_cutoff below the cutoff gives every negative weight 0
    out = DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=0.4)(x, y)
    assert out.anchor.numel() == 0


def test_quadruplet_miner_feeds_quadruplet_loss():
    """Dropping non-violating quadruplets leaves the (mean-over-non-zero) loss unchanged."""
    from dmlkit.registry import LOSSES

    if "quadruplet" not in LOSSES:
        pytest.skip("no quadruplet loss registered")
    g = torch.Generator().manual_seed(15)
    y = torch.arange(32) % 4
    x = torch.randn(4, 8, generator=g)[y] + 0.35 * torch.randn(32, 8, generator=g)  # clusters
    x.requires_grad_(True)
    loss_fn = LOSSES.build("quadruplet", margin=0.3, margin2=0.1)
    hardest = QuadrupletMiner("hardest")(x, y)
    violating = QuadrupletMiner("violating", margin=0.3, margin2=0.1)(x, y)
    full = loss_fn(x, y, indices=hardest)
    kept = loss_fn(x, y, indices=violating)
    assert full.item() > 0 and 0 < len(violating.anchor) < len(hardest.anchor)
    assert kept.item() == pytest.approx(full.item(), rel=1e-6)
    kept.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
