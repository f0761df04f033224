"""Loss wrappers: cross-batch memory, weighted sum, self-supervised views."""

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
    WeightedSumLoss,
)
from dmlkit.miners import MultiSimilarityMiner, TripletMarginMiner
from dmlkit.registry import LOSSES, build_from_config, config_of

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")

DIM = 6


def stream(steps: int, n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield (
            torch.randn(n, DIM, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (n,), generator=g),
        )


# -- cross-batch memory ------------------------------------------------------------------------
def naive_xbm(inner, batches, memory_size):
    """FIFO list memory; every (query, memory) pair except a query with its own entry."""
    memory: list[tuple[torch.Tensor, int, object]] = []  # (embedding, label, owner)
    out = []
    for step, (x, y) in enumerate(batches):
        x = x.clone().requires_grad_(True)
        for i in range(len(x)):
            memory.append((x[i].detach(), int(y[i]), (step, i)))
        memory = memory[-memory_size:]
        ref = torch.stack([e for e, _, _ in memory])
        ref_labels = torch.tensor([lab for _, lab, _ in memory])
        a1, p, a2, n = [], [], [], []
        for i in range(len(x)):
            for j, (_, lab, owner) in enumerate(memory):
                if lab == int(y[i]) and owner != (step, i):
                    a1.append(i)
                    p.append(j)
                elif lab != int(y[i]):
                    a2.append(i)
                    n.append(j)
        pairs = Pairs(*(torch.tensor(v, dtype=torch.long) for v in (a1, p, a2, n)))
        value = inner(x, y, indices=pairs, ref_embeddings=ref, ref_labels=ref_labels)
        value.backward()
        out.append((value.detach(), x.grad))
    return out


@pytest.mark.parametrize("inner", [ContrastiveLoss, MultiSimilarityLoss, SupConLoss])
def test_xbm_matches_a_naive_fifo_memory(inner):
    xbm = CrossBatchMemory(inner(), DIM, memory_size=20).double()
    expected = naive_xbm(inner(), stream(5), 20)
    for (x, y), (value, grad) in zip(stream(5), expected, strict=True):
        x = x.clone().requires_grad_(True)
        got = xbm(x, y)
        got.backward()
        # the memory is a permutation of the naive list: sums agree to rounding
        assert torch.allclose(got, value, rtol=1e-10) and torch.allclose(x.grad, grad, atol=1e-12)


PML_INNER = [
    ("ContrastiveLoss", ContrastiveLoss),
    ("NTXentLoss", NTXentLoss),
    ("MultiSimilarityLoss", MultiSimilarityLoss),
    ("TripletMarginLoss", TripletMarginLoss),
]


@pytest.mark.parametrize("mined", [False, True], ids=["all_pairs", "miner"])
@pytest.mark.parametrize("pml_name,ours", PML_INNER, ids=[c[0] for c in PML_INNER])
def test_xbm_matches_pytorch_metric_learning(pml_name, ours, mined):
    a = CrossBatchMemory(
        ours(), DIM, memory_size=20, miner=MultiSimilarityMiner(epsilon=0.1) if mined else None
    ).double()
    b = pml_losses.CrossBatchMemory(
        getattr(pml_losses, pml_name)(),
        DIM,
        memory_size=20,
        miner=pml_miners.MultiSimilarityMiner(epsilon=0.1) if mined else None,
    )
    b.embedding_memory = b.embedding_memory.double()
    for x, y in stream(4):  # 32 items through a memory of 20: wraps around
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        va, vb = a(xa, y), b(xb, y)
        va.backward()
        vb.backward()
        assert torch.allclose(va, vb, rtol=1e-5, atol=1e-8)
        assert torch.allclose(xa.grad, xb.grad, rtol=1e-5, atol=1e-8)


def test_xbm_enqueue_mask_matches_pytorch_metric_learning():
    a = CrossBatchMemory(ContrastiveLoss(), DIM, memory_size=16).double()
    b = pml_losses.CrossBatchMemory(pml_losses.ContrastiveLoss(), DIM, memory_size=16)
    b.embedding_memory = b.embedding_memory.double()
    mask = torch.tensor([True, False] * 4)
    for x, y in stream(3):
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        va, vb = a(xa, y, enqueue_mask=mask), b(xb, y, enqueue_mask=mask)
        va.backward()
        vb.backward()
        assert torch.allclose(va, vb) and torch.allclose(xa.grad, xb.grad)


def test_xbm_reset_state_dict_and_oversized_batch():
    xbm = CrossBatchMemory(ContrastiveLoss(), DIM, memory_size=6).double()
    x, y = next(stream(1, n=10))
    xbm(x, y)  # 10 items into 6 slots: the last 6 stay
    assert xbm.has_been_filled
    assert torch.equal(torch.sort(xbm.label_memory).values, torch.sort(y[4:]).values)
    clone = CrossBatchMemory(ContrastiveLoss(), DIM, memory_size=6).double()
    clone.load_state_dict(xbm.state_dict())
    assert clone.queue_idx == xbm.queue_idx and clone.has_been_filled
    x2, y2 = next(stream(1, seed=5))
    assert torch.allclose(xbm(x2, y2), clone(x2, y2))
    xbm.reset()
    assert xbm.queue_idx == 0 and not xbm.has_been_filled and xbm.embedding_memory.abs().sum() == 0


def test_xbm_live_batch_slots_equal_the_plain_loss():
    """detach_batch=False with a memory of exactly one batch is the inner loss itself."""
    x, y = next(stream(1, n=8))
    for inner in (ContrastiveLoss(), SupConLoss(), MultiSimilarityLoss()):
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        va = CrossBatchMemory(inner, DIM, memory_size=8, detach_batch=False).double()(xa, y)
        vb = inner(xb, y)
        va.backward()
        vb.backward()
        assert torch.allclose(va, vb) and torch.allclose(xa.grad, xb.grad)


def test_xbm_indices_replace_the_default_tuples_and_errors():
    xbm = CrossBatchMemory(TripletMarginLoss(margin=0.5), DIM, memory_size=32).double()
    x, y = next(stream(1, n=8))
    empty = torch.zeros(0, dtype=torch.long)
    assert xbm(x, y, indices=Triplets(empty, empty, empty)).item() == 0.0
    trip = Triplets(torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5]))
    xbm.reset()
    got = xbm(x, y, indices=trip)
    want = TripletMarginLoss(margin=0.5)(x, y, indices=trip)  # first call: slots 0..7
    assert torch.allclose(got, want)
    with pytest.raises(ValueError, match="labels"):
        xbm(x)
    with pytest.raises(ValueError, match="embedding_size"):
        xbm(torch.randn(4, DIM + 1, dtype=torch.float64), y[:4])
    with pytest.raises(ValueError, match="indices"):
        CrossBatchMemory(LOSSES.build("ntxent"), DIM).forward(
            x, y, indices=trip, enqueue_mask=torch.ones(8, dtype=torch.bool)
        )


# -- weighted sum -----------------------------------------------------------------------------
def test_weighted_sum_equals_the_sum_of_its_parts_with_miners():
    x, y = next(stream(1, n=16))
    miner = TripletMarginMiner(margin=0.2)
    total = WeightedSumLoss(
        [ContrastiveLoss(), TripletMarginLoss(), NTXentLoss()],
        weights=[1.0, 0.5, 2.0],
        miners=[None, miner, None],
    )
    want = ContrastiveLoss()(x, y) + 0.5 * TripletMarginLoss()(x, y, indices=miner(x, y))
    want = want + 2.0 * NTXentLoss()(x, y)
    assert torch.allclose(total(x, y), want)


def test_weighted_sum_matches_pytorch_metric_learning_multiple_losses():
    x, y = next(stream(1, n=16))
    a = WeightedSumLoss(
        [ContrastiveLoss(), MultiSimilarityLoss()],
        weights=[0.3, 1.5],
        miners=[MultiSimilarityMiner(epsilon=0.1), None],
    )
    b = pml_losses.MultipleLosses(
        [pml_losses.ContrastiveLoss(), pml_losses.MultiSimilarityLoss()],
        weights=[0.3, 1.5],
        miners=[pml_miners.MultiSimilarityMiner(epsilon=0.1), None],
    )
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    va, vb = a(xa, y), b(xb, y)
    va.backward()
    vb.backward()
    assert torch.allclose(va, vb) and torch.allclose(xa.grad, xb.grad)


def test_weighted_sum_config_round_trips_with_nested_lists():
    config = {
        "name": "weighted_sum",
        "losses": [{"name": "contrastive", "neg_margin": 0.7}, "multi_similarity"],
        "weights": [1.0, 0.25],
        "miners": [None, {"name": "multi_similarity", "epsilon": 0.2}],
    }
    loss = build_from_config(LOSSES, config)
    again = config_of(loss)
    assert again["losses"][0]["neg_margin"] == 0.7 and again["miners"][0] is None
    assert config_of(build_from_config(LOSSES, again)) == again
    with pytest.raises(ValueError, match="weights"):
        WeightedSumLoss([ContrastiveLoss()], weights=[1.0, 2.0])


# -- self-supervised ----------------------------------------------------------------------------
@pytest.mark.parametrize("symmetric", [True, False])
def test_self_supervised_matches_pytorch_metric_learning(symmetric):
    v1, _ = next(stream(1, n=8))
    v2 = v1 + 0.1 * torch.randn(
        v1.shape, generator=torch.Generator().manual_seed(1), dtype=v1.dtype
    )
    a = SelfSupervisedLoss(NTXentLoss(), symmetric=symmetric)
    b = pml_losses.SelfSupervisedLoss(pml_losses.NTXentLoss(), symmetric=symmetric)
    xa, xb = v1.clone().requires_grad_(True), v1.clone().requires_grad_(True)
    va, vb = a(xa, v2), b(xb, v2)
    va.backward()
    vb.backward()
    assert torch.allclose(va, vb) and torch.allclose(xa.grad, xb.grad)


def test_self_supervised_call_forms_agree():
    v1, _ = next(stream(1, n=6))
    v2 = v1.flip(0)
    loss = SelfSupervisedLoss(SupConLoss())
    two_views = loss(v1, v2)
    concatenated = loss(torch.cat([v1, v2]))
    item_ids = loss(torch.cat([v1, v2]), torch.arange(6).repeat(2))
    assert torch.allclose(two_views, concatenated) and torch.allclose(two_views, item_ids)
    # SimCLR's NT-Xent written per view: its one positive is the other view of its item
    z = torch.nn.functional.normalize(torch.cat([v1, v2]), dim=1)
    t, terms = 0.07, []
    for i in range(12):
        partner = (i + 6) % 12
        others = torch.tensor([k for k in range(12) if k != i])
        terms.append(torch.logsumexp(z[i] @ z[others].T / t, 0) - z[i] @ z[partner] / t)
    want = torch.stack(terms).mean()
    assert torch.allclose(SelfSupervisedLoss(NTXentLoss())(v1, v2), want)
    with pytest.raises(ValueError, match="even"):
        loss(torch.randn(5, DIM))
    with pytest.raises(ValueError, match="equal shapes"):
        loss(v1, v2[:4])
