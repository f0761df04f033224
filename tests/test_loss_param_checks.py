"""Parameter checks and numerical fixes of the metric losses and miners.

Ranked list loss at large temperatures / margins (no overflow to NaN), a non-distance
``distance=`` refused, mixed-dtype reference sets, and hyper-parameters that make a loss
untrainable refused when it is built.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from dmlkit.distances import CosineSimilarity, EuclideanDistance
from dmlkit.losses import (
    CircleLoss,
    ContrastiveLoss,
    HierarchicalTripletLoss,
    InstanceLoss,
    LiftedStructureLoss,
    MarginLoss,
    NCALoss,
    QuadrupletLoss,
    RankedListLoss,
    TripletMarginLoss,
    TupletMarginLoss,
)
from dmlkit.losses.lifted_structure import GeneralizedLiftedStructureLoss
from dmlkit.miners import AngularMiner, TripletMarginMiner
from dmlkit.registry import LOSSES, MINERS, build_from_config


def batch(seed: int = 0, n: int = 16, dim: int = 8, classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    return x, torch.arange(n) % classes


def stable_ranked_list(x, y, margin, Tn, Tp=0.0, imbalance=0.5, shift=True):
    """Loop reference in fp64; with ``shift`` the weights are scaled by the row's largest
    (the same ratio, finite for any T), without it they are the paper's, as written."""
    alpha = 1 + margin / 2
    xs = F.normalize(x.detach(), dim=1)
    eps = 1e-5 * len(y)
    total = 0.0
    for i in range(len(y)):
        parts = []
        for positive, temp in ((True, Tp), (False, Tn)):
            gaps = []
            for j in range(len(y)):
                d = float((xs[i] - xs[j]).norm())
                if i == j or d == 0:
                    continue
                if positive and y[i] == y[j] and d > alpha - margin:
                    gaps.append(d - (alpha - margin))
                if not positive and y[i] != y[j] and d < alpha:
                    gaps.append(alpha - d)
            if not gaps:
                parts.append(0.0)
                continue
            top = max(0.0, max(temp * g for g in gaps)) if shift else 0.0
            w = [math.exp(temp * g - top) for g in gaps]
            parts.append(sum(wi * g for wi, g in zip(w, gaps, strict=True))
                         / (sum(w) + eps * math.exp(-top)))
        total += (1 - imbalance) * parts[0] + imbalance * parts[1]
    return total / len(y)


# -- ranked list: no overflow ---------------------------------------------------------------


@pytest.mark.parametrize("margin, Tn, Tp", [(0.4, 1.0, 0.0), (0.4, 10.0, 0.0), (0.8, 3.0, 2.0),
                                            (0.4, 50.0, 20.0)])
def test_ranked_list_unchanged_at_moderate_temperatures(margin, Tn, Tp):
    x, y = batch()
    got = RankedListLoss(margin=margin, Tn=Tn, Tp=Tp)(x, y)
    naive = stable_ranked_list(x, y, margin, Tn, Tp, shift=False)
    torch.testing.assert_close(got.item(), naive, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(stable_ranked_list(x, y, margin, Tn, Tp), naive,
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("margin, Tn, Tp", [(0.4, 200.0, 0.0), (1.0, 1000.0, 0.0),
                                            (0.4, 10.0, 1000.0), (1e6, 1.0, 0.0),
                                            (1e3, 1e3, 0.0), (0.4, 1e6, 0.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ranked_list_finite_at_large_temperatures_and_margins(margin, Tn, Tp, dtype):
    x, y = batch()
    leaf = x.clone().to(dtype).requires_grad_()
    loss = LOSSES.build("ranked_list", margin=margin, Tn=Tn, Tp=Tp)(leaf, y)
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(leaf.grad).all())
    want = stable_ranked_list(x, y, margin, Tn, Tp)
    assert loss.item() == pytest.approx(want, rel=1e-5 if dtype == torch.float32 else 1e-9)


def test_ranked_list_rows_without_violators_stay_zero_at_large_temperature():
    x, _ = batch()
    y = torch.zeros(len(x), dtype=torch.long)  # one class: no negatives at all
    loss = RankedListLoss(margin=0.4, Tn=1e4, Tp=0.0, imbalance=1.0)(x.requires_grad_(), y)
    assert loss.item() == 0.0
    loss.backward()
    assert bool(torch.isfinite(x.grad).all())


def test_ranked_list_warns_no_more():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RankedListLoss(margin=0.4, Tn=200.0, Tp=50.0)


# -- distance must be a distance object -----------------------------------------------------


@pytest.mark.parametrize("bad", ["cosine", {"name": "cosine"}, CosineSimilarity])
def test_loss_refuses_a_non_distance(bad):
    with pytest.raises(TypeError, match=r"CosineSimilarity\(\)"):
        TripletMarginLoss(distance=bad)
    with pytest.raises(TypeError, match="cosine|CosineSimilarity"):
        LOSSES.build("triplet_margin", distance=bad)


@pytest.mark.parametrize("bad", ["cosine", {"name": "cosine"}])
def test_miner_refuses_a_non_distance(bad):
    with pytest.raises(TypeError, match=r"CosineSimilarity\(\).*cosine"):
        TripletMarginMiner(distance=bad)
    with pytest.raises(TypeError, match="cosine"):
        MINERS.build("triplet_margin", distance=bad)


def test_config_distance_names_still_build():
    loss = build_from_config(LOSSES, {"name": "triplet_margin", "distance": "cosine"})
    assert isinstance(loss.distance, CosineSimilarity)
    miner = build_from_config(MINERS, {"name": "triplet_margin", "distance": {"name": "cosine"}})
    assert isinstance(miner.distance, CosineSimilarity)


# -- reference set in another float dtype ---------------------------------------------------


@pytest.mark.parametrize("emb_dtype, ref_dtype", [(torch.float32, torch.float64),
                                                  (torch.float64, torch.float32),
                                                  (torch.bfloat16, torch.float64)])
def test_ref_embeddings_in_another_dtype(emb_dtype, ref_dtype):
    x, y = batch()
    r, ry = batch(1, n=12)
    loss = TripletMarginLoss(margin=0.2)
    got = loss(x.to(emb_dtype), y, ref_embeddings=r.to(ref_dtype), ref_labels=ry)
    common = torch.promote_types(torch.float32 if emb_dtype == torch.bfloat16 else emb_dtype,
                                 ref_dtype)
    want = loss(x.to(emb_dtype).to(common), y, ref_embeddings=r.to(ref_dtype).to(common),
                ref_labels=ry)
    assert got.dtype == common
    torch.testing.assert_close(got, want)
    mined = TripletMarginMiner(margin=0.2)(x.to(emb_dtype), y, r.to(ref_dtype), ry)
    assert mined.anchor.numel() > 0


# -- untrainable hyper-parameters -----------------------------------------------------------


@pytest.mark.parametrize("build, value", [
    (lambda v: CircleLoss(gamma=v), 0.0),
    (lambda v: CircleLoss(gamma=v), -1.0),
    (lambda v: TupletMarginLoss(scale=v), 0.0),
    (lambda v: NCALoss(softmax_scale=v), 0.0),
    (lambda v: NCALoss(softmax_scale=v), -2.0),
    (lambda v: InstanceLoss(gamma=v), -64.0),
    (lambda v: TripletMarginLoss(margin=v), -0.1),
    (lambda v: LiftedStructureLoss(neg_margin=v), -1.0),
    (lambda v: LiftedStructureLoss(pos_margin=v), -0.5),
    (lambda v: GeneralizedLiftedStructureLoss(neg_margin=v), -1.0),
    (lambda v: QuadrupletLoss(margin=v), -0.2),
    (lambda v: QuadrupletLoss(margin2=v), -0.3),
    (lambda v: HierarchicalTripletLoss(margin=v), -0.1),
    (lambda v: HierarchicalTripletLoss(margins=[0.2, v]), -0.4),
    (lambda v: MarginLoss(margin=v), -0.2),
    (lambda v: ContrastiveLoss(pos_margin=v, neg_margin=0.5), 0.75),
    (lambda v: ContrastiveLoss(pos_margin=v, neg_margin=0.5, distance=CosineSimilarity()), 0.25),
    (lambda v: AngularMiner(angle=v), 0.0),
    (lambda v: AngularMiner(angle=v), 90.0),
    (lambda v: AngularMiner(angle=v), -5.0),
])
def test_untrainable_values_are_refused(build, value):
    with pytest.raises(ValueError, match=str(value)):
        build(value)


def test_boundary_values_stay_allowed():
    x, y = batch()
    for loss in (TripletMarginLoss(margin=0.0), QuadrupletLoss(margin=0.0, margin2=0.0),
                 MarginLoss(margin=0.0), HierarchicalTripletLoss(margin=0.0),
                 HierarchicalTripletLoss(margins=[0.0]), LiftedStructureLoss(neg_margin=0.0),
                 ContrastiveLoss(pos_margin=0.5, neg_margin=0.5),
                 ContrastiveLoss(pos_margin=1.0, neg_margin=0.0, distance=CosineSimilarity()),
                 LiftedStructureLoss(neg_margin=-0.5, distance=CosineSimilarity()),
                 CircleLoss(gamma=1e-3), NCALoss(softmax_scale=1e-3)):
        assert torch.isfinite(loss(x, y))
    AngularMiner(angle=89.0)
    assert isinstance(EuclideanDistance(), EuclideanDistance)


def test_ranked_list_qa_repro_tn_200_is_finite():
    torch.manual_seed(0)
    x, y = torch.randn(16, 8).requires_grad_(), torch.arange(16) % 4
    loss = LOSSES.build("ranked_list", margin=0.4, Tn=200, Tp=0)(x, y)
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(x.grad).all())
    want = stable_ranked_list(x.detach().double(), y, 0.4, 200.0)
    assert loss.item() == pytest.approx(want, rel=1e-5)
