"""Dynamic soft-margin, intra-pair variance, instance, VICReg, TCM and Smooth-AP losses.

Each against a naive fp64 loop and against pytorch-metric-learning's class of the same
name: values and gradients to 1e-5, on labels, on mined triplets and pairs, with
``ref_embeddings`` where the loss has that form; plus empty mined sets, one class, ties.
"""

from __future__ import annotations

import math

import pytest
import torch

from dmlkit.distances import CosineSimilarity, EuclideanDistance
from dmlkit.functional.tuples import Pairs, Triplets
from dmlkit.losses import (
    DynamicSoftMarginLoss,
    InstanceLoss,
    IntraPairVarianceLoss,
    SmoothAPLoss,
    ThresholdConsistentMarginLoss,
    VICRegLoss,
)
from dmlkit.miners import TripletMarginMiner

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_distances = pytest.importorskip("pytorch_metric_learning.distances")

N, M, DIM = 12, 10, 5


def batch(seed: int, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, DIM, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (N,), generator=g)
    r = torch.randn(M, DIM, generator=g, dtype=torch.float64)
    ry = torch.randint(0, classes, (M,), generator=g)
    return x, y, r, ry


def vg(fn, x, r=None):
    """Value and gradients of ``fn(x, r)`` with respect to fresh leaves."""
    x = x.clone().requires_grad_(True)
    r = None if r is None else r.clone().requires_grad_(True)
    v = fn(x, r)
    v.backward()
    grads = (x.grad, None if r is None else r.grad)
    return (v.detach(), *(torch.zeros_like(t) if g is None else g for g, t in
                          zip(grads, (x, r if r is not None else x), strict=True)))


def assert_same(a, b):
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u.to(torch.float64), v.to(torch.float64),
                                   rtol=1e-5, atol=1e-7)


def unit(v):
    return v / v.norm()


def cos(a, b):
    return (unit(a) * unit(b)).sum()


def euclid(a, b):
    return (unit(a) - unit(b)).norm()


def pair_lists(y, ry=None):
    """All (i, j) positive and negative pairs, row-major, as Python lists."""
    same_set = ry is None
    ry = y if ry is None else ry
    pos = [(i, j) for i in range(len(y)) for j in range(len(ry))
           if y[i] == ry[j] and not (same_set and i == j)]
    neg = [(i, j) for i in range(len(y)) for j in range(len(ry)) if y[i] != ry[j]]
    return pos, neg


def triplet_list(y, ry=None):
    pos, neg = pair_lists(y, ry)
    return [(a, p, n) for a, p in pos for a2, n in neg if a2 == a]


# -- intra-pair variance ---------------------------------------------------------------------
def ipv_loop(x, r, pos, neg, pos_eps=0.01, neg_eps=0.01, sim=True):
    r = x if r is None else r
    f = cos if sim else euclid
    sp = [f(x[i], r[j]) for i, j in pos]
    sn = [f(x[i], r[j]) for i, j in neg]
    if len(sp) <= 1 and len(sn) <= 1:
        return (x * 0).sum()
    total = (x * 0).sum()
    if sp:
        mu = sum(sp) / len(sp)
        terms = [torch.relu((1 - pos_eps) * mu - s if sim else s - (1 + pos_eps) * mu) ** 2
                 for s in sp]
        total = total + sum(terms) / len(terms)
    if sn:
        mu = sum(sn) / len(sn)
        terms = [torch.relu(s - (1 + neg_eps) * mu if sim else (1 - neg_eps) * mu - s) ** 2
                 for s in sn]
        total = total + sum(terms) / len(terms)
    return total


@pytest.mark.parametrize("sim", [True, False])
@pytest.mark.parametrize("with_ref", [False, True])
def test_intra_pair_variance_loop_and_pml(sim, with_ref):
    x, y, r, ry = batch(0)
    r, ry = (r, ry) if with_ref else (None, None)
    dist = CosineSimilarity() if sim else EuclideanDistance()
    pml_dist = pml_distances.CosineSimilarity() if sim else pml_distances.LpDistance()
    ours = IntraPairVarianceLoss(pos_eps=0.05, neg_eps=0.2, distance=dist)
    theirs = pml_losses.IntraPairVarianceLoss(pos_eps=0.05, neg_eps=0.2, distance=pml_dist)
    pos, neg = pair_lists(y.tolist(), None if ry is None else ry.tolist())
    want = vg(lambda e, f: ipv_loop(e, f, pos, neg, 0.05, 0.2, sim), x, r)
    got = vg(lambda e, f: ours(e, y, ref_embeddings=f, ref_labels=ry), x, r)
    pml = vg(lambda e, f: theirs(e, y, None, f, ry), x, r)
    assert_same(got, want)
    assert_same(got, pml)
    # mined triplets (each gives a positive and a negative pair, duplicates kept)
    trip = TripletMarginMiner(margin=0.3)(x, y, r, ry) if with_ref else \
        TripletMarginMiner(margin=0.3)(x, y)
    pos_t = list(zip(trip.anchor.tolist(), trip.positive.tolist(), strict=True))
    neg_t = list(zip(trip.anchor.tolist(), trip.negative.tolist(), strict=True))
    want = vg(lambda e, f: ipv_loop(e, f, pos_t, neg_t, 0.05, 0.2, sim), x, r)
    got = vg(lambda e, f: ours(e, y, indices=trip, ref_embeddings=f, ref_labels=ry), x, r)
    pml = vg(lambda e, f: theirs(e, y, tuple(trip), f, ry), x, r)
    assert_same(got, want)
    assert_same(got, pml)


def test_intra_pair_variance_edge_cases():
    x, y, _, _ = batch(1)
    loss = IntraPairVarianceLoss()
    e = torch.zeros(0, dtype=torch.long)
    xg = x.clone().requires_grad_(True)
    out = loss(xg, y, indices=Pairs(e, e, e, e))
    out.backward()
    assert out.item() == 0.0 and torch.all(xg.grad == 0)
    # one positive and one negative pair: pytorch-metric-learning's "at most one pair" zero
    one = Pairs(torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([2]))
    assert loss(x, y, indices=one).item() == 0.0
    assert pml_losses.IntraPairVarianceLoss()(x, y, tuple(one)).item() == 0.0
    # one class: only positives; tied embeddings: all similarities equal
    one_class = torch.zeros(N, dtype=torch.long)
    torch.testing.assert_close(loss(x, one_class),
                               pml_losses.IntraPairVarianceLoss()(x, one_class))
    tied = x[:1].repeat(N, 1)
    torch.testing.assert_close(loss(tied, y), pml_losses.IntraPairVarianceLoss()(tied, y))


# -- threshold-consistent margin ---------------------------------------------------------------
def tcm_loop(x, r, pos, neg, lp=1.0, lm=1.0, mp=0.9, mm=0.5):
    r = x if r is None else r
    total = (x * 0).sum()
    hard_p = [mp - cos(x[i], r[j]) for i, j in pos if cos(x[i], r[j]) <= mp]
    hard_n = [cos(x[i], r[j]) - mm for i, j in neg if cos(x[i], r[j]) >= mm]
    if hard_p:
        total = total + lp * sum(hard_p) / len(hard_p)
    if hard_n:
        total = total + lm * sum(hard_n) / len(hard_n)
    return total


@pytest.mark.parametrize("params", [{}, {"lambda_plus": 0.5, "lambda_minus": 2.0,
                                         "margin_plus": 0.3, "margin_minus": -0.2}])
def test_tcm_loop_and_pml(params):
    x, y, r, ry = batch(2)
    ours = ThresholdConsistentMarginLoss(**params)
    theirs = pml_losses.ThresholdConsistentMarginLoss(**params)
    loop_kw = {"lp": params.get("lambda_plus", 1.0), "lm": params.get("lambda_minus", 1.0),
               "mp": params.get("margin_plus", 0.9), "mm": params.get("margin_minus", 0.5)}
    pos, neg = pair_lists(y.tolist())
    want = vg(lambda e, f: tcm_loop(e, None, pos, neg, **loop_kw), x)
    got = vg(lambda e, f: ours(e, y), x)
    assert_same(got, want)
    assert_same(got, vg(lambda e, f: theirs(e, y), x))
    trip = TripletMarginMiner(margin=0.5, distance=CosineSimilarity())(x, y)
    for ind in (trip, Pairs(trip.anchor, trip.positive, trip.anchor, trip.negative)):
        got = vg(lambda e, f, ind=ind: ours(e, y, indices=ind), x)
        assert_same(got, vg(lambda e, f, ind=ind: theirs(e, y, tuple(ind)), x))
    # reference set: positives and negatives come from it (loop only: pytorch-metric-learning
    # reads them from the batch there)
    pos, neg = pair_lists(y.tolist(), ry.tolist())
    want = vg(lambda e, f: tcm_loop(e, f, pos, neg, **loop_kw), x, r)
    assert_same(vg(lambda e, f: ours(e, y, ref_embeddings=f, ref_labels=ry), x, r), want)


def test_tcm_edges_and_distance_check():
    x, y, _, _ = batch(3)
    with pytest.raises(TypeError, match="CosineSimilarity"):
        ThresholdConsistentMarginLoss(distance=EuclideanDistance())
    e = torch.zeros(0, dtype=torch.long)
    assert ThresholdConsistentMarginLoss()(x, y, indices=Triplets(e, e, e)).item() == 0.0
    one_class = torch.zeros(N, dtype=torch.long)
    torch.testing.assert_close(ThresholdConsistentMarginLoss()(x, one_class),
                               pml_losses.ThresholdConsistentMarginLoss()(x, one_class))


# -- instance ---------------------------------------------------------------------------------
def instance_loop(x, y, gamma):
    ids = sorted(set(y))
    total = (x * 0).sum()
    for i in range(len(y)):
        logits = torch.stack([gamma * cos(x[i], x[j]) for j in range(len(y))])
        total = total + torch.logsumexp(logits, 0) - logits[ids.index(y[i])]
    return total / len(y)


@pytest.mark.parametrize("gamma", [64.0, 2.5])
def test_instance_loop_and_pml(gamma):
    x, y, _, _ = batch(4, classes=5)
    y = y + 7  # labels are ranked among the batch's distinct labels
    want = vg(lambda e, f: instance_loop(e, y.tolist(), gamma), x)
    got = vg(lambda e, f: InstanceLoss(gamma=gamma)(e, y), x)
    assert_same(got, want)
    assert_same(got, vg(lambda e, f: pml_losses.InstanceLoss(gamma=gamma)(e, y), x))
    # instance ids (one sample per class) and a single class
    for labels in (torch.arange(N), torch.zeros(N, dtype=torch.long)):
        assert_same(vg(lambda e, f, lab=labels: InstanceLoss(gamma=gamma)(e, lab), x),
                    vg(lambda e, f, lab=labels: pml_losses.InstanceLoss(gamma=gamma)(e, lab), x))


def test_instance_refuses_what_it_cannot_use():
    x, y, r, ry = batch(5)
    with pytest.raises(ValueError, match="labels"):
        InstanceLoss()(x)
    with pytest.raises(ValueError, match="indices"):
        InstanceLoss()(x, y, indices=Triplets(*(torch.zeros(1, dtype=torch.long),) * 3))
    with pytest.raises(ValueError, match="ref_embeddings"):
        InstanceLoss()(x, y, ref_embeddings=r, ref_labels=ry)
    with pytest.raises(TypeError, match="CosineSimilarity"):
        InstanceLoss(distance=EuclideanDistance())


# -- VICReg ---------------------------------------------------------------------------------
def vicreg_loop(z, z2, lam, mu, nu, eps):
    n, d = z.shape
    inv = sum((z[i, k] - z2[i, k]) ** 2 for i in range(n) for k in range(d)) / (n * d)

    def var_term(a):
        total = 0.0
        for k in range(d):
            m = sum(a[i, k] for i in range(n)) / n
            var = sum((a[i, k] - m) ** 2 for i in range(n)) / (n - 1)
            total = total + torch.relu(1 - torch.sqrt(var + eps)) / 2
        return total / d

    def cov_term(a):
        means = [sum(a[i, k] for i in range(n)) / n for k in range(d)]
        total = 0.0
        for k in range(d):
            for m_ in range(d):
                if k != m_:
                    c = sum((a[i, k] - means[k]) * (a[i, m_] - means[m_]) for i in range(n))
                    total = total + (c / (n - 1)) ** 2
        return total / d

    return lam * inv + mu * (var_term(z) + var_term(z2)) + nu * (cov_term(z) + cov_term(z2))


@pytest.mark.parametrize("params", [{}, {"invariance_lambda": 2.0, "variance_mu": 3.0,
                                         "covariance_v": 0.5, "eps": 1e-2}])
def test_vicreg_loop_and_pml(params):
    x, _, _, _ = batch(6)
    g = torch.Generator().manual_seed(9)
    view2 = 0.3 * x + 0.2 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    full = {"invariance_lambda": 25.0, "variance_mu": 25.0, "covariance_v": 1.0, "eps": 1e-4}
    full.update(params)
    want = vg(lambda e, f: vicreg_loop(e, f, *full.values()), x, view2)
    got = vg(lambda e, f: VICRegLoss(**params)(e, ref_embeddings=f), x, view2)
    assert_same(got, want)
    assert_same(got, vg(lambda e, f: pml_losses.VICRegLoss(**params)(e, ref_emb=f), x, view2))


def test_vicreg_inputs():
    x, y, r, _ = batch(7)
    with pytest.raises(ValueError, match="labels"):
        VICRegLoss()(x, y, ref_embeddings=x)
    with pytest.raises(ValueError, match="ref_embeddings"):
        VICRegLoss()(x)
    with pytest.raises(ValueError, match="shapes"):
        VICRegLoss()(x, ref_embeddings=r)
    with pytest.raises(ValueError, match="2 rows"):
        VICRegLoss()(x[:1], ref_embeddings=x[:1])
    # identical views: no invariance term left; tied rows: zero variance everywhere
    tied = x[:1].repeat(N, 1)
    torch.testing.assert_close(VICRegLoss()(tied, ref_embeddings=tied),
                               pml_losses.VICRegLoss()(tied, ref_emb=tied))


# -- Smooth-AP --------------------------------------------------------------------------------
def smooth_ap_loop(x, groups, tau, weights=None):
    n = len(groups)
    sims = [[cos(x[i], x[j]) for j in range(n)] for i in range(n)]
    total = (x * 0).sum()
    for q in range(n):
        members = [j for j in range(n) if groups[j] == groups[q]]
        ap = 0.0
        for p in members:
            def sig(k, q=q, p=p):
                return torch.sigmoid((sims[q][k] - sims[q][p]) / tau)
            pos_rank = 1 + sum(sig(k) for k in members if k != p)
            all_rank = 1 + sum(sig(k) for k in range(n) if k != p)
            ap = ap + pos_rank / all_rank
        w = 1.0 if weights is None else weights[q]
        total = total + (1 - ap / len(members)) * w
    return total / n


@pytest.mark.parametrize("labels", [
    torch.arange(9) // 3,          # sorted, classes == samples per class: blocks are classes
    torch.arange(12) % 4,          # interleaved
    torch.arange(12) // 4,         # 3 classes x 4 samples
    torch.zeros(6, dtype=torch.long),
])
@pytest.mark.parametrize("tau", [0.01, 0.5])
def test_smooth_ap_loop_and_pml(labels, tau):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(len(labels), DIM, generator=g, dtype=torch.float64)
    n, u = len(labels), int(labels.unique().numel())
    blocks = (torch.arange(n) // (n // (n // u))).tolist()
    want = vg(lambda e, f: smooth_ap_loop(e, blocks, tau), x)
    got = vg(lambda e, f: SmoothAPLoss(temperature=tau)(e, labels), x)
    assert_same(got, want)
    assert_same(got, vg(lambda e, f: pml_losses.SmoothAPLoss(temperature=tau)(e, labels), x))
    # grouping by labels
    want = vg(lambda e, f: smooth_ap_loop(e, labels.tolist(), tau), x)
    assert_same(vg(lambda e, f: SmoothAPLoss(tau, grouping="labels")(e, labels), x), want)
    # mined tuples weigh the queries
    trip = TripletMarginMiner(margin=1.0)(x, labels)
    got = vg(lambda e, f: SmoothAPLoss(temperature=tau)(e, labels, indices=trip), x)
    assert_same(got, vg(lambda e, f: pml_losses.SmoothAPLoss(temperature=tau)(
        e, labels, tuple(trip)), x))


def test_smooth_ap_inputs():
    x, _, r, _ = batch(9)
    with pytest.raises(ValueError, match="same number"):
        SmoothAPLoss()(x[:7], torch.tensor([0, 0, 0, 1, 1, 2, 2]))
    with pytest.raises(ValueError, match="ref_embeddings"):
        y = torch.arange(N) % 3
        SmoothAPLoss()(x, y, ref_embeddings=r, ref_labels=torch.arange(M) % 3)
    with pytest.raises(TypeError, match="CosineSimilarity"):
        SmoothAPLoss(distance=EuclideanDistance())
    # empty mined set: all weights 1 (pytorch-metric-learning's convert_to_weights)
    y = torch.arange(N) // 4
    e = torch.zeros(0, dtype=torch.long)
    empty = Triplets(e, e, e)
    torch.testing.assert_close(SmoothAPLoss()(x, y, indices=empty), SmoothAPLoss()(x, y))
    # tied embeddings
    tied = x[:1].repeat(N, 1)
    torch.testing.assert_close(SmoothAPLoss()(tied, y).float(),
                               pml_losses.SmoothAPLoss()(tied, y).float())


# -- dynamic soft margin -----------------------------------------------------------------------
def dsm_loop(values, min_val, num_bins, momentum=None, hist=None):
    """Loss of a list of differentiable values and the updated histogram (plain floats)."""
    delta = 2 * abs(min_val) / num_bins
    batch_h = [0.0] * num_bins
    for v in values:
        pos = (float(v.detach()) - min_val) / delta
        k = math.floor(pos)
        alpha = pos - k
        batch_h[k] += 1 - alpha
        batch_h[k + 1] += alpha
    m = 1.0 if hist is None else momentum
    prev = [0.0] * num_bins if hist is None else hist
    h = [(1 - m) * a + m * b for a, b in zip(prev, batch_h, strict=True)]
    total = sum(h)
    h = [v / total for v in h]
    cdf = [sum(h[: k + 1]) for k in range(num_bins)]
    # differentiable: the current batch's histogram share moves with the values
    loss = 0.0
    for v in values:
        k = math.floor((float(v.detach()) - min_val) / delta)
        # d CDF[k] / d v_j for v_j in bin k is -m / (delta * total)
        same_bin = [w for w in values if math.floor((float(w.detach()) - min_val) / delta) == k]
        shift = sum((w - float(w.detach())) for w in same_bin) * (-m / (delta * total))
        loss = loss + (cdf[k] + shift) * v
    return loss / len(values), h


@pytest.mark.parametrize("min_val,num_bins", [(-2.0, 10), (-3.0, 20), (-2.0, 30)])
def test_dynamic_soft_margin_loop_and_pml(min_val, num_bins):
    x, y, _, _ = batch(10)
    kw = {"min_val": min_val, "num_bins": num_bins}

    def loop(e, _):
        trips = triplet_list(y.tolist())
        vals = [euclid(e[a], e[p]) - euclid(e[a], e[n]) for a, p, n in trips]
        return dsm_loop(vals, min_val, num_bins)[0]

    want = vg(loop, x)
    got = vg(lambda e, f: DynamicSoftMarginLoss(**kw)(e, y), x)
    assert_same(got, want)
    assert_same(got, vg(lambda e, f: pml_losses.DynamicSoftMarginLoss(**kw)(e, y), x))
    trip = TripletMarginMiner(margin=0.4)(x, y)
    pairs = Pairs(trip.anchor, trip.positive, trip.anchor, trip.negative)
    for ind in (trip, pairs):
        got = vg(lambda e, f, ind=ind: DynamicSoftMarginLoss(**kw)(e, y, indices=ind), x)
        pml = vg(lambda e, f, ind=ind: pml_losses.DynamicSoftMarginLoss(**kw)(e, y, tuple(ind)), x)
        assert_same(got, pml)
    # matched pairs without labels (pytorch-metric-learning cannot backpropagate this form)
    a, p = x[:5], x[5:11]

    def loop_pairs(e, f):
        vals = []
        for i in range(max(len(e), len(f))):
            d_pos = euclid(e[i], f[i]) if i < min(len(e), len(f)) else 0.0 * e.sum()
            cands = [euclid(e[i], f[j]) for j in range(len(f)) if j != i] if i < len(e) else []
            cands += [euclid(e[j], f[i]) for j in range(len(e)) if j != i] if i < len(f) else []
            if i >= min(len(e), len(f)):
                cands.append(0.0 * e.sum())
            vals.append(d_pos - min(cands, key=lambda t: float(t.detach())))
        return dsm_loop(vals, min_val, num_bins)[0]

    got = vg(lambda e, f: DynamicSoftMarginLoss(**kw)(e, ref_embeddings=f), a, p)
    assert_same(got, vg(loop_pairs, a, p))
    with torch.no_grad():
        want = pml_losses.DynamicSoftMarginLoss(**kw)(a, ref_emb=p)
    torch.testing.assert_close(got[0], want)


def test_dynamic_soft_margin_running_histogram_and_reference_set():
    ours, theirs = DynamicSoftMarginLoss(momentum=0.3), pml_losses.DynamicSoftMarginLoss(
        momentum=0.3)
    for seed in range(4):
        x, y, r, ry = batch(20 + seed)
        with torch.no_grad():
            torch.testing.assert_close(ours(x, y, ref_embeddings=r, ref_labels=ry),
                                       theirs(x, y, None, r, ry))
        torch.testing.assert_close(ours.hist_.double(), theirs.hist_.double())
    # training steps back to back: the stored histogram carries no graph
    loss = DynamicSoftMarginLoss()
    for seed in range(3):
        x, y, _, _ = batch(30 + seed)
        x.requires_grad_(True)
        loss(x, y).backward()
        assert not loss.hist_.requires_grad


def test_dynamic_soft_margin_edges():
    x, _, _, _ = batch(11)
    with pytest.raises(TypeError, match="EuclideanDistance"):
        DynamicSoftMarginLoss(distance=CosineSimilarity())
    with pytest.raises(ValueError, match="ref_embeddings"):
        DynamicSoftMarginLoss()(x)
    xg = x.clone().requires_grad_(True)
    out = DynamicSoftMarginLoss()(xg, torch.arange(N))  # no valid triplet
    out.backward()
    assert out.item() == 0.0 and torch.all(xg.grad == 0)
    e = torch.zeros(0, dtype=torch.long)
    loss = DynamicSoftMarginLoss()
    assert loss(x, torch.arange(N) % 3, indices=Triplets(e, e, e)).item() == 0.0
    assert loss.hist_.sum() == 0  # nothing seen, nothing recorded
    # values beyond the bins land in the end bins instead of failing
    far = DynamicSoftMarginLoss(min_val=-0.1, num_bins=4)(x, torch.arange(N) % 3)
    assert torch.isfinite(far)


# -- chunked paths ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dynamic_soft_margin", "intra_pair_variance", "instance",
                                  "threshold_consistent_margin", "smooth_ap"])
def test_chunked_paths_equal_the_one_pass_path(name, monkeypatch):
    from dmlkit.functional import chunking
    from dmlkit.losses import dynamic_soft_margin
    from dmlkit.registry import LOSSES

    x, _, r, ry = batch(40)
    y = torch.arange(N) // 3
    with_ref = name in ("dynamic_soft_margin", "intra_pair_variance", "threshold_consistent_margin")

    def run():
        loss = LOSSES.build(name)
        if with_ref:
            return vg(lambda e, f: loss(e, y, ref_embeddings=f, ref_labels=ry), x, r)
        return vg(lambda e, f: loss(e, y), x)

    whole = run()
    monkeypatch.setattr(chunking, "DEFAULT_BUDGET", 40)  # no one-pass path, a few rows a chunk
    monkeypatch.setattr(chunking, "EAGER_BUDGET", 40)
    monkeypatch.setattr(chunking, "EAGER_MIN_ROWS", 2)
    monkeypatch.setattr(dynamic_soft_margin, "chunk_size_for", lambda rows, per_row: 3)
    assert_same(run(), whole)
