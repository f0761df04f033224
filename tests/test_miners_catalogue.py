"""Angular, HDC, uniform-histogram and packed-triplet miners, the triplet-margin miner's
agreement with pytorch-metric-learning (ties included) and the multiple-losses wrapper.

Each miner against a naive loop and against pytorch-metric-learning's class of the same
name (same tuples, same order), with and without a reference set, plus edge cases.
"""

from __future__ import annotations

import math

import pytest
import torch

from dmlkit.distances import CosineSimilarity, EuclideanDistance
from dmlkit.losses import (
    ContrastiveLoss,
    MultipleLosses,
    TripletMarginLoss,
    WeightedSumLoss,
)
from dmlkit.miners import (
    AngularMiner,
    EmbeddingsAlreadyPackagedAsTriplets,
    HDCMiner,
    MultiSimilarityMiner,
    PackedTripletsMiner,
    TripletMarginMiner,
    UniformHistogramMiner,
)
from dmlkit.registry import LOSSES, build_from_config, config_of

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
pml_distances = pytest.importorskip("pytorch_metric_learning.distances")

DISTANCES = {
    "euclidean": (EuclideanDistance, pml_distances.LpDistance, {}, {}),
    "squared": (EuclideanDistance, pml_distances.LpDistance, {"squared": True}, {"power": 2}),
    "cosine": (CosineSimilarity, pml_distances.CosineSimilarity, {}, {}),
}


def distances(name):
    ours, theirs, kw_o, kw_t = DISTANCES[name]
    return ours(**kw_o), theirs(**kw_t)


def data(seed: int, n: int = 24, m: int = 18, classes: int = 4, tied: bool = False):
    g = torch.Generator().manual_seed(seed)
    if tied:  # few distinct points on a lattice, repeated: many exact ties
        ang = torch.tensor([0.0, 90.0, 180.0, 270.0, 45.0, 135.0]) * math.pi / 180
        base = torch.stack([ang.cos(), ang.sin()], 1) * (1 + torch.rand(6, 1, generator=g))
        x = base[torch.randint(0, 6, (n,), generator=g)]
        r = base[torch.randint(0, 6, (m,), generator=g)]
    else:
        x = torch.randn(n, 5, generator=g)
        r = torch.randn(m, 5, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    ry = torch.randint(0, classes, (m,), generator=g)
    return x, y, r, ry


def same(a, b):
    return len(a) == len(b) and all(torch.equal(u.long(), v.long()) for u, v in
                                    zip(a, b, strict=True))


def triplets_loop(y, ry):
    same_set = ry is None
    ry = y if ry is None else ry
    return [(a, p, n) for a in range(len(y)) for p in range(len(ry)) for n in range(len(ry))
            if y[a] == ry[p] and y[a] != ry[n] and not (same_set and a == p)]


# -- triplet margin miner -----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["all", "hard", "semihard", "easy"])
@pytest.mark.parametrize("dist", sorted(DISTANCES))
@pytest.mark.parametrize("tied", [False, True])
def test_triplet_margin_miner_equals_pml(kind, dist, tied):
    margins = [0.0, 0.05, 0.2, 1.0, -0.1, 2 - math.sqrt(2), math.sqrt(2)]
    for seed in range(2):
        x, y, r, ry = data(seed, tied=tied)
        for margin in margins:
            ours_d, theirs_d = distances(dist)
            ours = TripletMarginMiner(margin, kind, distance=ours_d)
            theirs = pml_miners.TripletMarginMiner(margin, kind, distance=theirs_d)
            assert same(ours(x, y), theirs(x, y)), (seed, margin)
            assert same(ours(x, y, r, ry), theirs(x, y, r, ry)), (seed, margin)


def test_triplet_margin_miner_loop():
    x, y, r, ry = data(5)
    xn, rn = x / x.norm(dim=1, keepdim=True), r / r.norm(dim=1, keepdim=True)
    for ref, ref_labels, rr in ((None, None, xn), (r, ry, rn)):
        want = [t for t in triplets_loop(y.tolist(), None if ref is None else ry.tolist())
                if 0 < float((xn[t[0]] - rr[t[2]]).norm() - (xn[t[0]] - rr[t[1]]).norm()) <= 0.2]
        got = TripletMarginMiner(0.2, "semihard")(x, y, ref, ref_labels)
        assert list(zip(*(t.tolist() for t in got), strict=True)) == want


# -- angular miner ------------------------------------------------------------------------
def angular_loop(x, y, r, ry, angle):
    same_set = r is None
    r, ry = (x, y) if same_set else (r, ry)
    xd, rd = x.double(), r.double()
    out = []
    for a, p, n in triplets_loop(y.tolist(), None if same_set else ry.tolist()):
        c = (xd[a] + rd[p]) / 2
        theta = math.atan(float((xd[a] - rd[p]).norm()) / (2 * float((rd[n] - c).norm())))
        if theta > math.radians(angle):
            out.append((a, p, n))
    return out


@pytest.mark.parametrize("angle", [10.0, 20.0, 40.0])
def test_angular_miner_loop_and_pml(angle):
    x, y, r, ry = data(1)
    for ref in (False, True):
        args = (r, ry) if ref else ()
        got = AngularMiner(angle=angle)(x, y, *args)
        want = angular_loop(x, y, r if ref else None, ry if ref else None, angle)
        assert list(zip(*(t.tolist() for t in got), strict=True)) == want
        assert same(got, pml_miners.AngularMiner(angle=angle)(x, y, *args))


def test_angular_miner_distance_and_edges():
    for bad in (CosineSimilarity(), EuclideanDistance(squared=True),
                EuclideanDistance(normalize_embeddings=False)):
        with pytest.raises(ValueError, match="only EuclideanDistance"):
            AngularMiner(distance=bad)
    x, _, _, _ = data(2)
    assert AngularMiner()(x, torch.zeros(len(x), dtype=torch.long)).anchor.numel() == 0
    assert AngularMiner()(x, torch.arange(len(x))).anchor.numel() == 0


# -- HDC miner ----------------------------------------------------------------------------
@pytest.mark.parametrize("dist", sorted(DISTANCES))
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 1.0])
def test_hdc_miner_equals_pml_and_loop(dist, fraction):
    for tied in (False, True):
        x, y, r, ry = data(3, tied=tied)
        ours_d, theirs_d = distances(dist)
        ours = HDCMiner(filter_percentage=fraction, distance=ours_d)
        theirs = pml_miners.HDCMiner(filter_percentage=fraction, distance=theirs_d)
        assert same(ours(x, y), theirs(x, y))
        assert same(ours(x, y, r, ry), theirs(x, y, r, ry))
    # loop: the kept pairs are the hardest ceil(fraction * count) of each list
    x, y, _, _ = data(4)
    a1, p, a2, n = HDCMiner(filter_percentage=fraction)(x, y)
    xn = x / x.norm(dim=1, keepdim=True)
    pos = [(i, j) for i in range(len(y)) for j in range(len(y)) if y[i] == y[j] and i != j]
    neg = [(i, j) for i in range(len(y)) for j in range(len(y)) if y[i] != y[j]]
    dist_of = {(i, j): float((xn[i] - xn[j]).norm()) for i, j in pos + neg}
    assert len(a1) == math.ceil(fraction * len(pos)) and len(a2) == math.ceil(fraction * len(neg))
    kept_p = sorted(dist_of[k] for k in zip(a1.tolist(), p.tolist(), strict=True))
    kept_n = sorted(dist_of[k] for k in zip(a2.tolist(), n.tolist(), strict=True))
    assert kept_p == pytest.approx(sorted(dist_of[k] for k in pos)[len(pos) - len(kept_p):])
    assert kept_n == pytest.approx(sorted(dist_of[k] for k in neg)[: len(kept_n)])


def test_hdc_miner_cascade_from_external_pairs():
    x, y, _, _ = data(6)
    first = TripletMarginMiner(0.3)(x, y)
    ours, theirs = HDCMiner(0.5), pml_miners.HDCMiner(0.5)
    ours.set_idx_externally(first, y)
    theirs.set_idx_externally(tuple(first), y)
    assert same(ours(x, y), theirs(x, y))
    ours.reset_idx()
    assert same(ours(x, y), pml_miners.HDCMiner(0.5)(x, y))
    with pytest.raises(ValueError, match="filter_percentage"):
        HDCMiner(1.5)
    a1, p, a2, n = HDCMiner()(x, torch.arange(len(x)))  # no positives
    assert a1.numel() == 0 and a2.numel() > 0


# -- uniform histogram miner --------------------------------------------------------------
@pytest.mark.parametrize("dist", sorted(DISTANCES))
def test_uniform_histogram_miner_equals_pml_with_the_same_seed(dist):
    x, y, r, ry = data(7, n=48, m=30, classes=2)
    for args in ((), (r, ry)):
        ours_d, theirs_d = distances(dist)
        got = UniformHistogramMiner(20, 3, 7, seed=11, distance=ours_d)(x, y, *args)
        torch.manual_seed(11)
        want = pml_miners.UniformHistogramMiner(20, 3, 7, distance=theirs_d)(x, y, *args)
        assert same(got, want)


def test_uniform_histogram_miner_fills_every_bin_evenly():
    x, y, _, _ = data(8, n=64, classes=2)
    miner = UniformHistogramMiner(num_bins=25, pos_per_bin=4, neg_per_bin=9)
    a1, p, a2, n = miner(x, y)
    xn = x / x.norm(dim=1, keepdim=True)
    d = torch.cdist(xn, xn)
    same_label = y[:, None] == y[None, :]
    eye = torch.eye(len(y), dtype=torch.bool)
    for (a, o, per), mask in (((a1, p, 4), same_label & ~eye), ((a2, n, 9), ~same_label)):
        every = d[mask]
        hist = torch.histc(d[a, o], bins=25, min=float(every.min()), max=float(every.max()))
        assert torch.all((hist == per) | (hist == 0)) and hist.sum() > 0
    # its own generator: same seed, same pairs; the global random state is untouched
    state = torch.get_rng_state()
    assert same(UniformHistogramMiner(seed=3)(x, y), UniformHistogramMiner(seed=3)(x, y))
    assert torch.equal(state, torch.get_rng_state())
    none = UniformHistogramMiner()(x, torch.arange(len(x)))
    assert none.a1.numel() == 0 and none.p.numel() == 0


def test_uniform_histogram_miner_state_resumes_the_draws():
    x, y, _, _ = data(9, classes=2)
    miner = UniformHistogramMiner(seed=1)
    miner(x, y)
    state = miner.state_dict()
    want = miner(x, y)
    resumed = UniformHistogramMiner(seed=1)
    resumed.load_state_dict(state)
    assert same(resumed(x, y), want)


# -- packed triplets ----------------------------------------------------------------------
def test_packed_triplets_equal_pml_and_train_without_labels():
    x = torch.randn(15, 4, dtype=torch.float64)
    got = PackedTripletsMiner()(x)
    want = pml_miners.EmbeddingsAlreadyPackagedAsTriplets()(x, torch.zeros(15))
    assert same(got, want) and EmbeddingsAlreadyPackagedAsTriplets is PackedTripletsMiner
    assert got.anchor.tolist() == [0, 3, 6, 9, 12]
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours = TripletMarginLoss(margin=0.5)(xa, indices=PackedTripletsMiner()(xa))
    theirs = pml_losses.TripletMarginLoss(margin=0.5)(xb, None, tuple(want))
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(xa.grad, xb.grad)
    with pytest.raises(ValueError, match="multiple of 3"):
        PackedTripletsMiner()(x[:14])
    with pytest.raises(ValueError, match="reference"):
        PackedTripletsMiner()(x, None, x, torch.zeros(15, dtype=torch.long))
    assert PackedTripletsMiner()(x[:0]).anchor.numel() == 0


# -- multiple losses ----------------------------------------------------------------------
def test_multiple_losses_equal_pml_in_dict_and_list_form():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(60, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, 6, (60,), generator=g)
    forms = [
        (MultipleLosses({"a": ContrastiveLoss(), "b": TripletMarginLoss(margin=0.1)},
                        miners={"b": MultiSimilarityMiner()}, weights={"a": 1, "b": 0.23}),
         pml_losses.MultipleLosses(
             {"a": pml_losses.ContrastiveLoss(), "b": pml_losses.TripletMarginLoss(0.1)},
             miners={"b": pml_miners.MultiSimilarityMiner()}, weights={"a": 1, "b": 0.23})),
        (MultipleLosses([ContrastiveLoss(), TripletMarginLoss(margin=0.1)],
                        miners=[None, MultiSimilarityMiner()], weights=[1, 0.23]),
         pml_losses.MultipleLosses(
             [pml_losses.ContrastiveLoss(), pml_losses.TripletMarginLoss(0.1)],
             miners=[None, pml_miners.MultiSimilarityMiner()], weights=[1, 0.23])),
    ]
    for ours, theirs in forms:
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        va, vb = ours(xa, y), theirs(xb, y)
        va.backward()
        vb.backward()
        torch.testing.assert_close(va, vb)
        torch.testing.assert_close(xa.grad, xb.grad)
        with pytest.raises(ValueError, match="indices"):
            ours(x, y, indices=MultiSimilarityMiner()(x, y))
    # no miners: the given indices go to every loss
    ind = MultiSimilarityMiner()(x, y)
    ours = MultipleLosses({"a": ContrastiveLoss(), "b": TripletMarginLoss(margin=0.1)},
                          weights={"a": 1.0, "b": 0.23})
    want = ContrastiveLoss()(x, y, indices=ind) + 0.23 * TripletMarginLoss(margin=0.1)(
        x, y, indices=ind)
    torch.testing.assert_close(ours(x, y, indices=ind), want)


def test_multiple_losses_mismatches_and_configs():
    a, b = ContrastiveLoss(), TripletMarginLoss()
    with pytest.raises(ValueError, match="weights"):
        MultipleLosses({"a": a, "b": b}, weights={"blah": 1, "b": 0.2})
    with pytest.raises(ValueError, match="miners"):
        MultipleLosses({"a": a, "b": b}, miners={"blah": MultiSimilarityMiner()})
    with pytest.raises(ValueError, match="weights"):
        MultipleLosses([a, b], weights=[1.0])
    with pytest.raises(ValueError, match="miners"):
        MultipleLosses([a, b], miners=[MultiSimilarityMiner()])
    loss = MultipleLosses({"a": a, "b": b}, miners={"b": MultiSimilarityMiner()},
                          weights={"a": 1.0, "b": 0.5})
    config = config_of(loss)
    rebuilt = build_from_config(LOSSES, config)
    assert config_of(rebuilt) == config and isinstance(rebuilt, WeightedSumLoss)
    x, y = torch.randn(16, 4), torch.arange(16) % 4
    torch.testing.assert_close(loss(x, y), rebuilt(x, y))


def test_pair_miners_with_the_snr_distance_equal_pml():
    from dmlkit.distances import SNRDistance

    x, y, r, ry = data(13, n=40, m=20, classes=2)
    for args in ((), (r, ry)):
        got = UniformHistogramMiner(30, 4, 6, seed=2, distance=SNRDistance())(x, y, *args)
        torch.manual_seed(2)
        want = pml_miners.UniformHistogramMiner(30, 4, 6, distance=pml_distances.SNRDistance())(
            x, y, *args)
        assert same(got, want)
        assert same(HDCMiner(0.3, distance=SNRDistance())(x, y, *args),
                    pml_miners.HDCMiner(0.3, distance=pml_distances.SNRDistance())(x, y, *args))
