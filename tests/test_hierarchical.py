"""Hierarchical metric learning: shared depth, multi-margin triplet loss, sampler, metrics."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import dmlkit.losses.hierarchical_triplet as ht
from dmlkit.distances import CosineSimilarity, EuclideanDistance
from dmlkit.evaluation.hierarchical import hierarchical_retrieval_metrics
from dmlkit.functional.hierarchy import shared_depth, shared_depth_rowwise
from dmlkit.functional.tuples import Pairs, Triplets
from dmlkit.losses import HierarchicalTripletLoss, TripletMarginLoss
from dmlkit.registry import LOSSES, SAMPLERS, build_from_config, config_of
from dmlkit.samplers import HierarchicalSampler


def tree_labels(n: int, branching=(2, 3, 2), seed: int = 0) -> torch.Tensor:
    """(n, L) labels of random leaves of a tree; child ids are unique per level."""
    g = torch.Generator().manual_seed(seed)
    n_leaves = math.prod(branching)
    leaf = torch.randint(0, n_leaves, (n,), generator=g)
    cols, div = [], n_leaves
    for b in branching:
        div //= b
        cols.append(leaf // div)
    return torch.stack(cols, dim=1)


def naive_depth(a, b) -> int:
    s = 0
    for u, v in zip(a.tolist(), b.tolist(), strict=True):
        if u != v:
            break
        s += 1
    return s


def test_shared_depth_matches_loop():
    a, b = tree_labels(9, seed=1), tree_labels(7, seed=2)
    d = shared_depth(a, b)
    assert d.shape == (9, 7)
    for i, j in itertools.product(range(9), range(7)):
        assert d[i, j] == naive_depth(a[i], b[j])
    assert torch.equal(shared_depth_rowwise(a[:7], b), d[:7].diagonal())
    with pytest.raises(ValueError):
        shared_depth(a, b[:, :2])


@pytest.fixture
def one_thread():
    """Tiny-tensor optimization loops: one thread avoids parallel-region overhead."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- loss ----------------------------------------------------------------------------------------


def naive_hierarchical_triplet(x, labels, margins, similarity=False, ref=None, ref_labels=None):
    """Loop over every (anchor, positive, negative); mean over the non-zero losses."""
    same_set = ref is None
    ref = x if ref is None else ref
    ref_labels = labels if ref_labels is None else ref_labels
    if similarity:
        def dist(u, v):
            return -(u / u.norm() * v / v.norm()).sum()
    else:
        def dist(u, v):
            return (u / u.norm() - v / v.norm()).norm()
    L = labels.shape[1]
    total, count = 0.0, 0
    for a in range(len(x)):
        for p in range(len(ref)):
            if (same_set and p == a) or naive_depth(labels[a], ref_labels[p]) < L:
                continue
            for q in range(len(ref)):
                s = naive_depth(labels[a], ref_labels[q])
                if s == L:
                    continue
                v = torch.relu(dist(x[a], ref[p]) - dist(x[a], ref[q]) + margins[s])
                if v > 0:
                    total, count = total + v, count + 1
    return total / max(count, 1)


@pytest.mark.parametrize("margins", [None, (0.5, 0.3, 0.1), (0.2, 0.2, 0.0)])
@pytest.mark.parametrize("similarity", [False, True])
def test_loss_matches_naive_triplet_loop(margins, similarity):
    labels = tree_labels(14, seed=3)
    x = torch.randn(14, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    distance = CosineSimilarity() if similarity else None
    loss_fn = HierarchicalTripletLoss(margin=0.15, margins=margins, distance=distance)
    table = margins if margins is not None else [0.15 * (3 - s) for s in range(3)]
    expected = naive_hierarchical_triplet(x, labels, table, similarity=similarity)
    assert torch.allclose(loss_fn(x, labels), torch.as_tensor(expected, dtype=torch.float64))


def test_loss_with_reference_set_and_chunks(monkeypatch):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(8, 5, generator=g, dtype=torch.float64)
    ref = torch.randn(11, 5, generator=g, dtype=torch.float64)
    lx, lr = tree_labels(8, seed=5), tree_labels(11, seed=6)
    margins = (0.4, 0.25, 0.05)
    loss_fn = HierarchicalTripletLoss(margins=margins)
    expected = naive_hierarchical_triplet(x, lx, margins, ref=ref, ref_labels=lr)
    assert torch.allclose(loss_fn(x, lx, ref_embeddings=ref, ref_labels=lr), expected)
    # the chunked path (recomputed in backward) gives the same value and gradient
    labels = tree_labels(16, seed=7)
    xa = torch.randn(16, 5, generator=g, dtype=torch.float64, requires_grad=True)
    whole = loss_fn(xa, labels)
    (ga,) = torch.autograd.grad(whole, xa)
    monkeypatch.setattr(ht, "chunk_size_for", lambda n, per_row, budget=0: 3)
    chunked = loss_fn(xa, labels)
    (gb,) = torch.autograd.grad(chunked, xa)
    assert torch.allclose(whole, chunked) and torch.allclose(ga, gb)


def test_loss_gradcheck_with_hierarchical_labels():
    labels = tree_labels(8, branching=(2, 2), seed=8)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    loss_fn = HierarchicalTripletLoss(margins=(0.6, 0.2))
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: loss_fn(e, labels), (x,), eps=1e-6, atol=1e-4)


def test_one_level_equals_triplet_margin_and_pml():
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    g = torch.Generator().manual_seed(9)
    x = torch.randn(20, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (20,), generator=g)
    ours = HierarchicalTripletLoss(margin=0.2)(x, y)
    assert torch.allclose(ours, TripletMarginLoss(margin=0.2)(x, y))
    assert torch.allclose(ours, pml_losses.TripletMarginLoss(margin=0.2)(x, y))
    assert torch.allclose(ours, HierarchicalTripletLoss(margins=(0.2,))(x, y[:, None]))


def test_loss_with_indices():
    labels = tree_labels(10, seed=10)
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    margins = (0.5, 0.3, 0.1)
    loss_fn = HierarchicalTripletLoss(margins=margins)
    a, p, n = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6, 7]), torch.tensor([8, 9, 0, 1])
    vals = []
    for i in range(4):
        s = min(naive_depth(labels[a[i]], labels[n[i]]), 2)
        xa, xp, xn = (x[j] / x[j].norm() for j in (a[i], p[i], n[i]))
        vals.append(torch.relu((xa - xp).norm() - (xa - xn).norm() + margins[s]))
    vals = torch.stack(vals)
    expected = vals.sum() / (vals > 0).sum().clamp_min(1)
    assert torch.allclose(loss_fn(x, labels, indices=Triplets(a, p, n)), expected)
    # no labels: every triplet gets the finest margin
    plain = TripletMarginLoss(margin=0.1)(x, indices=Triplets(a, p, n))
    assert torch.allclose(loss_fn(x, indices=Triplets(a, p, n)), plain)
    empty = torch.zeros(0, dtype=torch.long)
    assert loss_fn(x, labels, indices=Pairs(empty, empty, empty, empty)).item() == 0.0


def test_loss_config_errors_and_round_trip():
    loss_fn = HierarchicalTripletLoss(margins=[0.3, 0.1])
    config = config_of(loss_fn)
    rebuilt = build_from_config(LOSSES, config)
    assert config_of(rebuilt) == config and rebuilt.margins == (0.3, 0.1)
    x = torch.randn(6, 4)
    labels = tree_labels(6, branching=(2, 2, 2))
    with pytest.raises(ValueError, match="levels"):
        loss_fn(x, labels)
    with pytest.raises(TypeError):
        loss_fn(x, labels.bool())
    with pytest.raises(ValueError):
        HierarchicalTripletLoss(margins=[])
    with pytest.raises(TypeError):
        HierarchicalTripletLoss(margins=0.3)
    with pytest.raises(ValueError, match="levels"):
        HierarchicalTripletLoss()(x, labels, ref_embeddings=x, ref_labels=labels[:, :2])


def _train_free_embeddings(margins):
    torch.manual_seed(0)
    labels = torch.tensor([[s, 2 * s + c] for s in range(2) for c in range(2) for _ in range(4)])
    x = (torch.randn(16, 8) * 0.1).requires_grad_(True)
    loss_fn = HierarchicalTripletLoss(margins=margins, distance=EuclideanDistance())
    for _ in range(60):  # plain gradient descent
        (grad,) = torch.autograd.grad(loss_fn(x, labels), x)
        with torch.no_grad():
            x -= 1.0 * grad
    d = EuclideanDistance()(x.detach())
    depth = shared_depth(labels)
    off = ~torch.eye(16, dtype=torch.bool)
    return [d[(depth == s) & off].mean() for s in (2, 1, 0)]


def test_training_separates_super_classes_more_than_siblings(one_thread):
    """Free embeddings trained with level margins: intra < sibling < other super-class."""
    intra, sib, other = _train_free_embeddings((0.8, 0.3))
    assert intra < sib < other
    _, flat_sib, flat_other = _train_free_embeddings((0.3, 0.3))
    assert other - sib > 0.2 and other - sib > (flat_other - flat_sib) + 0.2


# -- sampler ---------------------------------------------------------------------------------------


def sampler_labels() -> np.ndarray:
    rng = np.random.default_rng(0)
    leaf = rng.integers(0, 15, 300)  # 5 super-classes x 3 classes
    leaf[:15] = np.arange(15)
    return np.stack([leaf // 3, leaf], axis=1)


def test_sampler_batches_respect_the_hierarchy():
    labels = sampler_labels()
    sampler = SAMPLERS.build("hierarchical", labels=labels, batch_size=24, m=4,
                             classes_per_super=2, seed=3)
    assert isinstance(sampler, HierarchicalSampler) and len(sampler) == 300 // 24
    seen_supers = set()
    for batch in sampler:
        assert len(batch) == 24
        rows = labels[batch]
        blocks = rows.reshape(3, 2, 4, 2)  # super-class x class x sample x level
        supers = blocks[:, 0, 0, 0]
        assert len(set(supers.tolist())) == 3
        for s in range(3):
            assert (blocks[s, :, :, 0] == supers[s]).all()
            classes = blocks[s, :, 0, 1]
            assert len(set(classes.tolist())) == 2
            assert (blocks[s, :, :, 1] == classes[:, None]).all()
        seen_supers.update(supers.tolist())
    assert seen_supers == set(range(5))


def test_sampler_is_deterministic_and_epoch_dependent():
    labels = torch.as_tensor(sampler_labels())
    a = HierarchicalSampler(labels, batch_size=24, m=4, classes_per_super=2, seed=1)
    b = HierarchicalSampler(labels, batch_size=24, m=4, classes_per_super=2, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    c = HierarchicalSampler(labels, batch_size=24, m=4, classes_per_super=2, seed=2)
    assert list(c) != first


def test_sampler_small_groups_and_errors():
    # super-class 1 has a single class of 2 items: drawn with replacement
    labels = np.array([[0, 0]] * 5 + [[0, 1]] * 5 + [[1, 2]] * 2)
    sampler = HierarchicalSampler(labels, batch_size=12, m=3, classes_per_super=2, num_batches=4)
    for batch in sampler:
        assert len(batch) == 12
        assert sorted(set(labels[batch][:, 0].tolist())) == [0, 1]
    with pytest.raises(ValueError, match="multiple"):
        HierarchicalSampler(labels, batch_size=10, m=3, classes_per_super=2)
    with pytest.raises(ValueError, match="super-classes"):
        HierarchicalSampler(labels, batch_size=18, m=3, classes_per_super=2)
    with pytest.raises(ValueError, match="L >= 2"):
        HierarchicalSampler(labels[:, 1], batch_size=6, m=3, classes_per_super=2)
    with pytest.raises(ValueError, match="super_level"):
        HierarchicalSampler(labels, batch_size=6, m=3, classes_per_super=2, super_level=1)
    with pytest.raises(TypeError):
        HierarchicalSampler(labels.astype(float), batch_size=6, m=3, classes_per_super=2)


# -- metrics --------------------------------------------------------------------------------


def naive_metrics(q, ql, r, rl, ks, leave_one_out):
    """Loops: per-level P@1 / MAP@R, hierarchical precision@k and nDCG@k (euclidean)."""
    L = ql.shape[1]
    out: dict[str, float] = {}
    rankings = []
    for i in range(len(q)):
        cand = [j for j in range(len(r)) if not (leave_one_out and j == i)]
        d = {j: float(((q[i] - r[j]) ** 2).sum()) for j in cand}
        rankings.append(sorted(cand, key=lambda j: (d[j], j)))
    for level in range(L):
        p1, maps = [], []
        for i, rank in enumerate(rankings):
            rel = [naive_depth(ql[i], rl[j]) >= level + 1 for j in rank]
            R = sum(rel)
            if R == 0:
                continue
            p1.append(float(rel[0]))
            hits, ap = 0, 0.0
            for pos, is_rel in enumerate(rel[:R], start=1):
                if is_rel:
                    hits += 1
                    ap += hits / pos
            maps.append(ap / R)
        out[f"precision_at_1_level_{level}"] = float(np.mean(p1))
        out[f"map_at_r_level_{level}"] = float(np.mean(maps))
    for k in ks:
        hp, nd = [], []
        for i, rank in enumerate(rankings):
            gains = [naive_depth(ql[i], rl[j]) / L for j in rank]
            hp.append(sum(gains[:k]) / k)
            ideal = sorted(gains, reverse=True)[:k]
            idcg = sum(g / math.log2(p + 2) for p, g in enumerate(ideal))
            if idcg > 0:
                nd.append(sum(g / math.log2(p + 2) for p, g in enumerate(gains[:k])) / idcg)
        out[f"hierarchical_precision_at_{k}"] = float(np.mean(hp))
        out[f"hierarchical_ndcg_at_{k}"] = float(np.mean(nd))
    return out


@pytest.mark.parametrize("leave_one_out", [True, False])
def test_metrics_match_naive_loops(leave_one_out):
    g = torch.Generator().manual_seed(11)
    ql = tree_labels(30, seed=11)
    q = torch.randn(30, 3, generator=g, dtype=torch.float64) + ql[:, 2:].double() * 0.5
    if leave_one_out:
        r, rl = None, None
    else:
        rl = tree_labels(40, seed=12)
        r = torch.randn(40, 3, generator=g, dtype=torch.float64) + rl[:, 2:].double() * 0.5
    got = hierarchical_retrieval_metrics(q, ql, r, rl, k=(1, 3, 5))
    ref, ref_labels = (q, ql) if leave_one_out else (r, rl)
    expected = naive_metrics(q, ql, ref, ref_labels, (1, 3, 5), leave_one_out)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert got["num_levels"] == 3 and got["num_queries"] == 30
    # the leaf level is the ordinary evaluation; coarser levels are easier
    assert got["map_at_r_level_0"] >= got["map_at_r_level_2"]


def test_metrics_perfect_embedding_and_errors():
    labels = tree_labels(24, branching=(2, 2), seed=13)
    x = (labels[:, 0] * 10 + labels[:, 1]).double()[:, None]  # leaves clustered, supers apart
    got = hierarchical_retrieval_metrics(x.numpy(), labels.numpy(), k=1)
    assert got["map_at_r_level_0"] == 1.0 and got["map_at_r_level_1"] == 1.0
    assert got["hierarchical_precision_at_1"] == 1.0 and got["hierarchical_ndcg_at_1"] == 1.0
    with pytest.raises(ValueError, match="levels"):
        hierarchical_retrieval_metrics(x, labels, x, labels[:, :1])
    with pytest.raises(ValueError, match="hierarchical"):
        hierarchical_retrieval_metrics(x, labels[:, 0])
    with pytest.raises(ValueError, match="together"):
        hierarchical_retrieval_metrics(x, labels, x)
    with pytest.raises(TypeError):
        hierarchical_retrieval_metrics(x, labels.double())
