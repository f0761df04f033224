"""Cross-batch memory with no anchors or no memory; self-supervised two-view call forms."""

from __future__ import annotations

import pytest
import torch

from dmlkit.functional.tuples import Pairs, Triplets
from dmlkit.losses import (
    ContrastiveLoss,
    CrossBatchMemory,
    MultiSimilarityLoss,
    NTXentLoss,
    SelfSupervisedLoss,
    SupConLoss,
    TripletMarginLoss,
)
from dmlkit.miners import MultiSimilarityMiner

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")

DIM = 6
INNER = [ContrastiveLoss, NTXentLoss, MultiSimilarityLoss, TripletMarginLoss, SupConLoss]


def batch(seed: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, DIM, generator=g, dtype=torch.float64), torch.arange(n) % 3


def pair(inner, mined: bool, memory_size: int = 32):
    ours = CrossBatchMemory(
        inner(), DIM, memory_size=memory_size,
        miner=MultiSimilarityMiner(epsilon=0.1) if mined else None,
    ).double()
    theirs = pml_losses.CrossBatchMemory(
        getattr(pml_losses, inner.__name__)(), DIM, memory_size=memory_size,
        miner=pml_miners.MultiSimilarityMiner(epsilon=0.1) if mined else None,
    )
    theirs.embedding_memory = theirs.embedding_memory.double()
    return ours, theirs


def both(ours, theirs, x, y, **kwargs):
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    va, vb = ours(xa, y, **kwargs), theirs(xb, y, **kwargs)
    va.backward()
    vb.backward()
    return va, vb, xa.grad, xb.grad


# -- cross-batch memory: enqueue_mask all True (no anchors) --------------------------------------
@pytest.mark.parametrize("prefill", [False, True], ids=["empty", "filled"])
@pytest.mark.parametrize("mined", [False, True], ids=["all_pairs", "miner"])
@pytest.mark.parametrize("inner", INNER, ids=[c.__name__ for c in INNER])
def test_xbm_all_enqueued_is_zero_and_fills_memory_like_pml(inner, mined, prefill):
    ours, theirs = pair(inner, mined)
    if prefill:
        both(ours, theirs, *batch(0))
    x, y = batch(1)
    va, vb, ga, gb = both(ours, theirs, x, y, enqueue_mask=torch.ones(8, dtype=torch.bool))
    assert va.item() == 0.0 and vb.item() == 0.0
    assert ga is not None and torch.equal(ga, torch.zeros_like(x))  # connected, zero grads
    # the enqueued rows are in the memory, in the same slots as pytorch-metric-learning's
    assert ours.queue_idx == theirs.queue_idx == (16 if prefill else 8)
    assert torch.equal(ours.embedding_memory, theirs.embedding_memory)
    assert torch.equal(ours.label_memory, theirs.label_memory)
    # and the next ordinary call compares with them, as pytorch-metric-learning does
    va, vb, ga, gb = both(ours, theirs, *batch(2))
    assert torch.allclose(va, vb, rtol=1e-5, atol=1e-8)
    assert torch.allclose(ga, gb, rtol=1e-5, atol=1e-8)


def test_xbm_all_enqueued_with_live_batch_slots():
    xbm = CrossBatchMemory(ContrastiveLoss(), DIM, memory_size=4, detach_batch=False).double()
    x, y = batch(3)  # more rows than the memory holds: the last 4 are kept
    x.requires_grad_(True)
    value = xbm(x, y, enqueue_mask=torch.ones(8, dtype=torch.bool))
    value.backward()
    assert value.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))
    assert torch.equal(xbm.embedding_memory, x.detach()[4:]) and xbm.has_been_filled


# -- cross-batch memory: nothing enqueued --------------------------------------------------------
@pytest.mark.parametrize("inner", INNER, ids=[c.__name__ for c in INNER])
def test_xbm_nothing_enqueued_into_an_empty_memory_is_zero(inner):
    xbm = CrossBatchMemory(inner(), DIM, memory_size=16).double()
    x, y = batch(4)
    x.requires_grad_(True)
    value = xbm(x, y, enqueue_mask=torch.zeros(8, dtype=torch.bool))
    value.backward()
    assert value.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))
    assert xbm.queue_idx == 0 and not xbm.has_been_filled


@pytest.mark.parametrize("inner", INNER, ids=[c.__name__ for c in INNER])
def test_xbm_nothing_enqueued_compares_with_the_stored_items_only(inner):
    # pytorch-metric-learning 2.9.0 marks its memory full after enqueuing nothing and then
    # also compares with the never-written zero slots; the reference here is naive
    xbm = CrossBatchMemory(inner(), DIM, memory_size=16).double()
    x0, y0 = batch(5)
    xbm(x0, y0)
    x, y = batch(6)
    got = xbm(x, y, enqueue_mask=torch.zeros(8, dtype=torch.bool))
    a1, p, a2, n = [], [], [], []
    for i in range(8):
        for j in range(8):
            if y[i] == y0[j]:
                a1.append(i)
                p.append(j)
            else:
                a2.append(i)
                n.append(j)
    pairs = Pairs(*(torch.tensor(v) for v in (a1, p, a2, n)))
    want = inner()(x, y, indices=pairs, ref_embeddings=x0, ref_labels=y0.clone())
    assert torch.allclose(got, want, rtol=1e-10)
    assert xbm.queue_idx == 8 and not xbm.has_been_filled


# -- self-supervised: the second view positionally or as ref_embeddings ---------------------------
def naive_triplet(emb: torch.Tensor, ref: torch.Tensor, t: Triplets, margin: float) -> torch.Tensor:
    """Mean of the positive hinge terms, on L2-normalised rows, one triplet at a time."""
    e = torch.nn.functional.normalize(emb, dim=1)
    r = torch.nn.functional.normalize(ref, dim=1)
    terms = []
    for a, p, n in zip(t.anchor.tolist(), t.positive.tolist(), t.negative.tolist(), strict=True):
        v = (e[a] - r[p]).norm() - (e[a] - r[n]).norm() + margin
        if v > 0:
            terms.append(v)
    return torch.stack(terms).mean() if terms else torch.zeros((), dtype=emb.dtype)


@pytest.mark.parametrize("symmetric", [True, False])
def test_self_supervised_indices_mean_the_same_in_both_two_view_forms(symmetric):
    g = torch.Generator().manual_seed(0)
    v1 = torch.randn(6, DIM, generator=g, dtype=torch.float64)
    v2 = torch.randn(6, DIM, generator=g, dtype=torch.float64)
    if symmetric:  # indices into cat([view1, view2]): 6..11 are view 2
        t = Triplets(torch.tensor([0, 1, 2, 7]), torch.tensor([6, 7, 8, 1]),
                     torch.tensor([3, 10, 5, 0]))
        both_views = torch.cat([v1, v2])
        want = naive_triplet(both_views, both_views, t, 0.5)
    else:  # anchors index view 1, the rest view 2
        t = Triplets(torch.tensor([0, 1, 2, 5]), torch.tensor([0, 1, 2, 5]),
                     torch.tensor([3, 4, 5, 0]))
        want = naive_triplet(v1, v2, t, 0.5)
    loss = SelfSupervisedLoss(TripletMarginLoss(margin=0.5), symmetric=symmetric)
    assert want > 0
    positional = loss(v1, v2, indices=t)
    keyword = loss(v1, ref_embeddings=v2, indices=t)
    assert torch.allclose(positional, want) and torch.allclose(keyword, want)
    if symmetric:
        assert torch.allclose(loss(torch.cat([v1, v2]), indices=t), want)


def test_self_supervised_refuses_a_second_view_twice_and_view_ref_labels():
    v1, v2 = torch.randn(4, DIM), torch.randn(4, DIM)
    loss = SelfSupervisedLoss(NTXentLoss())
    with pytest.raises(ValueError, match="positionally"):
        loss(v1, v2, ref_embeddings=v2)
    with pytest.raises(ValueError, match="ref_labels"):
        loss(v1, ref_embeddings=v2, ref_labels=torch.arange(4))
    with pytest.raises(ValueError, match="ref_labels"):
        loss(torch.cat([v1, v2]), ref_labels=torch.arange(4))
    # item ids given: the inner loss as is, reference set included
    ids = torch.arange(4)
    ref = torch.cat([v1, v2]).detach().clone()
    got = loss(v2, ids, ref_embeddings=ref, ref_labels=torch.cat([ids, ids]))
    want = NTXentLoss()(v2, ids, ref_embeddings=ref, ref_labels=torch.cat([ids, ids]))
    assert torch.equal(got, want)
