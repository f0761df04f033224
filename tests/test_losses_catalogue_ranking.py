"""Histogram, ranked-list and PNP losses.

Each against a naive fp64 loop and against pytorch-metric-learning's class of the same
name: values and gradients to 1e-5 (on labels; the histogram loss also on mined pairs
and triplets), the loops also with ``ref_embeddings``; plus edge cases (empty mined sets,
one class, every sample its own class, tied embeddings) and the chunked path.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from dmlkit.distances import EuclideanDistance
from dmlkit.functional import chunking
from dmlkit.functional.tuples import Pairs, Triplets
from dmlkit.losses import HistogramLoss, PNPLoss, RankedListLoss

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")

N, M, DIM = 14, 17, 5


def batch(seed: int, classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, DIM, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (N,), generator=g)
    y[0] = 99  # a singleton class: anchors without positives
    r = torch.randn(M, DIM, generator=g, dtype=torch.float64)
    ry = torch.randint(0, classes, (M,), generator=g)
    return x, y, r, ry


def value_and_grads(fn, x, r=None):
    x = x.clone().requires_grad_(True)
    r = None if r is None else r.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the library's indexing deprecation
        v = fn(x, r)
        v.backward()
    return v.detach(), x.grad, None if r is None else r.grad


def ours_call(loss, y, ind=None, ry=None):
    return lambda e, f: loss(e, y, indices=ind, ref_embeddings=f, ref_labels=ry)


def pml_call(loss, y, t=None):
    return lambda e, f: loss(e, y, t)


def assert_same(a, b, atol=1e-7):
    for u, v in zip(a, b, strict=True):
        if u is None or v is None:
            assert u is None and v is None
            continue
        torch.testing.assert_close(u, v, rtol=1e-5, atol=atol)


def cos(a, b):
    return F.cosine_similarity(a, b, dim=0)


# -- naive references ----------------------------------------------------------------------
def naive_histogram_from_pairs(x, r, pos, neg, n_bins):
    delta = 2.0 / n_bins
    nodes = [-1.0 + k * delta for k in range(n_bins + 1)]

    def density(pairs):
        out = []
        for t in nodes:  # triangular kernel around each node (the paper's eq. 2)
            out.append(sum(torch.relu(1 - (cos(x[i], r[j]) - t).abs() / delta) for i, j in pairs))
        return [o / len(pairs) for o in out]

    p_pos, p_neg = density(pos), density(neg)
    total, cdf = 0.0, 0.0
    for k in range(len(nodes)):
        cdf = cdf + p_pos[k]
        total = total + p_neg[k] * cdf
    return total


def naive_histogram(x, y, r, ry, n_bins=100):
    if r is None:  # unordered pairs from all triplets
        n = len(y)
        has_pos = [any(y[j] == y[i] for j in range(n) if j != i) for i in range(n)]
        has_neg = [any(y[j] != y[i] for j in range(n)) for i in range(n)]
        pos = [(i, j) for i in range(n) for j in range(i + 1, n) if y[i] == y[j] and has_neg[i]]
        neg = [
            (i, j) for i in range(n) for j in range(i + 1, n)
            if y[i] != y[j] and (has_pos[i] or has_pos[j])
        ]
        return naive_histogram_from_pairs(x, x, pos, neg, n_bins)
    pos = [(i, j) for i in range(len(y)) for j in range(len(ry))
           if y[i] == ry[j] and any(ry[k] != y[i] for k in range(len(ry)))]
    neg = [(i, j) for i in range(len(y)) for j in range(len(ry))
           if y[i] != ry[j] and any(ry[k] == y[i] for k in range(len(ry)))]
    return naive_histogram_from_pairs(x, r, pos, neg, n_bins)


def naive_ranked_list(x, y, r, ry, margin=0.4, Tn=2.0, imbalance=0.5, alpha=None, Tp=0.0):
    alpha = 1 + margin / 2 if alpha is None else alpha
    no_ref = r is None
    r, ry = (x, y) if no_ref else (r, ry)
    xs, rs = F.normalize(x, dim=1), F.normalize(r, dim=1)
    total = 0.0
    for i in range(len(y)):
        lp_num, lp_den, ln_num, ln_den = 0.0, 1e-5 * len(ry), 0.0, 1e-5 * len(ry)
        for j in range(len(ry)):
            if no_ref and i == j:
                continue
            d = (xs[i] - rs[j]).norm()
            if y[i] == ry[j] and d > alpha - margin and d > 0:
                w = torch.exp(Tp * (d - (alpha - margin)))
                lp_num, lp_den = lp_num + w * (d - (alpha - margin)), lp_den + w
            if y[i] != ry[j] and 0 < d < alpha:
                w = torch.exp(Tn * (alpha - d))
                ln_num, ln_den = ln_num + w * (alpha - d), ln_den + w
        total = total + (1 - imbalance) * lp_num / lp_den + imbalance * ln_num / ln_den
    return total / len(y)


def naive_pnp(x, y, r, ry, b=2.0, alpha=1.0, anneal=0.01, variant="O"):
    no_ref = r is None
    r, ry = (x, y) if no_ref else (r, ry)
    f = {
        "O": lambda t: t,
        "Ds": lambda t: torch.log(1 + t),
        "Dq": lambda t: 1 / (1 + t) ** alpha,
        "Iu": lambda t: (1 + t) * torch.log(1 + t),
        "Ib": lambda t: (b * t - torch.log(1 + b * t)) / b**2,
    }[variant]
    per_query = []
    for q in range(len(y)):
        positives = [j for j in range(len(ry)) if ry[j] == y[q] and not (no_ref and j == q)]
        if not positives:
            continue
        targets = [r[j] for j in positives] + ([x[q]] if no_ref else [])
        terms = []
        for t in targets:
            rank = x.sum() * 0
            for k in range(len(ry)):
                if ry[k] != y[q]:
                    rank = rank + torch.sigmoid((cos(x[q], r[k]) - cos(x[q], t)) / anneal)
            terms.append(f(rank))
        per_query.append(sum(terms) / len(terms))
    loss = sum(per_query) / len(per_query)
    return 1 - loss if variant == "Dq" else loss


LOOPS = [
    (HistogramLoss, {"n_bins": 8}, naive_histogram),
    (RankedListLoss, {"margin": 0.4, "Tn": 2.0}, naive_ranked_list),
    (RankedListLoss, {"margin": 0.8, "Tn": 1.0, "Tp": 3.0, "imbalance": 0.3, "alpha": 1.1},
     naive_ranked_list),
    (PNPLoss, {}, naive_pnp),
    (PNPLoss, {"variant": "Dq", "alpha": 2.0, "anneal": 0.1}, naive_pnp),
    (PNPLoss, {"variant": "Ib", "b": 3.0, "anneal": 0.05}, naive_pnp),
    (PNPLoss, {"variant": "Ds"}, naive_pnp),
    (PNPLoss, {"variant": "Iu"}, naive_pnp),
]


@pytest.mark.parametrize("with_ref", [False, True])
@pytest.mark.parametrize(
    "ours,kwargs,loop", LOOPS, ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(LOOPS)]
)
def test_against_naive_loop(ours, kwargs, loop, with_ref):
    x, y, r, ry = batch(1)
    if not with_ref:
        r = ry = None
    got = value_and_grads(ours_call(ours(**kwargs), y, None, ry), x, r)
    want = value_and_grads(lambda a, c: loop(a, y, c, ry, **kwargs), x, r)
    assert_same(got, want)


PML = [
    (HistogramLoss, "HistogramLoss", {}),
    (HistogramLoss, "HistogramLoss", {"n_bins": 7}),
    (HistogramLoss, "HistogramLoss", {"delta": 0.3}),
    (RankedListLoss, "RankedListLoss", {"margin": 0.4, "Tn": 5}),
    (RankedListLoss, "RankedListLoss", {"margin": 1.0, "Tn": 3, "Tp": 2, "imbalance": 0.2}),
    (RankedListLoss, "RankedListLoss", {"margin": 0.5, "Tn": 1, "alpha": 1.5}),
    (PNPLoss, "PNPLoss", {}),
    *[(PNPLoss, "PNPLoss", {"variant": v, "anneal": 0.05}) for v in ("Ds", "Dq", "Iu", "Ib")],
]


def pml_tuples(kind, x, y):
    if kind == "pairs":
        return pml_miners.PairMarginMiner(pos_margin=0.3, neg_margin=0.6)(x, y)
    return pml_miners.TripletMarginMiner(margin=0.4)(x, y)


def typed(t):
    return Pairs(*t) if len(t) == 4 else Triplets(*t)


@pytest.mark.parametrize("mode", ["labels", "pairs", "triplets"])
@pytest.mark.parametrize(
    "ours,pml_name,kwargs", PML, ids=[f"{c[1]}-{i}" for i, c in enumerate(PML)]
)
def test_matches_pml(ours, pml_name, kwargs, mode):
    if mode != "labels" and ours is not HistogramLoss:
        pytest.skip(f"pytorch-metric-learning's {pml_name} takes no mined tuples")
    for seed in (2, 3):
        x, y, _, _ = batch(seed)
        t = None if mode == "labels" else pml_tuples(mode, x, y)
        ind = None if t is None else typed(t)
        got = value_and_grads(ours_call(ours(**kwargs), y, ind), x)
        want = value_and_grads(pml_call(getattr(pml_losses, pml_name)(**kwargs), y, t), x)
        # the library computes bin edges in float32 (~1e-8 off)
        assert_same(got, want, atol=1e-6 if ours is HistogramLoss else 1e-7)


EDGE = [PML[0], PML[3], PML[6], PML[8]]


@pytest.mark.parametrize(
    "ours,pml_name,kwargs", EDGE, ids=[f"{c[1]}-{i}" for i, c in enumerate(EDGE)]
)
def test_edge_cases_match_pml(ours, pml_name, kwargs):
    x, y, _, _ = batch(4)
    y[0] = y[1]
    cases = [
        ("single class", x, torch.zeros(N, dtype=torch.long)),
        ("all distinct classes", x, torch.arange(N)),
        ("ties", torch.cat([x[:7], x[:7]]), torch.cat([y[:7], y[:7]])),
        ("two samples", x[:2], torch.tensor([0, 1])),
    ]
    for what, e, lab in cases:
        got = value_and_grads(ours_call(ours(**kwargs), lab), e)
        theirs = pml_call(getattr(pml_losses, pml_name)(**kwargs), lab)
        if what == "ties" and ours is HistogramLoss:
            # a cosine of exactly 1 falls past the library's last bin (IndexError there);
            # here it is the last node, as in the loop
            with pytest.raises(RuntimeError, match="out of bounds"):
                theirs(e, None)
            want = value_and_grads(lambda a, _, lab=lab: naive_histogram(a, lab, None, None), e)
        else:
            want = value_and_grads(theirs, e)
        assert_same(got, want, atol=1e-6)


def test_no_valid_tuple_is_a_connected_zero():
    x, _, _, _ = batch(5)
    for loss in (HistogramLoss(), PNPLoss(), PNPLoss(variant="Dq")):
        for lab in (torch.zeros(N, dtype=torch.long), torch.arange(N)):
            if isinstance(loss, PNPLoss) and lab.max() == 0:
                continue  # one class: every positive has rank 0, a genuine zero
            v, g, _ = value_and_grads(ours_call(loss, lab), x)
            assert v == 0 and torch.all(g == 0)


def test_histogram_empty_mined_sets_and_pair_filtering():
    x, y, _, _ = batch(6)
    empty = torch.zeros(0, dtype=torch.long)
    for t in ((empty,) * 3, (empty,) * 4):
        v, g, _ = value_and_grads(ours_call(HistogramLoss(), y, typed(t)), x)
        want = pml_losses.HistogramLoss()(x, y, t)
        assert v == 0 == want and torch.all(g == 0)
    # positive pairs without a negative pair on the same anchor drop out (and vice versa)
    pairs = Pairs(torch.tensor([1, 2]), torch.tensor([5, 6]), torch.tensor([3]), torch.tensor([4]))
    assert HistogramLoss()(x, y, indices=pairs) == 0
    # a pair listed twice, or in both orders, counts once
    a = Triplets(torch.tensor([1, 5]), torch.tensor([5, 1]), torch.tensor([3, 3]))
    b = Triplets(torch.tensor([1]), torch.tensor([5]), torch.tensor([3]))
    c = Triplets(torch.tensor([1, 5]), torch.tensor([5, 1]), torch.tensor([3, 4]))
    loss = HistogramLoss(n_bins=4)
    torch.testing.assert_close(loss(x, y, indices=a), loss(x, y, indices=b))
    torch.testing.assert_close(
        HistogramLoss(n_bins=4)(x, y, indices=c),
        pml_losses.HistogramLoss(n_bins=4)(x, y, tuple(c)),
    )


def test_histogram_parameters():
    assert HistogramLoss().delta == 0.02 and HistogramLoss().n_nodes == 101
    assert HistogramLoss(delta=0.5).n_nodes == 5
    with pytest.raises(ValueError, match="delta"):
        HistogramLoss(n_bins=10, delta=0.3)
    with pytest.raises(ValueError, match="n_bins"):
        HistogramLoss(n_bins=0)


def test_ranked_list_and_pnp_parameters():
    with pytest.raises(ValueError, match="imbalance"):
        RankedListLoss(margin=0.4, Tn=1, imbalance=1.5)
    with warnings.catch_warnings():  # no overflow warning: the weights are stabilized
        warnings.simplefilter("error")
        RankedListLoss(margin=0.4, Tn=10)
    assert RankedListLoss(margin=0.4, Tn=1).alpha == pytest.approx(1.2)
    with pytest.raises(ValueError, match="variant"):
        PNPLoss(variant="X")
    with pytest.raises(TypeError, match="CosineSimilarity"):
        PNPLoss(distance=EuclideanDistance())
    x, y, _, _ = batch(7)
    for loss in (RankedListLoss(margin=0.4, Tn=1), PNPLoss()):
        with pytest.raises(ValueError, match="tuple indices"):
            loss(x, y, indices=Triplets(torch.tensor([1]), torch.tensor([2]), torch.tensor([3])))


@pytest.mark.parametrize(
    "loss", [HistogramLoss(n_bins=10), RankedListLoss(margin=0.4, Tn=2), PNPLoss(anneal=0.1)],
    ids=["histogram", "ranked_list", "pnp"],
)
def test_chunked_equals_one_chunk(loss, monkeypatch):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(160, DIM, generator=g, dtype=torch.float64)
    y = torch.randint(0, 16, (160,), generator=g)
    whole = value_and_grads(ours_call(loss, y), x)
    monkeypatch.setattr(chunking, "DEFAULT_BUDGET", 4096)
    monkeypatch.setattr(chunking, "EAGER_BUDGET", 1024)
    monkeypatch.setattr(chunking, "EAGER_MIN_ROWS", 8)
    parts = value_and_grads(ours_call(loss, y), x)
    assert_same(whole, parts)
