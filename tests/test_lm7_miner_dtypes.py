"""Miners measure float64 embeddings in float64 (half precision is raised to float32).

Differences below float32's resolution must still decide a float64 selection, as they do
in pytorch-metric-learning, which measures in the embeddings' own dtype.
"""

from __future__ import annotations

import pytest
import torch

from dmlkit.distances import CosineSimilarity, EuclideanDistance
from dmlkit.miners import BatchHardMiner, HDCMiner, TripletMarginMiner
from dmlkit.miners.base import mining_dtype
from dmlkit.registry import MINERS

pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
pml_dist = pytest.importorskip("pytorch_metric_learning.distances")

#: 1-d points whose differences are below float32's resolution (all 1.0 in float32)
TINY = torch.tensor([[1.0], [1.0 + 2e-9], [1.0 + 3e-9]], dtype=torch.float64)
TINY_Y = torch.tensor([0, 0, 1])


def tuples(t):
    return sorted(zip(*(v.tolist() for v in t), strict=True))


def pair_sets(t):
    a1, p, a2, n = (v.tolist() for v in t)
    return sorted(zip(a1, p, strict=True)), sorted(zip(a2, n, strict=True))


@pytest.mark.parametrize("kind", ["easy", "hard"])
def test_triplet_margin_miner_float64_matches_pml(kind):
    ours = TripletMarginMiner(
        margin=0.0, type_of_triplets=kind, distance=EuclideanDistance(normalize_embeddings=False)
    )(TINY, TINY_Y)
    theirs = pml_miners.TripletMarginMiner(
        margin=0.0, type_of_triplets=kind,
        distance=pml_dist.LpDistance(normalize_embeddings=False),
    )(TINY, TINY_Y)
    assert tuples(ours) == tuples(theirs)
    assert tuples(ours) == ([(0, 1, 2)] if kind == "easy" else [(1, 0, 2)])


@pytest.mark.parametrize("sim", [False, True])
def test_batch_hard_miner_float64_matches_pml(sim):
    # unit vectors 1e-5 rad apart: their cosines differ below float32's resolution
    theta = torch.tensor([0.0, 2e-5, 3e-5, 7e-5, 12e-5, 13e-5], dtype=torch.float64)
    x = torch.stack([theta.cos(), theta.sin()], dim=1)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    ours_d, pml_d = (
        (CosineSimilarity(), pml_dist.CosineSimilarity()) if sim
        else (EuclideanDistance(), pml_dist.LpDistance())
    )
    ours = BatchHardMiner(distance=ours_d)(x, y)
    theirs = pml_miners.BatchHardMiner(distance=pml_d)(x, y)
    assert tuples(ours) == tuples(theirs)
    assert (2, 3, 1) in tuples(ours)  # anchor 2's closest negative is 1 (1e-5 away), not 0


def test_hdc_miner_float64_matches_pml():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(18, 6, generator=g).double()
    y = torch.randint(0, 4, (18,), generator=g)
    ours = HDCMiner(filter_percentage=0.3, distance=CosineSimilarity())(x, y)
    theirs = pml_miners.HDCMiner(filter_percentage=0.3, distance=pml_dist.CosineSimilarity())(x, y)
    assert pair_sets(ours) == pair_sets(theirs)


def test_mining_dtype():
    f16, f64 = torch.zeros(2, 2, dtype=torch.float16), torch.zeros(2, 2, dtype=torch.float64)
    assert mining_dtype(f64) == torch.float64
    assert mining_dtype(f64.float()) == torch.float32
    assert mining_dtype(f16) == torch.float32
    assert mining_dtype(f16.bfloat16()) == torch.float32
    assert mining_dtype(f16, f64) == torch.float64
    assert mining_dtype(f64.float(), f64) == torch.float64


def _batch(dtype, n=15, dim=8):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, dim, generator=g).to(dtype)
    y = torch.arange(n) % 3
    return x, y


def _same(a, b):
    return type(a) is type(b) and all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


@pytest.mark.parametrize("name", MINERS.names())
def test_every_miner_mines_float64(name):
    x, y = _batch(torch.float64)
    out = MINERS.build(name)(x, y)
    assert all(t.dtype == torch.long for t in out)
    assert sum(t.numel() for t in out) > 0
    # with a reference set of another dtype (promoted to float64)
    ref = MINERS.build(name)
    if name != "packed_triplets":  # it has no reference-set form
        out = ref(x, y, ref_embeddings=x[:9].float(), ref_labels=y[:9])
        assert all(t.dtype == torch.long for t in out)


@pytest.mark.parametrize("name", MINERS.names())
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_every_miner_mines_half_precision_as_float32(name, half):
    x, y = _batch(half)
    assert _same(MINERS.build(name)(x, y), MINERS.build(name)(x.float(), y))
