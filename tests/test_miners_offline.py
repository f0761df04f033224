"""Offline hard-negative mining over a whole dataset, and its epoch-start sampler."""

from __future__ import annotations

import math

import pytest
import torch

from dmlkit.data.dataset import ArrayDataset
from dmlkit.distances import CosineSimilarity
from dmlkit.training.offline_mining import (
    OfflineHardNegativeSampler,
    hardest_negatives,
    mine_hard_triplets,
)


def data(n=40, d=6, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.arange(n) % classes


def naive_hardest(x, y, k, sim=False):
    e = [[float(v) for v in row / row.norm()] for row in x]
    out = []
    for i in range(len(e)):
        cands = []
        for j in range(len(e)):
            if y[j] == y[i]:
                continue
            if sim:
                cands.append((-sum(a * b for a, b in zip(e[i], e[j], strict=True)), j))
            else:
                cands.append((math.dist(e[i], e[j]), j))
        out.append([j for _, j in sorted(cands)[:k]])
    return out


@pytest.mark.parametrize("sim", [False, True])
def test_hardest_negatives_match_naive_and_chunking(sim):
    x, y = data()
    dist = CosineSimilarity() if sim else None
    values, idx = hardest_negatives(x, y, 5, dist)
    assert idx.dtype == torch.long and idx.shape == (40, 5)
    assert idx.tolist() == naive_hardest(x, y, 5, sim)
    order_ok = values[:, :-1] >= values[:, 1:] if sim else values[:, :-1] <= values[:, 1:]
    assert order_ok.all()
    v2, i2 = hardest_negatives(x, y, 5, dist, budget=50)  # one row per chunk
    assert torch.equal(idx, i2) and torch.allclose(values, v2)


def test_hardest_negatives_against_faiss():
    faiss = pytest.importorskip("faiss")
    x, y = data(n=60, d=8, classes=2, seed=1)
    xn = torch.nn.functional.normalize(x.float(), dim=1)
    _, idx = hardest_negatives(x, y, 4)
    for c in (0, 1):
        index = faiss.IndexFlatL2(8)
        index.add(xn[y != c].numpy())
        _, nn = index.search(xn[y == c].numpy(), 4)
        ids = torch.where(y != c)[0][torch.from_numpy(nn)]
        assert torch.equal(idx[y == c], ids)


def test_hardest_negatives_pads_with_minus_one():
    x, y = data(n=6, classes=2)
    values, idx = hardest_negatives(x, y, 5)  # only 3 negatives each
    assert (idx[:, 3:] == -1).all() and (idx[:, :3] >= 0).all()
    assert torch.isinf(values[:, 3:]).all()
    with pytest.raises(ValueError, match="k must be"):
        hardest_negatives(x, y, 0)


@pytest.mark.parametrize("positive", ["random", "hardest"])
def test_mined_triplets_are_valid_and_hard(positive):
    x, y = data(n=40, seed=2)
    y[0] = 99  # a singleton class: no positive, so never an anchor
    trip = mine_hard_triplets(x, y, k=3, triplets_per_anchor=4, positive=positive, seed=0)
    a, p, n = trip
    assert a.dtype == p.dtype == n.dtype == torch.long
    assert (y[a] == y[p]).all() and (a != p).all() and (y[a] != y[n]).all()
    assert not (a == 0).any() and len(a) == 39 * 4
    top = naive_hardest(x, y, 3)
    assert all(int(q) in top[int(i)] for i, q in zip(a, n, strict=True))
    if positive == "hardest":
        xn = torch.nn.functional.normalize(x, dim=1)
        for i, j in zip(a.tolist(), p.tolist(), strict=True):
            same = [t for t in range(40) if y[t] == y[i] and t != i]
            assert j == max(same, key=lambda t: float((xn[i] - xn[t]).norm()))
    again = mine_hard_triplets(x, y, k=3, triplets_per_anchor=4, positive=positive, seed=0)
    assert all(torch.equal(u, v) for u, v in zip(trip, again, strict=True))


def test_random_positives_cover_the_class():
    x, y = data(n=40, seed=3)
    a, p, _ = mine_hard_triplets(x, y, k=2, triplets_per_anchor=400, seed=1)
    got = set(p[a == 0].tolist())
    assert got == {t for t in range(40) if y[t] == y[0] and t != 0}


def test_sampler_mines_at_epoch_start_and_batches_hold_triplets():
    torch.manual_seed(0)
    x, y = data(n=60, classes=6, seed=4)
    ds = ArrayDataset(x.float(), y)
    model = torch.nn.Linear(6, 4)
    sampler = OfflineHardNegativeSampler(ds, model, batch_size=12, k=3, every=2, seed=0)
    assert len(sampler) == 60 // 4
    sampler.set_epoch(0)
    first = sampler.triplets
    batches = list(sampler)
    assert len(batches) == 15 and all(len(b) <= 12 for b in batches)
    members = set(map(tuple, torch.stack(list(first), 1).tolist()))
    # the first batch holds 4 whole mined triplets
    b0 = set(batches[0])
    assert sum(1 for t in members if set(t) <= b0) >= 4
    assert batches == list(sampler)  # deterministic per epoch
    with torch.no_grad():
        model.weight.mul_(-1.0).add_(0.5)
    sampler.set_epoch(1)  # not a mining epoch (every=2)
    assert sampler.triplets is first
    sampler.set_epoch(2)  # re-mined with the changed model
    assert sampler.triplets is not first
    tuples = sampler.tuple_dataset()
    assert tuples.kind == "triplets" and len(tuples) == len(sampler.triplets.anchor)


def test_sampler_drives_the_trainer():
    from dmlkit.config.schema import Config
    from dmlkit.training import Trainer

    x, y = data(n=80, classes=8, seed=5)
    ds = ArrayDataset(x.float(), y)
    config = Config.from_dict(
        {
            "model": {"name": "mlp", "in_features": 6, "dim": 4, "hidden": [8]},
            "loss": {"name": "triplet_margin", "margin": 0.2},
            "miner": {"name": "batch_hard"},
            "training": {"epochs": 2, "progress": False},
        }
    )
    torch.manual_seed(0)
    from dmlkit.models import MLPEmbedder

    model = MLPEmbedder(6, 4, hidden=(8,))
    sampler = OfflineHardNegativeSampler(ds, model, batch_size=24, k=4, num_batches=4, seed=0)
    trainer = Trainer(config, ds, model=model, sampler=sampler, log=None)
    history = trainer.fit()
    assert len(history) == 2 and all(math.isfinite(r["loss"]) for r in history)
    assert sampler._mined_epoch == 1  # mined again at the start of the second epoch
