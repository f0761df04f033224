"""ContrastiveLoss, TripletMarginLoss and the core miners against naive loops and PML."""

from __future__ import annotations

import math

import pytest
import torch

import dmlkit.functional.chunking as chunking
from dmlkit.distances import CosineSimilarity, EuclideanDistance
from dmlkit.functional import Pairs, Triplets
from dmlkit.losses import ContrastiveLoss, TripletMarginLoss
from dmlkit.miners import BatchHardMiner, TripletMarginMiner

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
pml_dist = pytest.importorskip("pytorch_metric_learning.distances")


def data(n=24, d=6, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def unit_rows(x):
    return [[float(v) / math.sqrt(sum(float(u) ** 2 for u in row)) for v in row] for row in x]


def dist(a, b):
    return math.sqrt(sum((u - v) ** 2 for u, v in zip(a, b, strict=True)))


def cos(a, b):
    return sum(u * v for u, v in zip(a, b, strict=True))


def mean_nonzero(values):
    nz = [v for v in values if v > 0]
    return sum(nz) / len(nz) if nz else 0.0


def naive_contrastive(x, y, pos_margin, neg_margin, sim=False):
    e = unit_rows(x.detach())
    pos, neg = [], []
    for i in range(len(e)):
        for j in range(len(e)):
            if i == j:
                continue
            d = cos(e[i], e[j]) if sim else dist(e[i], e[j])
            if y[i] == y[j]:
                pos.append(max(0.0, (pos_margin - d) if sim else (d - pos_margin)))
            else:
                neg.append(max(0.0, (d - neg_margin) if sim else (neg_margin - d)))
    return mean_nonzero(pos) + mean_nonzero(neg)


def naive_triplet(x, y, margin, swap=False, smooth=False, sim=False):
    e = unit_rows(x.detach())
    n = len(e)
    m = (lambda a, b: cos(a, b)) if sim else dist
    out = []
    for a in range(n):
        for p in range(n):
            if p == a or y[p] != y[a]:
                continue
            for q in range(n):
                if y[q] == y[a]:
                    continue
                ap, an = m(e[a], e[p]), m(e[a], e[q])
                if swap:
                    pn = m(e[p], e[q])
                    an = max(an, pn) if sim else min(an, pn)
                v = (an - ap + margin) if sim else (ap - an + margin)
                out.append(math.log1p(math.exp(v)) if smooth else max(0.0, v))
    return mean_nonzero(out)


@pytest.mark.parametrize("sim", [False, True])
def test_contrastive_naive(sim):
    x, y = data()
    kw = dict(pos_margin=0.9, neg_margin=0.3) if sim else dict(pos_margin=0.1, neg_margin=0.8)
    distance = CosineSimilarity() if sim else EuclideanDistance()
    got = ContrastiveLoss(distance=distance, **kw)(x, y)
    assert got.item() == pytest.approx(naive_contrastive(x, y, sim=sim, **kw), abs=1e-10)


@pytest.mark.parametrize(
    "kw", [dict(), dict(swap=True), dict(smooth_loss=True), dict(margin=0.3, swap=True)]
)
@pytest.mark.parametrize("sim", [False, True])
def test_triplet_naive(kw, sim):
    x, y = data(n=16)
    distance = CosineSimilarity() if sim else EuclideanDistance()
    got = TripletMarginLoss(distance=distance, **kw)(x, y)
    ref = naive_triplet(
        x, y, kw.get("margin", 0.05), kw.get("swap", False), kw.get("smooth_loss", False), sim
    )
    assert got.item() == pytest.approx(ref, abs=1e-10)


def _pml_distance(sim):
    return pml_dist.CosineSimilarity() if sim else pml_dist.LpDistance()


def _margins(distance, pos_margin, neg_margin):
    """Contrastive margins for a distance, swapped for a similarity (ours refuses a
    similarity's pos_margin < neg_margin: negatives would never cost)."""
    sim = getattr(distance, "is_similarity", getattr(distance, "is_inverted", False))
    return (neg_margin, pos_margin) if sim else (pos_margin, neg_margin)


@pytest.mark.parametrize("sim", [False, True])
@pytest.mark.parametrize(
    "ours,theirs",
    [
        (
            lambda d: ContrastiveLoss(*_margins(d, 0.0, 1.0), distance=d),
            lambda d: pml_losses.ContrastiveLoss(*_margins(d, 0.0, 1.0), distance=d),
        ),
        (
            lambda d: ContrastiveLoss(*_margins(d, 0.2, 0.7), distance=d),
            lambda d: pml_losses.ContrastiveLoss(*_margins(d, 0.2, 0.7), distance=d),
        ),
        (
            lambda d: TripletMarginLoss(distance=d),
            lambda d: pml_losses.TripletMarginLoss(distance=d),
        ),
        (
            lambda d: TripletMarginLoss(0.2, swap=True, distance=d),
            lambda d: pml_losses.TripletMarginLoss(0.2, swap=True, distance=d),
        ),
        (
            lambda d: TripletMarginLoss(0.1, smooth_loss=True, distance=d),
            lambda d: pml_losses.TripletMarginLoss(0.1, smooth_loss=True, distance=d),
        ),
    ],
)
def test_matches_pml(ours, theirs, sim):
    x, y = data(n=32)
    ours_fn = ours(CosineSimilarity() if sim else EuclideanDistance())
    theirs_fn = theirs(_pml_distance(sim))
    a, b = ours_fn(x, y), theirs_fn(x, y)
    ga, gb = torch.autograd.grad(a, x)[0], torch.autograd.grad(b, x)[0]
    assert a.item() == pytest.approx(b.item(), abs=1e-5)
    torch.testing.assert_close(ga, gb, atol=1e-5, rtol=1e-5)
    # with mined tuples
    mined = pml_miners.TripletMarginMiner(0.2, type_of_triplets="semihard")(x, y)
    a, b = ours_fn(x, y, indices=mined), theirs_fn(x, y, mined)
    assert a.item() == pytest.approx(b.item(), abs=1e-5)
    pairs = pml_miners.PairMarginMiner()(x, y)
    a, b = ours_fn(x, y, indices=pairs), theirs_fn(x, y, pairs)
    assert a.item() == pytest.approx(b.item(), abs=1e-5)


def test_ref_embeddings_match_pml():
    x, y = data(n=12, seed=3)
    r, ry = data(n=20, seed=4)
    for ours, theirs in [
        (ContrastiveLoss(), pml_losses.ContrastiveLoss()),
        (TripletMarginLoss(0.2), pml_losses.TripletMarginLoss(0.2)),
    ]:
        a = ours(x, y, ref_embeddings=r, ref_labels=ry)
        b = theirs(x, y, ref_emb=r, ref_labels=ry)
        assert a.item() == pytest.approx(b.item(), abs=1e-6)


def naive_swap_triplet_with_ref(x, y, r, ry, margin, trips=None):
    """Anchors from the batch, positives and negatives from the reference set; the swap
    distance is the one between the triplet's own positive and negative (both
    reference rows). fp64 torch scalars, so the gradient can be compared too."""
    z = x / x.norm(dim=1, keepdim=True)
    q = r / r.norm(dim=1, keepdim=True)
    if trips is None:
        trips = [(a, p, n) for a in range(len(y)) for p in range(len(ry))
                 for n in range(len(ry)) if ry[p] == y[a] and ry[n] != y[a]]
    vals = []
    for a, p, n in trips:
        d_an = torch.minimum((z[a] - q[n]).norm(), (q[p] - q[n]).norm())
        vals.append(torch.relu((z[a] - q[p]).norm() - d_an + margin))
    v = torch.stack(vals)
    return v.sum() / (v > 0).sum().clamp_min(1)


def test_swap_with_ref_embeddings_takes_the_reference_positive_negative_distance():
    """pytorch-metric-learning 2.x reads the positive's reference index as a row of the
    query batch here (the README and the docstring say so); this one follows the loop."""
    x, y = data(n=16, seed=11)
    r, ry = data(n=12, seed=12)  # (fewer rows than the batch: the library indexes it)
    r = r.detach() * 1.7
    loss = TripletMarginLoss(0.5, swap=True)
    got = loss(x, y, ref_embeddings=r, ref_labels=ry)
    want = naive_swap_triplet_with_ref(x, y, r, ry, 0.5)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(want, x)[0])
    theirs = pml_losses.TripletMarginLoss(0.5, swap=True)(x, y, ref_emb=r, ref_labels=ry)
    assert abs(theirs.item() - got.item()) > 1e-4  # the documented difference
    # mined triplets (anchor in the batch, positive and negative in the reference set)
    trips = [(a, p, n) for a in range(16) for p in range(12) for n in range(12)
             if ry[p] == y[a] and ry[n] != y[a]][::7]
    mined = Triplets(*(torch.tensor(c) for c in zip(*trips, strict=True)))
    got = loss(x, y, indices=mined, ref_embeddings=r, ref_labels=ry)
    torch.testing.assert_close(got, naive_swap_triplet_with_ref(x, y, r, ry, 0.5, trips))


def test_indices_without_labels_equal_labels_path():
    x, y = data(n=10)
    trip = Triplets(torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]), torch.tensor([6, 7, 8]))
    loss = TripletMarginLoss(0.5)
    assert loss(x, indices=trip).item() == pytest.approx(loss(x, y, indices=trip).item())
    pairs = Pairs(torch.tensor([0]), torch.tensor([1]), torch.tensor([2]), torch.tensor([3]))
    assert torch.isfinite(ContrastiveLoss()(x, indices=pairs))
    with pytest.raises(ValueError, match="outside"):
        loss(x, indices=Triplets(torch.tensor([0]), torch.tensor([10]), torch.tensor([1])))
    with pytest.raises(ValueError, match="labels or indices"):
        loss(x)


@pytest.mark.parametrize(
    "make",
    [
        lambda: ContrastiveLoss(),
        lambda: TripletMarginLoss(0.2),
        lambda: TripletMarginLoss(0.2, swap=True),
        lambda: TripletMarginLoss(0.1, smooth_loss=True, distance=CosineSimilarity()),
    ],
)
def test_chunked_equals_unchunked(make, monkeypatch):
    x, y = data(n=40, seed=5)
    full = make()(x, y)
    g_full = torch.autograd.grad(full, x)[0]
    monkeypatch.setattr(chunking, "DEFAULT_BUDGET", 50)  # forces one row per chunk
    monkeypatch.setattr(chunking, "EAGER_BUDGET", 50)  # same for the gradient-per-chunk paths
    monkeypatch.setattr(chunking, "EAGER_MIN_ROWS", 1)
    import dmlkit.losses.triplet_margin as t

    monkeypatch.setattr(
        t, "chunk_size_for", lambda n, e, budget=50: chunking.chunk_size_for(n, e, budget)
    )
    small = make()(x, y)
    g_small = torch.autograd.grad(small, x)[0]
    assert small.item() == pytest.approx(full.item(), abs=1e-10)
    torch.testing.assert_close(g_small, g_full)


def test_half_precision_inputs_computed_in_fp32():
    x, y = data(n=16)
    loss = TripletMarginLoss(0.2)
    ref = loss(x.detach().float(), y)
    got = loss(x.detach().bfloat16(), y)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), abs=2e-2)


def test_batch_hard_miner_naive_and_pml():
    x, y = data(n=20, seed=6)
    e = unit_rows(x.detach())
    got = BatchHardMiner()(x, y)
    expected = []
    for a in range(len(e)):
        pos = [j for j in range(len(e)) if j != a and y[j] == y[a]]
        neg = [j for j in range(len(e)) if y[j] != y[a]]
        if pos and neg:
            p = max(pos, key=lambda j: dist(e[a], e[j]))
            q = min(neg, key=lambda j: dist(e[a], e[j]))
            expected.append((a, p, q))
    assert list(zip(*(t.tolist() for t in got), strict=True)) == expected
    theirs = pml_miners.BatchHardMiner()(x, y)
    assert all(torch.equal(u, v) for u, v in zip(got, theirs, strict=True))


@pytest.mark.parametrize("kind", ["all", "hard", "semihard", "easy"])
@pytest.mark.parametrize("sim", [False, True])
def test_triplet_margin_miner_naive_and_pml(kind, sim):
    x, y = data(n=14, seed=7)
    distance = CosineSimilarity() if sim else EuclideanDistance()
    got = TripletMarginMiner(0.3, kind, distance=distance)(x, y)
    theirs = pml_miners.TripletMarginMiner(0.3, type_of_triplets=kind, distance=_pml_distance(sim))(
        x, y
    )
    assert all(torch.equal(u, v) for u, v in zip(got, theirs, strict=True))
    e = unit_rows(x.detach())
    m = cos if sim else dist
    expected = []
    for a in range(len(e)):
        for p in range(len(e)):
            if p == a or y[p] != y[a]:
                continue
            for q in range(len(e)):
                if y[q] == y[a]:
                    continue
                gap = (m(e[a], e[p]) - m(e[a], e[q])) if sim else (m(e[a], e[q]) - m(e[a], e[p]))
                keep = {
                    "all": gap <= 0.3,
                    "hard": gap <= 0,
                    "semihard": 0 < gap <= 0.3,
                    "easy": gap > 0.3,
                }[kind]
                if keep:
                    expected.append((a, p, q))
    assert list(zip(*(t.tolist() for t in got), strict=True)) == expected


def test_miner_with_reference_set():
    x, y = data(n=8, seed=8)
    r, ry = data(n=12, seed=9)
    got = BatchHardMiner()(x, y, r, ry)
    theirs = pml_miners.BatchHardMiner()(x, y, r, ry)
    assert all(torch.equal(u, v) for u, v in zip(got, theirs, strict=True))
    with pytest.raises(ValueError, match="together"):
        BatchHardMiner()(x, y, r)
