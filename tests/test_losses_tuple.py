"""Pair- and tuple-based losses against loop-based fp64 references written from the papers.

Each reference loops over anchors / pairs / tuples and uses the formula as printed
(with pytorch-metric-learning's reduction where the paper leaves it open). The
pytorch-metric-learning comparisons live in ``test_losses_tuple_pml.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dmlkit.distances import CosineSimilarity, DotProductSimilarity, EuclideanDistance
from dmlkit.functional.tuples import Pairs, Quadruplets, Triplets
from dmlkit.losses import (
    AngularLoss,
    CircleLoss,
    FastAPLoss,
    GeneralizedLiftedStructureLoss,
    LiftedStructureLoss,
    MarginLoss,
    MultiSimilarityLoss,
    NPairsLoss,
    NTXentLoss,
    QuadrupletLoss,
    SupConLoss,
)

N, DIM = 10, 5


def data(seed: int = 0, n: int = N, classes: int = 3, ref: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    if not ref:
        return x, y, None, None
    r = torch.randn(n + 3, DIM, generator=g, dtype=torch.float64)
    ry = torch.randint(0, classes, (n + 3,), generator=g)
    return x, y, r, ry


def relations(x, y, r, ry):
    """Reference set (as Python rows) and ``pos(i, j)`` / ``neg(i, j)`` predicates."""
    same_set = r is None
    r, ry = (x, y) if same_set else (r, ry)
    r = r.tolist()

    def pos(i, j):
        return bool(y[i] == ry[j]) and not (same_set and i == j)

    def neg(i, j):
        return bool(y[i] != ry[j])

    return r, ry, pos, neg


def dot(u, v):
    return sum(a * b for a, b in zip(u, v, strict=True))


def unit(u):
    u = u.tolist() if isinstance(u, torch.Tensor) else u
    norm = math.sqrt(dot(u, u))
    return [a / norm for a in u]


def cos(u, v):
    return dot(unit(u), unit(v))


def euc(u, v):
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(unit(u), unit(v), strict=True)))


def mean(values):
    return sum(values) / len(values) if values else 0.0


def mean_positive(values):
    kept = [v for v in values if v > 0]
    return sum(kept) / len(kept) if kept else 0.0


def lse(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


# -- naive references ------------------------------------------------------------------------
def ref_ntxent(x, y, r, ry, t=0.07):
    r, ry, pos, neg = relations(x, y, r, ry)
    x = x.tolist()
    terms = []
    for i in range(len(x)):
        negs = [cos(x[i], r[k]) / t for k in range(len(r)) if neg(i, k)]
        for j in range(len(r)):
            if pos(i, j):
                s = cos(x[i], r[j]) / t
                terms.append(-s + lse([s] + negs))
    return mean(terms)


def ref_supcon(x, y, r, ry, t=0.1):
    r, ry, pos, neg = relations(x, y, r, ry)
    x = x.tolist()
    losses = []
    for i in range(len(x)):
        ps = [j for j in range(len(r)) if pos(i, j)]
        if not ps:
            continue
        norm = lse([cos(x[i], r[a]) / t for a in range(len(r)) if pos(i, a) or neg(i, a)])
        losses.append(-mean([cos(x[i], r[j]) / t - norm for j in ps]))
    return mean_positive(losses)


def ref_multi_similarity(x, y, r, ry, alpha=2.0, beta=50.0, base=0.5):
    r, ry, pos, neg = relations(x, y, r, ry)
    x = x.tolist()
    total = 0.0
    for i in range(len(x)):
        sp = sum(math.exp(-alpha * (cos(x[i], r[j]) - base)) for j in range(len(r)) if pos(i, j))
        sn = sum(math.exp(beta * (cos(x[i], r[k]) - base)) for k in range(len(r)) if neg(i, k))
        total += math.log(1 + sp) / alpha + math.log(1 + sn) / beta
    return total / len(x)


def ref_circle(x, y, r, ry, m=0.4, gamma=80.0):
    r, ry, pos, neg = relations(x, y, r, ry)
    x = x.tolist()
    losses = []
    for i in range(len(x)):
        lp = [
            -gamma * max(1 + m - s, 0) * (s - (1 - m))
            for s in (cos(x[i], r[j]) for j in range(len(r)) if pos(i, j))
        ]
        ln = [
            gamma * max(s + m, 0) * (s - m)
            for s in (cos(x[i], r[k]) for k in range(len(r)) if neg(i, k))
        ]
        if lp and ln:
            losses.append(math.log1p(math.exp(lse(lp) + lse(ln))))
    return mean_positive(losses)


def ref_lifted(x, y, r, ry, neg_margin=1.0, pos_margin=0.0):
    """Song et al. 2016 smooth lifted loss per positive pair (i, j)."""
    r, ry, pos, neg = relations(x, y, r, ry)
    x = x.tolist()
    terms = []
    for i in range(len(x)):
        for j in range(len(r)):
            if not pos(i, j):
                continue
            negs = [neg_margin - euc(x[i], r[k]) for k in range(len(r)) if neg(i, k)]
            if j != i and j < len(x):  # the positive's own negatives (as a query)
                negs += [neg_margin - euc(x[j], r[k]) for k in range(len(r)) if neg(j, k)]
            j_term = lse(negs) if negs else 0.0
            terms.append(max(j_term + euc(x[i], r[j]) - pos_margin, 0.0) ** 2 / 2)
    return mean(terms)


def ref_generalized_lifted(x, y, r, ry, neg_margin=1.0, pos_margin=0.0):
    r, ry, pos, neg = relations(x, y, r, ry)
    x = x.tolist()
    total = 0.0
    for i in range(len(x)):
        ps = [euc(x[i], r[j]) - pos_margin for j in range(len(r)) if pos(i, j)]
        ns = [neg_margin - euc(x[i], r[k]) for k in range(len(r)) if neg(i, k)]
        total += max((lse(ps) if ps else 0.0) + (lse(ns) if ns else 0.0), 0.0)
    return total / len(x)


def ref_angular(x, y, r, ry, alpha=40.0):
    r, ry, pos, neg = relations(x, y, r, ry)
    x = x.tolist()
    t2 = math.tan(math.radians(alpha)) ** 2
    xu = [unit(v) for v in x]
    ru = [unit(v) for v in r]
    terms = []
    for i in range(len(x)):
        for j in range(len(r)):
            if pos(i, j):
                xa, xp = xu[i], ru[j]
                f = [
                    4 * t2 * (dot(xa, ru[k]) + dot(xp, ru[k])) - 2 * (1 + t2) * dot(xa, xp)
                    for k in range(len(r))
                    if neg(i, k)
                ]
                terms.append(math.log(1 + sum(math.exp(v) for v in f)))
    return mean(terms)


def ref_margin(x, y, r, ry, margin=0.2, beta=float(torch.tensor(1.2))):
    """Wu et al. 2017 per triplet; beta is the loss's fp32 parameter value."""
    r, ry, pos, neg = relations(x, y, r, ry)
    x = x.tolist()
    total, nonzero = 0.0, 0
    for i in range(len(x)):
        for j in range(len(r)):
            for k in range(len(r)):
                if pos(i, j) and neg(i, k):
                    lp = max(euc(x[i], r[j]) - beta + margin, 0)
                    ln = max(beta - euc(x[i], r[k]) + margin, 0)
                    total += lp + ln
                    nonzero += (lp > 0) + (ln > 0)
    return total / nonzero if nonzero else 0.0


def ref_n_pairs(x, y):
    """Sohn 2016 with one pair per class: the first anchor (with a positive) of each class."""
    chosen = {}
    for i in range(len(x)):
        for j in range(len(x)):
            if i != j and y[i] == y[j] and int(y[i]) not in chosen:
                chosen[int(y[i])] = (i, j)
    pairs = list(chosen.values())
    unit = [v / v.norm() for v in x]
    losses = []
    for a, p in pairs:
        logits = [float(unit[a] @ unit[q]) for _, q in pairs]
        losses.append(lse(logits) - float(unit[a] @ unit[p]))
    return mean(losses)


def ref_fast_ap(x, y, num_bins=10):
    unit = [v / v.norm() for v in x]
    centers = [4.0 * b / num_bins for b in range(num_bins + 1)]
    delta = 4.0 / num_bins
    losses = []
    for i in range(len(x)):
        ps = [j for j in range(len(x)) if j != i and y[j] == y[i]]
        if not ps:
            continue
        hp = [0.0] * len(centers)
        hall = [0.0] * len(centers)
        for j in range(len(x)):
            if j == i:
                continue
            d = float(((unit[i] - unit[j]) ** 2).sum())
            for b, c in enumerate(centers):
                w = max(1 - abs(d - c) / delta, 0)
                hall[b] += w
                if y[j] == y[i]:
                    hp[b] += w
        ap, cum_p, cum = 0.0, 0.0, 0.0
        for b in range(len(centers)):
            cum_p += hp[b]
            cum += hall[b]
            if hp[b] * cum_p > 0 and cum > 0:
                ap += hp[b] * cum_p / cum
        losses.append(1 - ap / len(ps))
    return mean(losses)


def ref_quadruplet(x, y, r, ry, margin=0.2, margin2=0.1):
    r, ry, pos, neg = relations(x, y, r, ry)
    x = x.tolist()
    t1, t2 = [], []
    for a in range(len(x)):
        for p in range(len(r)):
            if not pos(a, p):
                continue
            eap = euc(x[a], r[p])
            for n in range(len(r)):
                if not neg(a, n):
                    continue
                t1.append(max(eap - euc(x[a], r[n]) + margin, 0))
                for n2 in range(len(r)):
                    if ry[n2] != y[a] and ry[n2] != ry[n]:
                        t2.append(max(eap - euc(r[n], r[n2]) + margin2, 0))
    return mean_positive(t1) + mean_positive(t2)


CASES = [
    ("ntxent", NTXentLoss, ref_ntxent),
    ("supcon", SupConLoss, ref_supcon),
    ("multi_similarity", MultiSimilarityLoss, ref_multi_similarity),
    ("circle", CircleLoss, ref_circle),
    ("lifted_structure", LiftedStructureLoss, ref_lifted),
    ("generalized_lifted_structure", GeneralizedLiftedStructureLoss, ref_generalized_lifted),
    ("angular", AngularLoss, ref_angular),
    ("margin", MarginLoss, ref_margin),
    ("quadruplet", QuadrupletLoss, ref_quadruplet),
]


@pytest.mark.parametrize("ref", [False, True], ids=["batch", "ref"])
@pytest.mark.parametrize("name,cls,reference", CASES, ids=[c[0] for c in CASES])
def test_matches_loop_reference(name, cls, reference, ref):
    for seed in range(3):
        x, y, r, ry = data(seed, ref=ref)
        got = cls()(x, y, ref_embeddings=r, ref_labels=ry)
        want = reference(x, y, r, ry)
        assert got.item() == pytest.approx(want, rel=1e-9, abs=1e-12), (name, seed)


def test_n_pairs_and_fast_ap_match_loop_reference():
    for seed in range(3):
        x, y, _, _ = data(seed, n=12, classes=4)
        assert NPairsLoss()(x, y).item() == pytest.approx(ref_n_pairs(x, y), rel=1e-9)
        assert FastAPLoss()(x, y).item() == pytest.approx(ref_fast_ap(x, y), rel=1e-9)


def test_gradient_matches_autograd_of_reference_formula():
    """A second, tensor-valued reference for gradients: SupCon written per anchor in torch."""
    x, y, _, _ = data(4)
    x.requires_grad_(True)
    got = SupConLoss(temperature=0.2)(x, y)
    (g_got,) = torch.autograd.grad(got, x)
    s = F.normalize(x, dim=1) @ F.normalize(x, dim=1).T / 0.2
    losses = []
    for i in range(len(x)):
        others = [a for a in range(len(x)) if a != i]
        ps = [j for j in others if y[j] == y[i]]
        if ps:
            norm = torch.logsumexp(s[i, others], 0)
            losses.append(-torch.stack([s[i, j] - norm for j in ps]).mean())
    want = torch.stack(losses).mean()
    (g_want,) = torch.autograd.grad(want, x)
    assert torch.allclose(got, want) and torch.allclose(g_got, g_want, atol=1e-10)


# -- indices ---------------------------------------------------------------------------------
def test_ntxent_with_pairs_uses_the_mined_negatives_of_each_anchor():
    x, y, _, _ = data(5)
    pairs = Pairs(
        torch.tensor([0, 0, 3]),
        torch.tensor([1, 2, 4]),
        torch.tensor([0, 0, 3, 3]),
        torch.tensor([5, 6, 7, 7]),
    )
    t = 0.5
    want = []
    for a, p in zip(pairs.a1.tolist(), pairs.p.tolist(), strict=True):
        negs = [
            cos(x[a], x[n]) / t
            for a2, n in zip(pairs.a2.tolist(), pairs.n.tolist(), strict=True)
            if a2 == a
        ]
        s = cos(x[a], x[p]) / t
        want.append(lse([s] + negs) - s)
    got = NTXentLoss(temperature=t)(x, y, indices=pairs)
    assert got.item() == pytest.approx(mean(want), rel=1e-9)


def test_quadruplet_indices_both_terms_and_triplets_first_term_only():
    x, y, _, _ = data(6)
    q = Quadruplets(
        torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5]), torch.tensor([6, 7])
    )
    loss = QuadrupletLoss(margin=0.5, margin2=0.4)
    t1 = [max(euc(x[a], x[p]) - euc(x[a], x[n]) + 0.5, 0) for a, p, n, _ in zip(*q, strict=True)]
    t2 = [max(euc(x[a], x[p]) - euc(x[n], x[m]) + 0.4, 0) for a, p, n, m in zip(*q, strict=True)]
    got = loss(x, indices=q)
    assert got.item() == pytest.approx(mean_positive(t1) + mean_positive(t2), rel=1e-9)
    got3 = loss(x, indices=Triplets(*q[:3]))
    assert got3.item() == pytest.approx(mean_positive(t1), rel=1e-9)


def test_n_pairs_indices_without_labels_take_each_pair_as_a_class():
    x, _, _, _ = data(7)
    a, p = torch.tensor([0, 2, 4]), torch.tensor([1, 3, 5])
    got = NPairsLoss()(x, indices=Pairs(a, p, a[:0], p[:0]))
    unit = F.normalize(x, dim=1)
    logits = unit[a] @ unit[p].T
    want = F.cross_entropy(logits, torch.arange(3))
    assert torch.allclose(got, want)


def test_margin_learnable_beta_gets_gradients():
    x, y, _, _ = data(8)
    for num_classes in (None, 3):
        loss = MarginLoss(learn_beta=True, nu=0.1, num_classes=num_classes).double()
        assert isinstance(loss.betas, torch.nn.Parameter)
        loss(x, y).backward()
        assert loss.betas.grad is not None and loss.betas.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="num_classes"):
        MarginLoss(num_classes=2)(x, torch.full_like(y, 2))


# -- numerics ----------------------------------------------------------------------------------
ALL = [c[1] for c in CASES] + [NPairsLoss, FastAPLoss]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_degenerate_batches_give_finite_values_and_gradients(cls):
    x = torch.randn(8, DIM, requires_grad=True)
    for y in (torch.arange(8), torch.zeros(8, dtype=torch.long)):  # no positives / no negatives
        out = cls()(x, y)
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(x.grad).all()
    # half precision in, fp32 math inside
    xh = torch.randn(8, DIM).half().requires_grad_(True)
    out = cls()(xh, torch.arange(8) % 3)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(xh.grad).all()


@pytest.mark.parametrize("cls", [NTXentLoss, SupConLoss], ids=lambda c: c.__name__)
def test_tiny_temperature_stays_finite(cls):
    x = torch.randn(16, DIM, requires_grad=True)
    out = cls(temperature=1e-4)(x, torch.arange(16) % 4)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(x.grad).all()


def test_distances_other_than_the_default():
    x, y, _, _ = data(9)
    for cls in (NTXentLoss, SupConLoss, MultiSimilarityLoss, LiftedStructureLoss, MarginLoss):
        for dist in (EuclideanDistance(), CosineSimilarity(), DotProductSimilarity()):
            out = cls(distance=dist)(x.clone().requires_grad_(True), y)
            assert torch.isfinite(out)
    with pytest.raises(ValueError, match="similarity"):
        CircleLoss(distance=EuclideanDistance())
    with pytest.raises(ValueError, match="Euclidean"):
        FastAPLoss(distance=CosineSimilarity())


@pytest.mark.parametrize(
    "cls", [NTXentLoss, SupConLoss, MultiSimilarityLoss, CircleLoss, GeneralizedLiftedStructureLoss]
)
def test_multi_label_relation_equals_the_same_pairs_given_as_indices(cls):
    """Labels go through ``same_label``: multi-labels (share any) work like explicit pairs."""
    x, _, _, _ = data(10)
    g = torch.Generator().manual_seed(3)
    multi = torch.rand(N, 3, generator=g) < 0.4  # (n, C) bool
    multi[~multi.any(dim=1), 0] = True  # every item holds a label
    same = (multi.float() @ multi.float().T) > 0
    eye = torch.eye(N, dtype=torch.bool)
    a1, p = torch.where(same & ~eye)
    a2, n = torch.where(~same)
    by_labels = cls()(x, multi)
    by_pairs = cls()(x, indices=Pairs(a1, p, a2, n))
    assert torch.allclose(by_labels, by_pairs)
