"""A miner's matrix is handed to the loss only when both measure with the same tensor
state: a Mahalanobis distance with other ``components`` (or none) is another distance."""

from __future__ import annotations

import math

import pytest
import torch

from dmlkit.distances import EuclideanDistance, MahalanobisDistance, matrix_memo
from dmlkit.losses import ContrastiveLoss
from dmlkit.miners import PairMarginMiner

L = torch.diag(torch.tensor([5.0, 0.1, 3.0, 0.2]))


def _naive_contrastive(x, pairs, components, pos_margin=0.0, neg_margin=1.0) -> float:
    """Loop reference in fp64: each part averaged over its pairs with non-zero cost."""
    z = x.double() @ components.double().T

    def dist(i: int, j: int) -> float:
        return math.sqrt(sum((float(a) - float(b)) ** 2
                             for a, b in zip(z[i], z[j], strict=True)))

    pos = [max(0.0, dist(i, j) - pos_margin)
           for i, j in zip(pairs.a1.tolist(), pairs.p.tolist(), strict=True)]
    neg = [max(0.0, neg_margin - dist(i, j))
           for i, j in zip(pairs.a2.tolist(), pairs.n.tolist(), strict=True)]
    mean_pos = sum(pos) / max(1, sum(c > 0 for c in pos))
    return mean_pos + sum(neg) / max(1, sum(c > 0 for c in neg))


@pytest.fixture(autouse=True)
def _clean_memo():
    matrix_memo.forget()
    yield
    matrix_memo.forget()


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(12, 4, generator=g), torch.randint(0, 3, (12,), generator=g)


@pytest.mark.parametrize("miner_components", [None, torch.eye(4)])
def test_loss_after_a_miner_with_other_components_uses_its_own(miner_components):
    x, y = _batch()
    miner = PairMarginMiner(0.0, 100.0, distance=MahalanobisDistance(miner_components))
    loss = ContrastiveLoss(distance=MahalanobisDistance(L))
    e = x.clone().requires_grad_(True)
    pairs = miner(e, y)
    assert len(pairs.a1) and len(pairs.a2)
    value = loss(e, y, indices=pairs)
    value.backward()
    assert value.item() == pytest.approx(_naive_contrastive(x, pairs, L), rel=1e-5)
    e2 = x.clone().requires_grad_(True)
    pairs2 = miner(e2, y)
    matrix_memo.forget()
    loss(e2, y, indices=pairs2).backward()
    torch.testing.assert_close(e.grad, e2.grad)


def test_distance_keys_tell_tensor_state_apart():
    key = matrix_memo.distance_key
    a, b = MahalanobisDistance(L), MahalanobisDistance(L)
    assert key(MahalanobisDistance()) != key(a)
    assert key(a) == key(b)  # equal values (small tensors compare by value): shared
    assert key(a) != key(MahalanobisDistance(2 * L))
    assert key(a) == key(a)
    before = key(a)
    a.components.mul_(2.0)  # changed in place (a trained metric after a step)
    assert key(a) != before
    assert key(EuclideanDistance()) == key(EuclideanDistance())
    assert key(EuclideanDistance()) != key(EuclideanDistance(squared=True))


def test_shared_distance_object_still_shares_unless_changed_in_place():
    x, _ = _batch()
    d = MahalanobisDistance(L)
    mat = d(x)
    matrix_memo.remember(x, None, d, mat)
    assert matrix_memo.recall(x, None, d) is mat
    matrix_memo.remember(x, None, d, mat)
    d.components.add_(1.0)
    assert matrix_memo.recall(x, None, d) is None


def test_trainable_components_changed_by_a_step_are_not_read_stale():
    x, _ = _batch()
    d = MahalanobisDistance(L)
    d.components = torch.nn.Parameter(d.components.clone())  # (a learned metric)
    mat = d(x).detach()
    matrix_memo.remember(x, None, d, mat)
    with torch.no_grad():
        d.components.mul_(0.5)  # an optimizer step
    assert matrix_memo.recall(x, None, d) is None


def test_a_setting_kept_in_an_underscore_attribute_tells_distances_apart():
    from dmlkit.distances import BaseDistance

    class PowDist(BaseDistance):
        def __init__(self, power):
            super().__init__()
            self._power = power

        def compute_matrix(self, q, r):
            return torch.cdist(q, r) ** self._power

    key = matrix_memo.distance_key
    assert key(PowDist(1.0)) != key(PowDist(2.0))
    assert key(PowDist(2.0)) == key(PowDist(2.0))


def test_large_tensor_state_compares_by_identity_and_version():
    big = torch.eye(matrix_memo.SMALL_TENSOR // 256 + 1)  # more elements than "small"
    assert big.numel() > matrix_memo.SMALL_TENSOR
    key = matrix_memo.distance_key
    a, b = MahalanobisDistance(big), MahalanobisDistance(big.clone())
    assert key(a) == key(a) and key(a) != key(b)
