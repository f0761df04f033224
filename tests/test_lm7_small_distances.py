"""Euclidean zero cut relative to the embeddings' scale, FastAP's refusal of raw
distances, and the documented way to get pytorch-metric-learning's self-pair rule."""

from __future__ import annotations

import pytest
import torch

import dmlkit.losses._tuple_distances as tuple_distances
from dmlkit.distances import EuclideanDistance
from dmlkit.functional import Pairs
from dmlkit.functional.distances import pairwise_euclidean, rowwise_euclidean
from dmlkit.functional.tuples import all_pairs, all_triplets
from dmlkit.losses import FastAPLoss, MultiSimilarityLoss, NTXentLoss, TripletMarginLoss

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_dist = pytest.importorskip("pytorch_metric_learning.distances")

RAW = EuclideanDistance(normalize_embeddings=False)


def tiny_batch():
    torch.manual_seed(0)
    x = torch.randn(8, 4, dtype=torch.float64) * 1e-7  # un-normalized, small norms
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    return x, y


def value_and_grad(loss, x, *args, **kwargs):
    x = x.clone().requires_grad_(True)
    value = loss(x, *args, **kwargs)
    value.backward()
    return value.detach(), x.grad


# -- distances of tiny embeddings --------------------------------------------------------
def test_tiny_embeddings_keep_their_distances():
    x, _ = tiny_batch()
    want = torch.cdist(x, x)
    assert want.max() < 1e-6  # all of them below the old absolute cut
    assert torch.allclose(RAW(x), want, rtol=1e-7, atol=0)
    assert torch.allclose(pairwise_euclidean(x, x.flip(0)), torch.cdist(x, x.flip(0)), rtol=1e-7)
    assert torch.allclose(rowwise_euclidean(x, x.flip(0)), (x - x.flip(0)).norm(dim=1), rtol=1e-12)


def test_distances_scale_with_the_embeddings():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    x[4] = x[1]  # an exact duplicate: distance 0 at every scale
    for scale in (1e-9, 1e-3, 1.0, 1e4):
        d = RAW(x * scale)
        assert torch.allclose(d, RAW(x) * scale, rtol=1e-9, atol=0)
        assert d[1, 4] == 0 and d[4, 1] == 0


def test_zero_distance_keeps_a_finite_zero_gradient():
    x = torch.tensor([[1e-8, 2e-8], [1e-8, 2e-8], [3e-8, -1e-8]], dtype=torch.float64)
    x.requires_grad_(True)
    d = RAW(x)
    d[0, 1].backward()
    assert d[0, 1] == 0 and torch.equal(x.grad, torch.zeros_like(x))
    r = RAW.pairwise(x[:2], x[[1, 2]])
    x.grad = None
    r.sum().backward()
    assert r[0] == 0 and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_unit_norm_cut_is_unchanged():
    # unit vectors closer than 1e-6 are the same point (the expansion cannot resolve them)
    x = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 5e-7], [0.0, 1.0]]))
    for dtype in (torch.float32, torch.float64):
        d = EuclideanDistance()(x.to(dtype))
        assert d[0, 1] == 0 and d[0, 2] == pytest.approx(2**0.5)


@pytest.mark.parametrize("path", ["labels", "matrix", "rows"])
def test_tiny_triplet_loss_matches_pml(path, monkeypatch):
    x, y = tiny_batch()
    kwargs = {}
    if path != "labels":
        kwargs["indices"] = all_triplets(y)
        monkeypatch.setattr(tuple_distances, "ROWS_RATIO", 0.0 if path == "matrix" else 1e9)
    ours = value_and_grad(TripletMarginLoss(margin=1e-7, distance=RAW), x, y, **kwargs)
    theirs = value_and_grad(
        pml_losses.TripletMarginLoss(
            margin=1e-7, distance=pml_dist.LpDistance(normalize_embeddings=False)
        ),
        x, y, None if path == "labels" else tuple(kwargs["indices"]),
    )
    assert ours[0].item() == pytest.approx(theirs[0].item(), rel=1e-9)
    assert ours[1].abs().max() > 0.1
    assert torch.allclose(ours[1], theirs[1], rtol=1e-6, atol=1e-9)


# -- FastAP on raw distances -------------------------------------------------------------
@pytest.mark.parametrize("squared", [True, False])
def test_fast_ap_refuses_unnormalized_euclidean(squared):
    with pytest.raises(ValueError, match="normalize_embeddings=True"):
        FastAPLoss(distance=EuclideanDistance(squared=squared, normalize_embeddings=False))
    FastAPLoss(distance=EuclideanDistance(squared=squared))  # normalized: fine


# -- self-pairs against a copy of the batch (documented, not changed) ---------------------
@pytest.mark.parametrize("make,theirs", [
    (NTXentLoss, "NTXentLoss"), (MultiSimilarityLoss, "MultiSimilarityLoss")])
def test_pml_self_pair_rule_by_indices_without_the_diagonal(make, theirs):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(10, 8, generator=g)
    y = torch.arange(10) // 2
    ref = x.detach().clone()
    pml = getattr(pml_losses, theirs)()(x, y, ref_emb=ref, ref_labels=y)
    kept = make()(x, y, ref_embeddings=ref, ref_labels=y)  # (i, i) pairs count here
    assert kept.item() != pytest.approx(pml.item(), rel=1e-3)
    a1, p, a2, n = all_pairs(y, y)
    off = a1 != p
    no_diag = Pairs(a1[off], p[off], a2, n)
    got = make()(x, y, indices=no_diag, ref_embeddings=ref, ref_labels=y)
    assert got.item() == pytest.approx(pml.item(), rel=1e-6)
    assert make()(x, y).item() == pytest.approx(pml.item(), rel=1e-6)



@pytest.mark.parametrize("mined", [False, True])
def test_tiny_contrastive_loss_matches_pml(mined):
    from dmlkit.losses import ContrastiveLoss

    x, y = tiny_batch()
    indices = all_pairs(y) if mined else None
    ours = value_and_grad(ContrastiveLoss(pos_margin=0.0, neg_margin=1e-6, distance=RAW), x, y,
                          **({"indices": indices} if mined else {}))
    theirs = value_and_grad(
        pml_losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1e-6,
                                   distance=pml_dist.LpDistance(normalize_embeddings=False)),
        x, y, tuple(indices) if mined else None)
    assert ours[0].item() == pytest.approx(theirs[0].item(), rel=1e-9)
    assert ours[1].abs().max() > 0.1
    assert torch.allclose(ours[1], theirs[1], rtol=1e-6, atol=1e-7)  # (expansion rounding)
