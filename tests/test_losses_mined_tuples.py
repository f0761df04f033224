"""Tuple losses on miner-given indices: the indexed and the label paths agree with each
other and with loop references (values and gradients), on every internal path (one
distance matrix, gathered rows, pairs joined per anchor), and no loss on indices builds
per-tuple copies of the embedding rows."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dmlkit.distances import CosineSimilarity, EuclideanDistance
from dmlkit.functional.tuples import Pairs, Quadruplets, Triplets, all_pairs, all_triplets
from dmlkit.losses import _tuple_distances, triplet_margin
from dmlkit.losses.contrastive import ContrastiveLoss
from dmlkit.losses.dynamic_soft_margin import DynamicSoftMarginLoss
from dmlkit.losses.hierarchical_triplet import HierarchicalTripletLoss
from dmlkit.losses.intra_pair_variance import IntraPairVarianceLoss
from dmlkit.losses.margin import MarginLoss
from dmlkit.losses.multi_similarity import MultiSimilarityLoss
from dmlkit.losses.quadruplet import QuadrupletLoss
from dmlkit.losses.threshold_consistent_margin import ThresholdConsistentMarginLoss
from dmlkit.losses.triplet_margin import TripletMarginLoss

N, D = 12, 5


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3])
    return x, y


def value_and_grad(loss, x, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    v = loss(x, *args, **kwargs)
    (g,) = torch.autograd.grad(v, x)
    return v.detach(), g


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True)


# -- loop references (fp64) -----------------------------------------------------------------
def ref_triplet(x, trips, margin, smooth=False, swap=False):
    z = unit(x)
    vals = []
    for a, p, n in zip(*[t.tolist() for t in trips], strict=True):
        d_ap, d_an = (z[a] - z[p]).norm(), (z[a] - z[n]).norm()
        if swap:
            d_an = torch.minimum(d_an, (z[p] - z[n]).norm())
        v = d_ap - d_an + margin
        vals.append(torch.nn.functional.softplus(v) if smooth else torch.relu(v))
    vals = torch.stack(vals)
    return vals.sum() / (vals > 0).sum().clamp_min(1)


def ref_contrastive(x, pairs, pos_margin, neg_margin):
    z = unit(x)
    a1, p, a2, n = (t.tolist() for t in pairs)
    pos = torch.stack(
        [torch.relu((z[i] - z[j]).norm() - pos_margin) for i, j in zip(a1, p, strict=True)]
    )
    neg = torch.stack(
        [torch.relu(neg_margin - (z[i] - z[j]).norm()) for i, j in zip(a2, n, strict=True)]
    )
    return pos.sum() / (pos > 0).sum().clamp_min(1) + neg.sum() / (neg > 0).sum().clamp_min(1)


def ref_multi_similarity(x, pairs, alpha=2.0, beta=50.0, base=0.5):
    z = unit(x)
    a1, p, a2, n = (t.tolist() for t in pairs)
    pos = {(i, j) for i, j in zip(a1, p, strict=True)}  # listed pairs count once
    neg = {(i, j) for i, j in zip(a2, n, strict=True)}
    total = x.new_zeros(())
    for i in range(x.shape[0]):
        sp = [z[i] @ z[j] for a, j in pos if a == i]
        sn = [z[i] @ z[j] for a, j in neg if a == i]
        if sp:
            total = total + torch.log1p(sum(torch.exp(-alpha * (s - base)) for s in sp)) / alpha
        if sn:
            total = total + torch.log1p(sum(torch.exp(beta * (s - base)) for s in sn)) / beta
    return total / x.shape[0]


def ref_quadruplet(x, quads, margin, margin2):
    z = unit(x)
    t1, t2 = [], []
    for a, p, n, n2 in zip(*[t.tolist() for t in quads], strict=True):
        d_ap = (z[a] - z[p]).norm()
        t1.append(torch.relu(d_ap - (z[a] - z[n]).norm() + margin))
        t2.append(torch.relu(d_ap - (z[n] - z[n2]).norm() + margin2))
    t1, t2 = torch.stack(t1), torch.stack(t2)
    return t1.sum() / (t1 > 0).sum().clamp_min(1) + t2.sum() / (t2 > 0).sum().clamp_min(1)


# -- every internal path --------------------------------------------------------------------
@pytest.fixture(params=["matrix", "rows"])
def path(request, monkeypatch):
    """Force the one-matrix path (ratio 0) or the gathered-rows path (huge ratio)."""
    monkeypatch.setattr(_tuple_distances, "ROWS_RATIO", 0 if request.param == "rows" else 10**9)
    return request.param


def _joined(pairs: Pairs) -> Triplets:
    a1, p, a2, n = (t.tolist() for t in pairs)
    out = [
        (a, q, m)
        for (a, q), (b, m) in itertools.product(zip(a1, p, strict=True), zip(a2, n, strict=True))
        if a == b
    ]
    return Triplets(*(torch.tensor(c) for c in zip(*out, strict=True)))


def _mined_pairs(seed: int) -> Pairs:
    """Pairs with repeats (as a miner's output joined from triplets can have)."""
    x, y = batch(seed)
    ap = all_pairs(y)
    g = torch.Generator().manual_seed(seed)
    keep_p = torch.randint(0, ap.a1.numel(), (20,), generator=g)
    keep_n = torch.randint(0, ap.a2.numel(), (30,), generator=g)
    return Pairs(ap.a1[keep_p], ap.p[keep_p], ap.a2[keep_n], ap.n[keep_n])


@pytest.mark.parametrize("kw", [{}, {"smooth_loss": True}, {"swap": True}])
def test_triplet_indexed_equals_labels_and_loop(path, kw):
    x, y = batch()
    loss = TripletMarginLoss(margin=0.3, **kw)
    trips = all_triplets(y)
    v_lab, g_lab = value_and_grad(loss, x, y)
    v_idx, g_idx = value_and_grad(loss, x, y, indices=trips)
    v_ref, g_ref = value_and_grad(
        lambda z: ref_triplet(
            z, trips, 0.3, **{k.replace("smooth_loss", "smooth"): v for k, v in kw.items()}
        ),
        x,
    )
    torch.testing.assert_close(v_idx, v_ref)
    torch.testing.assert_close(v_lab, v_ref)
    torch.testing.assert_close(g_idx, g_ref)
    torch.testing.assert_close(g_lab, g_ref)


@pytest.mark.parametrize("sorted_ratio", [0, 10**9], ids=["per-anchor", "joined"])
def test_triplet_on_pairs_equals_joined_triplets(path, sorted_ratio, monkeypatch):
    monkeypatch.setattr(triplet_margin, "SORTED_RATIO", sorted_ratio)
    x, y = batch(1)
    pairs = _mined_pairs(1)
    loss = TripletMarginLoss(margin=0.5)
    v, g = value_and_grad(loss, x, y, indices=pairs)
    v_ref, g_ref = value_and_grad(lambda z: ref_triplet(z, _joined(pairs), 0.5), x)
    torch.testing.assert_close(v, v_ref)
    torch.testing.assert_close(g, g_ref)


def test_triplet_similarity_distance_indexed(path):
    x, y = batch(2)
    trips = all_triplets(y)
    loss = TripletMarginLoss(margin=0.2, distance=CosineSimilarity())
    v_lab, g_lab = value_and_grad(loss, x, y)
    v_idx, g_idx = value_and_grad(loss, x, y, indices=trips)
    torch.testing.assert_close(v_idx, v_lab)
    torch.testing.assert_close(g_idx, g_lab)


def test_contrastive_indexed_equals_labels_and_loop(path):
    x, y = batch(3)
    loss = ContrastiveLoss(pos_margin=0.2, neg_margin=1.1)
    pairs = all_pairs(y)
    v_lab, g_lab = value_and_grad(loss, x, y)
    v_idx, g_idx = value_and_grad(loss, x, y, indices=pairs)
    v_ref, g_ref = value_and_grad(lambda z: ref_contrastive(z, pairs, 0.2, 1.1), x)
    for v, g in ((v_lab, g_lab), (v_idx, g_idx)):
        torch.testing.assert_close(v, v_ref)
        torch.testing.assert_close(g, g_ref)
    mined = _mined_pairs(3)
    v, g = value_and_grad(loss, x, y, indices=mined)
    v_ref, g_ref = value_and_grad(lambda z: ref_contrastive(z, mined, 0.2, 1.1), x)
    torch.testing.assert_close(v, v_ref)
    torch.testing.assert_close(g, g_ref)


def test_multi_similarity_indexed_equals_labels_and_loop():
    x, y = batch(4)
    loss = MultiSimilarityLoss(alpha=2.0, beta=10.0, base=0.3)
    pairs = all_pairs(y)
    v_lab, g_lab = value_and_grad(loss, x, y)
    v_idx, g_idx = value_and_grad(loss, x, y, indices=pairs)
    v_ref, g_ref = value_and_grad(lambda z: ref_multi_similarity(z, pairs, 2.0, 10.0, 0.3), x)
    for v, g in ((v_lab, g_lab), (v_idx, g_idx)):
        torch.testing.assert_close(v, v_ref)
        torch.testing.assert_close(g, g_ref)
    mined = _mined_pairs(4)
    v, g = value_and_grad(loss, x, y, indices=mined)
    v_ref, g_ref = value_and_grad(lambda z: ref_multi_similarity(z, mined, 2.0, 10.0, 0.3), x)
    torch.testing.assert_close(v, v_ref)
    torch.testing.assert_close(g, g_ref)


def test_quadruplet_indexed_equals_loop(path):
    x, y = batch(5)
    g = torch.Generator().manual_seed(5)
    trips = all_triplets(y)
    pick = torch.randint(0, trips.anchor.numel(), (40,), generator=g)
    a, p, n = (t[pick] for t in trips)
    other = [torch.nonzero((y != y[i]) & (y != y[j]))[0] for i, j in zip(a, n, strict=True)]
    n2 = torch.cat(other)  # a negative of both the anchor and n
    quads = Quadruplets(a, p, n, n2)
    loss = QuadrupletLoss(margin=0.4, margin2=0.2)
    v, gr = value_and_grad(loss, x, y, indices=quads)
    v_ref, g_ref = value_and_grad(lambda z: ref_quadruplet(z, quads, 0.4, 0.2), x)
    torch.testing.assert_close(v, v_ref)
    torch.testing.assert_close(gr, g_ref)
    # triplets: its first term, as the all-tuples first term
    v_t, g_t = value_and_grad(loss, x, y, indices=Triplets(a, p, n))
    v_r, g_r = value_and_grad(lambda z: ref_triplet(z, (a, p, n), 0.4), x)
    torch.testing.assert_close(v_t, v_r)
    torch.testing.assert_close(g_t, g_r)


@pytest.mark.parametrize(
    "make",
    [
        lambda: MarginLoss(margin=0.2, beta=1.0),
        lambda: IntraPairVarianceLoss(),
        lambda: ThresholdConsistentMarginLoss(),
        lambda: HierarchicalTripletLoss(margin=0.2),
    ],
    ids=["margin", "intra_pair_variance", "threshold_consistent_margin", "hierarchical"],
)
def test_other_gathering_losses_same_on_both_paths(make, monkeypatch):
    """The matrix and the gathered-rows paths give the same values and gradients."""
    x, y = batch(6)
    trips = all_triplets(y)
    out = []
    for ratio in (10**9, 0):
        monkeypatch.setattr(_tuple_distances, "ROWS_RATIO", ratio)
        out.append(value_and_grad(make().double(), x, y, indices=trips))
    torch.testing.assert_close(out[0][0], out[1][0])
    torch.testing.assert_close(out[0][1], out[1][1])


# -- no per-tuple copies of embedding rows ---------------------------------------------------
class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op creates."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


B_MEM, D_MEM, T_MEM = 48, 256, 60_000


def _large_index_set():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B_MEM, D_MEM, generator=g)
    y = torch.arange(B_MEM) // 4
    trips = all_triplets(y)  # 48 * 3 * 44 = 6336 distinct; repeated up to T_MEM
    pick = torch.randint(0, trips.anchor.numel(), (T_MEM,), generator=g)
    a, p, n = (t[pick] for t in trips)
    n2 = (n + 4) % B_MEM  # another class than n's (classes are blocks of 4)
    return x, y, Triplets(a, p, n), Quadruplets(a, p, n, n2)


def _largest(loss, x, y, indices) -> int:
    x = x.clone().requires_grad_(True)
    with LargestTensor() as probe:
        loss(x, y, indices=indices).backward()
    return probe.largest


def test_probe_sees_row_copies():
    """The check can fail: gathering the tuples' rows (the former indexed path) is caught."""
    x, _, trips, _ = _large_index_set()
    with LargestTensor() as probe:
        EuclideanDistance().pairwise(x[trips.anchor], x[trips.positive])
    assert probe.largest >= T_MEM * D_MEM


@pytest.mark.parametrize(
    "make,kind",
    [
        (lambda: TripletMarginLoss(margin=0.2), "triplets"),
        (lambda: TripletMarginLoss(margin=0.2, swap=True), "triplets"),
        (lambda: TripletMarginLoss(margin=0.2, smooth_loss=True), "triplets"),
        (lambda: ContrastiveLoss(), "triplets"),
        (lambda: MultiSimilarityLoss(), "triplets"),
        (lambda: QuadrupletLoss(), "quadruplets"),
        (lambda: MarginLoss(), "triplets"),
        (lambda: IntraPairVarianceLoss(), "triplets"),
        (lambda: ThresholdConsistentMarginLoss(), "triplets"),
        (lambda: DynamicSoftMarginLoss(), "triplets"),
        (lambda: HierarchicalTripletLoss(), "triplets"),
        (lambda: TripletMarginLoss(margin=0.2), "pairs"),
    ],
)
def test_no_per_tuple_row_copies(make, kind):
    """No tensor of a loss on 60k tuples reaches the size of the tuples' rows (T x dim):
    the largest allowed is a few (T,) vectors or the (B, B) matrix."""
    x, y, trips, quads = _large_index_set()
    indices = {"triplets": trips, "quadruplets": quads}.get(kind)
    if kind == "pairs":
        indices = Pairs(trips.anchor, trips.positive, trips.anchor, trips.negative)
    largest = _largest(make(), x, y, indices)
    bound = 4 * max(T_MEM, B_MEM * B_MEM)
    assert largest <= bound, (
        f"largest tensor {largest} elements > {bound} (T x dim = {T_MEM * D_MEM})"
    )
