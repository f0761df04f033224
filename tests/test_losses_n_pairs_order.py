"""Which positive pair NPairsLoss keeps per class, given mined pairs.

Rule (pytorch-metric-learning's): of the positive pairs in the order they are listed, the
first whose anchor has the label. The two libraries' MultiSimilarityMiners find the same
pairs but list them in different orders, which alone makes their miner + NPairsLoss
pipelines differ; on the same tuples the two losses agree.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dmlkit.functional.tuples import Pairs, Triplets
from dmlkit.losses import NPairsLoss
from dmlkit.miners import MultiSimilarityMiner

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(24, 6, generator=g, dtype=torch.float64), torch.randint(0, 5, (24,),
                                                                               generator=g)


def naive_n_pairs(x: torch.Tensor, labels: torch.Tensor, a1: list[int], p: list[int]) -> float:
    """The loss by loops: the first listed pair of each anchor label, cross entropy over the
    kept positives (normalized dot products), fp64."""
    kept: dict[int, tuple[int, int]] = {}
    for a, q in zip(a1, p, strict=True):
        kept.setdefault(int(labels[a]), (a, q))
    if not kept:
        return 0.0
    unit = F.normalize(x.double(), dim=1)
    pairs = list(kept.values())
    total = 0.0
    for a, q in pairs:
        logits = [float(unit[a] @ unit[q2]) for _, q2 in pairs]
        total += math.log(sum(math.exp(v) for v in logits)) - float(unit[a] @ unit[q])
    return total / len(pairs)


@pytest.mark.parametrize("seed", range(4))
def test_same_tuples_same_value_as_pytorch_metric_learning_in_any_order(seed):
    x, y = batch(seed)
    mined = MultiSimilarityMiner(epsilon=0.3)(x, y)
    g = torch.Generator().manual_seed(100 + seed)
    for order in (torch.arange(len(mined.a1)), torch.randperm(len(mined.a1), generator=g)):
        pairs = Pairs(mined.a1[order], mined.p[order], mined.a2, mined.n)
        ours = NPairsLoss()(x, y, indices=pairs)
        theirs = pml_losses.NPairsLoss()(x, y, tuple(pairs))
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-12)
        want = naive_n_pairs(x, y, pairs.a1.tolist(), pairs.p.tolist())
        assert ours.item() == pytest.approx(want, rel=1e-12)


def test_the_first_listed_pair_of_each_label_is_kept():
    x, _ = batch(0)
    y = torch.tensor([0, 0, 0, 1, 1, 1] + [2] * 18)
    first = Pairs(torch.tensor([0, 3, 1]), torch.tensor([1, 4, 2]),
                  torch.tensor([0]), torch.tensor([3]))
    later = Pairs(torch.tensor([1, 3, 0]), torch.tensor([2, 4, 1]),
                  torch.tensor([0]), torch.tensor([3]))  # class 0: (1, 2) listed first now
    a = NPairsLoss()(x, y, indices=first)
    b = NPairsLoss()(x, y, indices=later)
    assert a.item() == pytest.approx(naive_n_pairs(x, y, [0, 3], [1, 4]), rel=1e-12)
    assert b.item() == pytest.approx(naive_n_pairs(x, y, [1, 3], [2, 4]), rel=1e-12)
    assert a.item() != pytest.approx(b.item(), rel=1e-6)  # the listing order decides
    # triplets give their (anchor, positive) pairs, in order; negatives are not used
    t = Triplets(torch.tensor([0, 3, 1]), torch.tensor([1, 4, 2]), torch.tensor([5, 0, 3]))
    assert NPairsLoss()(x, y, indices=t).item() == pytest.approx(a.item(), rel=1e-12)


def test_without_indices_the_lowest_index_anchor_and_positive_stand_for_a_class():
    x, y = batch(1)
    a1, p = [], []
    for a in range(len(y)):  # row-major: every positive pair, by anchor then positive
        for q in range(len(y)):
            if q != a and y[q] == y[a]:
                a1.append(a)
                p.append(q)
    ours = NPairsLoss()(x, y)
    assert ours.item() == pytest.approx(naive_n_pairs(x, y, a1, p), rel=1e-12)
    assert ours.item() == pytest.approx(pml_losses.NPairsLoss()(x, y).item(), rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_the_miners_list_the_same_pairs_in_different_orders(seed):
    """The source of the different pipeline values: same set of mined pairs, different
    order (dmlkit: row-major; pytorch-metric-learning: each anchor's positives from least
    to most similar), so NPairsLoss keeps different positives."""
    x, y = batch(seed)
    ours = MultiSimilarityMiner(epsilon=0.3)(x, y)
    theirs = pml_miners.MultiSimilarityMiner(epsilon=0.3)(x, y)
    ours_pos = list(zip(ours.a1.tolist(), ours.p.tolist(), strict=True))
    theirs_pos = list(zip(theirs[0].tolist(), theirs[1].tolist(), strict=True))
    assert sorted(ours_pos) == sorted(theirs_pos)
    assert ours_pos == sorted(ours_pos)  # row-major
    sim = F.normalize(x, dim=1) @ F.normalize(x, dim=1).T
    for a in set(theirs[0].tolist()):
        listed = [q for b, q in theirs_pos if b == a]
        values = [float(sim[a, q]) for q in listed]
        assert values == sorted(values)  # least similar first
    # each loss on each miner's tuples: the two libraries agree tuple by tuple
    for tuples in (tuple(ours), tuple(theirs)):
        assert NPairsLoss()(x, y, indices=tuples).item() == pytest.approx(
            pml_losses.NPairsLoss()(x, y, tuples).item(), rel=1e-12)
    # and the pipelines differ exactly where the first listed pair of a label differs
    def kept(pos: list[tuple[int, int]]) -> dict[int, tuple[int, int]]:
        out: dict[int, tuple[int, int]] = {}
        for a, q in pos:
            out.setdefault(int(y[a]), (a, q))
        return out

    differ = kept(ours_pos) != kept(theirs_pos)
    gap = NPairsLoss()(x, y, indices=ours).item() - NPairsLoss()(x, y, indices=tuple(theirs)).item()
    assert differ == (abs(gap) > 1e-12)
