"""SNR contrastive, tuplet margin and NCA losses (and the SNR distance).

Each against a naive fp64 loop and against pytorch-metric-learning's class of the same
name: values and gradients to 1e-5, on labels, on mined pairs and triplets, with
``ref_embeddings``; plus the edge cases (empty mined sets, one class, tied embeddings).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dmlkit.distances import CosineSimilarity, EuclideanDistance, SNRDistance
from dmlkit.functional.tuples import Pairs, Triplets
from dmlkit.losses import NCALoss, SignalToNoiseRatioContrastiveLoss, TupletMarginLoss

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
pml_distances = pytest.importorskip("pytorch_metric_learning.distances")

N, M, DIM = 14, 18, 6


def batch(seed: int, classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, DIM, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (N,), generator=g)
    r = torch.randn(M, DIM, generator=g, dtype=torch.float64)
    ry = torch.randint(0, classes, (M,), generator=g)
    return x, y, r, ry


def value_and_grads(fn, x, r=None):
    x = x.clone().requires_grad_(True)
    r = None if r is None else r.clone().requires_grad_(True)
    v = fn(x, r)
    v.backward()
    return v.detach(), x.grad, None if r is None else r.grad


def ours_call(loss, y, ind=None, ry=None):
    return lambda e, f: loss(e, y, indices=ind, ref_embeddings=f, ref_labels=ry)


def pml_call(loss, y, t=None, ry=None):
    return lambda e, f: loss(e, y, t, f, ry)


def assert_same(a, b):
    for u, v in zip(a, b, strict=True):
        if u is None or v is None:
            assert u is None or float(u.abs().max()) == 0.0
            assert v is None or float(v.abs().max()) == 0.0
            continue
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-7)


# -- naive references ----------------------------------------------------------------------
def naive_snr(a, b):
    a, b = F.normalize(a, dim=0), F.normalize(b, dim=0)
    return torch.var(a - b) / torch.var(a)


def naive_pairs(y, ry, no_ref):
    n, m = len(y), len(ry)
    pos = [(i, j) for i in range(n) for j in range(m) if y[i] == ry[j] and not (no_ref and i == j)]
    neg = [(i, j) for i in range(n) for j in range(m) if y[i] != ry[j]]
    return pos, neg


def naive_snr_contrastive(x, y, r, ry, pos_margin=0.0, neg_margin=1.0):
    no_ref = r is None
    r, ry = (x, y) if no_ref else (r, ry)
    pos, neg = naive_pairs(y, ry, no_ref)
    pl = [torch.relu(naive_snr(x[i], r[j]) - pos_margin) for i, j in pos]
    nl = [torch.relu(neg_margin - naive_snr(x[i], r[j])) for i, j in neg]

    def avg(v):
        nz = sum(1 for t in v if t > 0)
        return sum(v) / max(nz, 1) if v else x.sum() * 0

    return avg(pl) + avg(nl)


def naive_tuplet(x, y, r, ry, margin=5.73, scale=64.0):
    no_ref = r is None
    r, ry = (x, y) if no_ref else (r, ry)
    pos, neg = naive_pairs(y, ry, no_ref)
    total = x.sum() * 0
    for i, j in pos:
        cos_p = F.cosine_similarity(x[i], r[j], dim=0)
        shifted = torch.cos(torch.acos(cos_p) - math.radians(margin))
        s = 1.0
        for a, k in neg:
            if a == i:
                s = s + torch.exp(scale * (F.cosine_similarity(x[i], r[k], dim=0) - shifted))
        total = total + torch.log(s) if not isinstance(s, float) else total
    return total / len(pos)


def naive_tuplet_clamped(x, y, margin=5.73, scale=64.0):
    cos = F.normalize(x, dim=1) @ F.normalize(x, dim=1).T
    theta = torch.acos(cos.clamp(-1, 1))
    total, count = 0.0, 0
    for i in range(len(y)):
        for j in range(len(y)):
            if i == j or y[i] != y[j]:
                continue
            s = 1.0 + sum(
                torch.exp(scale * (cos[i, k] - torch.cos(theta[i, j] - math.radians(margin))))
                for k in range(len(y)) if y[k] != y[i]
            )
            total, count = total + torch.log(torch.as_tensor(s)), count + 1
    return total / count


def naive_nca(x, y, r, ry, softmax_scale=1.0, weights=None):
    no_ref = r is None
    r, ry = (x, y) if no_ref else (r, ry)
    xs, rs = F.normalize(x, dim=1), F.normalize(r, dim=1)
    losses = []
    for i in range(len(y)):
        num, den = 0.0, 0.0
        for j in range(len(ry)):
            if no_ref and i == j:
                continue
            e = torch.exp(-softmax_scale * ((xs[i] - rs[j]) ** 2).sum())
            den = den + e
            if ry[j] == y[i]:
                num = num + e
        if not isinstance(num, float):
            w = 1.0 if weights is None else weights[i]
            losses.append(-torch.log(num / den) * w)
    return sum(losses) / len(losses)


# -- the SNR distance ------------------------------------------------------------------------
def test_snr_distance_against_loop_and_pml():
    x, _, r, _ = batch(0)
    ours = SNRDistance()(x, r)
    loop = torch.stack([torch.stack([naive_snr(a, b) for b in r]) for a in x])
    torch.testing.assert_close(ours, loop)
    torch.testing.assert_close(ours, pml_distances.SNRDistance()(x, r))
    self_mat = SNRDistance()(x)
    assert torch.all(self_mat.diagonal() == 0)
    torch.testing.assert_close(self_mat, pml_distances.SNRDistance()(x))
    diag = loop[torch.arange(N), torch.arange(N)]
    torch.testing.assert_close(SNRDistance().pairwise(x, r[:N]), diag)
    raw = SNRDistance(normalize_embeddings=False)
    torch.testing.assert_close(
        raw(x, r), pml_distances.SNRDistance(normalize_embeddings=False)(x, r)
    )
    with pytest.raises(ValueError, match="dim >= 2"):
        SNRDistance()(x[:, :1])


# -- loops and pytorch-metric-learning -------------------------------------------------------
LOOPS = [
    (SignalToNoiseRatioContrastiveLoss, {"pos_margin": 0.1, "neg_margin": 1.2},
     naive_snr_contrastive),
    (TupletMarginLoss, {"margin": 8.0, "scale": 16.0}, naive_tuplet),
    (NCALoss, {"softmax_scale": 2.0}, naive_nca),
]


@pytest.mark.parametrize("ours,kwargs,loop", LOOPS, ids=[c[0].__name__ for c in LOOPS])
@pytest.mark.parametrize("with_ref", [False, True])
def test_against_naive_loop(ours, kwargs, loop, with_ref):
    x, y, r, ry = batch(1)
    if not with_ref:
        r = ry = None
    loss = ours(**kwargs)
    got = value_and_grads(lambda a, b: loss(a, y, ref_embeddings=b, ref_labels=ry), x, r)
    want = value_and_grads(lambda a, b: loop(a, y, b, ry, **kwargs), x, r)
    assert_same(got, want)


PML = [
    (SignalToNoiseRatioContrastiveLoss, "SignalToNoiseRatioContrastiveLoss", {}),
    (SignalToNoiseRatioContrastiveLoss, "SignalToNoiseRatioContrastiveLoss",
     {"pos_margin": 0.2, "neg_margin": 0.8}),
    (TupletMarginLoss, "TupletMarginLoss", {}),
    (TupletMarginLoss, "TupletMarginLoss", {"margin": 11.0, "scale": 20}),
    (NCALoss, "NCALoss", {}),
    (NCALoss, "NCALoss", {"softmax_scale": 4}),
]


def mined(kind, x, y, r=None, ry=None):
    if kind == "pairs":
        miner = pml_miners.PairMarginMiner(pos_margin=0.3, neg_margin=0.6)
    else:
        miner = pml_miners.TripletMarginMiner(margin=0.4)
    return miner(x, y, r, ry)


def typed(t):
    return Pairs(*t) if len(t) == 4 else Triplets(*t)


@pytest.mark.parametrize("mode", ["labels", "pairs", "triplets"])
@pytest.mark.parametrize("with_ref", [False, True])
@pytest.mark.parametrize(
    "ours,pml_name,kwargs", PML, ids=[f"{c[1]}-{i}" for i, c in enumerate(PML)]
)
def test_matches_pml(ours, pml_name, kwargs, mode, with_ref):
    for seed in (2, 3):
        x, y, r, ry = batch(seed)
        if not with_ref:
            r = ry = None
        t = None if mode == "labels" else mined(mode, x, y, r, ry)
        ind = None if t is None else typed(t)
        a = ours(**kwargs)
        b = getattr(pml_losses, pml_name)(**kwargs)
        got = value_and_grads(ours_call(a, y, ind, ry), x, r)
        want = value_and_grads(pml_call(b, y, t, ry), x, r)
        assert_same(got, want)


@pytest.mark.parametrize("ours,pml_name,kwargs", PML[::2], ids=[c[1] for c in PML[::2]])
def test_edge_cases_match_pml(ours, pml_name, kwargs):
    x, y, _, _ = batch(4)
    a, b = ours(**kwargs), getattr(pml_losses, pml_name)(**kwargs)
    empty = torch.zeros(0, dtype=torch.long)
    cases = [
        ("empty triplets", x, y, (empty,) * 3),
        ("empty pairs", x, y, (empty,) * 4),
        ("single class", x, torch.zeros(N, dtype=torch.long), None),
        ("all distinct classes", x, torch.arange(N), None),
        # ties: duplicated embeddings (distance 0 / cosine 1 between positives) away from
        # the kink so that both libraries have a gradient
        ("ties", torch.cat([x[:7], x[:7] * 1.0]), torch.cat([y[:7], y[:7]]), None),
    ]
    for what, e, lab, t in cases:
        if what == "ties" and ours is TupletMarginLoss:
            continue  # arccos has no slope at cosine 1; checked separately below
        ind = None if t is None else typed(t)
        got = value_and_grads(ours_call(a, lab, ind), e)
        if what == "all distinct classes" and ours is NCALoss:
            # no query has a positive: pytorch-metric-learning averages nothing (NaN),
            # here the loss is the zero that backpropagates
            assert got[0] == 0 and torch.all(got[1] == 0)
            assert torch.isnan(b(e, lab))
            continue
        want = value_and_grads(pml_call(b, lab, t), e)
        assert_same(got, want)


def test_tuplet_ties_are_finite_and_match_the_value():
    x, y, _, _ = batch(5)
    e = torch.cat([x[:7], x[:7]])
    lab = torch.cat([y[:7], y[:7]])
    v, g, _ = value_and_grads(lambda u, _: TupletMarginLoss()(u, lab), e)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    torch.testing.assert_close(v, naive_tuplet_clamped(e, lab))
    # pytorch-metric-learning's arccos may see a cosine a rounding error above 1 (NaN)
    theirs = pml_losses.TupletMarginLoss()(e, lab)
    if torch.isfinite(theirs):
        torch.testing.assert_close(v, theirs)


def test_nca_empty_mined_set_is_the_full_loss_and_weights_follow_counts():
    x, y, _, _ = batch(6)
    empty = torch.zeros(0, dtype=torch.long)
    full = NCALoss()(x, y)
    assert NCALoss()(x, y, indices=Triplets(empty, empty, empty)) == full
    # a miner listing only sample 0 (twice) and 1 (once): weights 1 and 1/2
    t = Triplets(torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([0, 0]))
    # member counts: 0 -> 4, 1 -> 2; weights 1 and 0.5; other queries 0
    weights = torch.zeros(N, dtype=x.dtype)
    weights[0], weights[1] = 1.0, 0.5
    want = naive_nca(x, y, None, None, weights=weights)
    torch.testing.assert_close(NCALoss()(x, y, indices=t), want)


def test_distance_type_is_checked():
    with pytest.raises(TypeError, match="SNRDistance"):
        SignalToNoiseRatioContrastiveLoss(distance=EuclideanDistance())
    with pytest.raises(TypeError, match="CosineSimilarity"):
        TupletMarginLoss(distance=EuclideanDistance())
    # NCA takes any distance; a similarity flips the sign of the logits
    x, y, _, _ = batch(7)
    got = NCALoss(distance=CosineSimilarity())(x, y)
    want = pml_losses.NCALoss(distance=pml_distances.CosineSimilarity())(x, y)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "loss",
    [SignalToNoiseRatioContrastiveLoss(), TupletMarginLoss(scale=8.0), NCALoss()],
    ids=["snr_contrastive", "tuplet_margin", "nca"],
)
@pytest.mark.parametrize("with_ref", [False, True])
def test_chunked_equals_one_chunk(loss, with_ref, monkeypatch):
    from dmlkit.functional import chunking
    from dmlkit.losses import _rows

    g = torch.Generator().manual_seed(9)
    x = torch.randn(150, DIM, generator=g, dtype=torch.float64)
    y = torch.randint(0, 12, (150,), generator=g)
    r = torch.randn(90, DIM, generator=g, dtype=torch.float64) if with_ref else None
    ry = torch.randint(0, 12, (90,), generator=g) if with_ref else None
    whole = value_and_grads(ours_call(loss, y, None, ry), x, r)
    monkeypatch.setattr(chunking, "DEFAULT_BUDGET", 2048)
    monkeypatch.setattr(chunking, "EAGER_BUDGET", 512)
    monkeypatch.setattr(chunking, "EAGER_MIN_ROWS", 4)
    monkeypatch.setattr(_rows, "FUSED_BUDGET", 0)
    parts = value_and_grads(ours_call(loss, y, None, ry), x, r)
    assert_same(whole, parts)


def test_tuplet_margin_keeps_degrees():
    loss = TupletMarginLoss(margin=5.73)
    assert loss.margin == 5.73 and loss.margin_radians == pytest.approx(0.1000073, rel=1e-6)


def test_nca_keeps_queries_whose_positives_underflow():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(8, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    scale = 2000.0  # e^(-scale * d) underflows for every positive of some queries
    xs = F.normalize(x, dim=1)
    d = torch.cdist(xs, xs) ** 2
    logits = (-scale * d).fill_diagonal_(float("-inf"))
    pos = (y[:, None] == y[None, :]) & ~torch.eye(8, dtype=torch.bool)
    want = (logits.logsumexp(1) - logits.masked_fill(~pos, float("-inf")).logsumexp(1)).mean()
    got = NCALoss(softmax_scale=scale)(x, y)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, want)
