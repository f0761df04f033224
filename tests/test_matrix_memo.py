"""A miner's distance matrix reused by the loss after it, and never reused wrongly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dmlkit.distances import EuclideanDistance, matrix_memo
from dmlkit.losses import ContrastiveLoss
from dmlkit.losses import _tuple_distances as td
from dmlkit.miners import MultiSimilarityMiner, PairMarginMiner


def _batch(b: int = 160, dim: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(b) // 32
    centres = F.normalize(torch.randn(int(labels.max()) + 1, dim, generator=g), dim=1)
    x = F.normalize(centres[labels] + torch.randn(b, dim, generator=g) / dim**0.5, dim=1)
    return x, labels


def _step(x0, labels, forget: bool):
    x = x0.clone().requires_grad_(True)
    pairs = PairMarginMiner(0.2, 0.8)(x, labels)
    if forget:
        matrix_memo.forget()
    loss = ContrastiveLoss()(x, labels, indices=pairs)
    loss.backward()
    return loss.detach(), x.grad


def test_loss_on_mined_pairs_reads_the_miners_matrix(monkeypatch):
    x0, labels = _batch()
    x = x0.clone().requires_grad_(True)
    pairs = PairMarginMiner(0.2, 0.8)(x, labels)

    def no_matrix(*_a, **_k):
        raise AssertionError("the loss computed a second matrix")

    monkeypatch.setattr(td, "_matrix", no_matrix)
    ContrastiveLoss()(x, labels, indices=pairs).backward()  # would raise without reuse
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_reused_matrix_gives_the_same_loss_and_gradient():
    x0, labels = _batch()
    v1, g1 = _step(x0, labels, forget=False)
    v2, g2 = _step(x0, labels, forget=True)
    torch.testing.assert_close(v1, v2, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-7)


def test_recall_misses_on_other_tensors_versions_distances_and_second_reads():
    x, _ = _batch(8, 4)
    d = EuclideanDistance()
    mat = d(x, x)
    matrix_memo.remember(x, None, d, mat)
    assert matrix_memo.recall(x, None, d) is mat
    assert matrix_memo.recall(x, None, d) is None  # read once
    matrix_memo.remember(x, None, d, mat)
    assert matrix_memo.recall(x.clone(), None, d) is None  # another tensor
    matrix_memo.remember(x, None, d, mat)
    x.mul_(2.0)  # changed in place since the miner measured it
    assert matrix_memo.recall(x, None, d) is None
    matrix_memo.remember(x, None, d, mat)
    assert matrix_memo.recall(x, None, EuclideanDistance(squared=True)) is None
    matrix_memo.remember(x, None, d, mat)
    assert matrix_memo.recall(x, x, d) is None  # given references: not the same request
    matrix_memo.remember(x, None, d, mat)
    assert matrix_memo.recall(x.double(), None, d) is None


def test_large_matrices_are_not_held(monkeypatch):
    monkeypatch.setattr(matrix_memo, "MAX_ENTRIES", 10)
    x, _ = _batch(8, 4)
    d = EuclideanDistance()
    matrix_memo.remember(x, None, d, d(x, x))  # 64 entries > 10
    assert matrix_memo.recall(x, None, d) is None


def test_cosine_miner_matrix_is_not_read_by_a_euclidean_loss():
    x0, labels = _batch()
    x = x0.clone().requires_grad_(True)
    pairs = MultiSimilarityMiner()(x, labels)  # cosine similarities
    loss = ContrastiveLoss()(x, labels, indices=pairs)  # Euclidean distances
    x2 = x0.clone().requires_grad_(True)
    matrix_memo.forget()
    ref = ContrastiveLoss()(x2, labels, indices=pairs)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
