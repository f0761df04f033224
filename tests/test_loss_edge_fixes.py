"""Edge cases of losses, miners and distances found by QA (each test fails without its fix).

1. HistogramLoss refuses a distance (it needs a similarity in [-1, 1]).
2. HistogramLoss with a ``delta`` that does not divide 2 stays a probability in [0, 1].
3. MarginLoss with per-class betas refuses labels < 0 (no negative indexing of beta).
4. The batch passed as its own reference (same tensor objects) is no reference:
   self-pairs stay excluded, as in pytorch-metric-learning.
5. SNRDistance floors an anchor row's zero variance: a large finite distance, no inf / NaN
   distances and inf gradients.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from dmlkit.distances import (
    CosineSimilarity,
    DotProductSimilarity,
    EuclideanDistance,
    SNRDistance,
)
from dmlkit.functional import resolve_reference
from dmlkit.functional.tuples import Triplets
from dmlkit.losses import (
    HistogramLoss,
    MarginLoss,
    NTXentLoss,
    SelfSupervisedLoss,
    SignalToNoiseRatioContrastiveLoss,
    SupConLoss,
)
from dmlkit.miners import BatchHardMiner
from dmlkit.registry import LOSSES, MINERS, build_from_config


def batch(n: int = 10, dim: int = 8, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=dtype)
    y = torch.tensor([2, 2, 3, 2, 3, 3, 2, 2, 3, 0])[:n] if n <= 10 else torch.arange(n) % 4
    return x, y


# -- 1. HistogramLoss needs a similarity -------------------------------------------------------
@pytest.mark.parametrize(
    "distance", [EuclideanDistance(), EuclideanDistance(squared=True), SNRDistance()],
    ids=["euclidean", "squared_euclidean", "snr"],
)
def test_histogram_refuses_a_distance(distance):
    with pytest.raises(ValueError, match="HistogramLoss needs a similarity such as Cosine"):
        HistogramLoss(n_bins=10, distance=distance)


@pytest.mark.parametrize("spec", ["euclidean", {"name": "euclidean", "squared": True}])
def test_histogram_refuses_a_distance_from_config(spec):
    with pytest.raises(ValueError, match="HistogramLoss needs a similarity"):
        build_from_config(LOSSES, {"name": "histogram", "distance": spec})


def test_histogram_takes_similarities_and_is_low_on_clusters():
    torch.manual_seed(0)
    y = torch.arange(4).repeat_interleave(4)
    clustered = (torch.randn(4, 8) * 3)[y] + 0.05 * torch.randn(16, 8)
    for distance in (CosineSimilarity(), DotProductSimilarity()):  # both normalize
        assert HistogramLoss(n_bins=10, distance=distance)(clustered, y).item() < 0.01


# -- 2. delta that does not divide 2 -----------------------------------------------------------
def naive_histogram(x: torch.Tensor, y: torch.Tensor, delta: float) -> torch.Tensor:
    """Loop reference (fp64): nodes -1 + k delta up to the first node at or above 1, each
    pair's unit mass on the triangular kernels of the nodes (the paper's eq. 2)."""
    steps = 2 / delta
    last = round(steps) if math.isclose(steps, round(steps), rel_tol=1e-9) else math.ceil(steps)
    nodes = [-1.0 + k * delta for k in range(last + 1)]
    xn = F.normalize(x, dim=1)
    n = len(y)
    has_pos = [any(y[j] == y[i] for j in range(n) if j != i) for i in range(n)]
    has_neg = [any(y[j] != y[i] for j in range(n)) for i in range(n)]
    pos = [(i, j) for i in range(n) for j in range(i + 1, n) if y[i] == y[j] and has_neg[i]]
    neg = [(i, j) for i in range(n) for j in range(i + 1, n)
           if y[i] != y[j] and (has_pos[i] or has_pos[j])]

    def density(pairs):
        return [sum(torch.relu(1 - ((xn[i] @ xn[j]).clamp(-1, 1) - t).abs() / delta)
                    for i, j in pairs) / len(pairs) for t in nodes]

    p_pos, p_neg = density(pos), density(neg)
    total, cdf = 0.0, 0.0
    for k in range(len(nodes)):
        cdf = cdf + p_pos[k]
        total = total + p_neg[k] * cdf
    return total


def test_histogram_delta_not_dividing_two_is_a_probability():
    # QA's repro: two tight clusters at cosine 0.35; delta=0.45 put the last node at 0.8
    # (round(1 + 2 / 0.45) = 5 nodes), so similarities of 1 were extrapolated: loss -0.444
    c = 0.35
    s = math.sqrt(1 - c * c)
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [c, s], [c, s]])
    y = torch.tensor([0, 0, 1, 1])
    loss = HistogramLoss(delta=0.45)
    assert loss.n_nodes == 6  # nodes -1, -0.55, ..., 0.8, 1.25
    value = loss(x, y)
    assert 0.0 <= value.item() <= 1e-6  # positives at 1, negatives at 0.35: separated


@pytest.mark.parametrize("delta", [0.45, 0.3, 0.35, 0.7, 1.5, 0.13])
def test_histogram_any_delta_matches_loop_reference_and_stays_in_unit_interval(delta):
    for seed in range(3):
        x, y = batch(12, dim=3, seed=seed)
        x = torch.cat([x, x[:2] + 1e-3])  # near-duplicates: similarities close to 1
        y = torch.cat([y, y[:2]])
        got = HistogramLoss(delta=delta)(x, y)
        assert 0.0 <= got.item() <= 1.0
        torch.testing.assert_close(got, naive_histogram(x, y, delta), atol=1e-9, rtol=1e-7)
    x, y = batch(8, dim=3, seed=5)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: HistogramLoss(delta=delta)(t, y), (x,))


@pytest.mark.parametrize("delta", [0.3, 0.35, 0.45])
def test_histogram_delta_matches_pml_where_pml_runs(delta):
    # pytorch-metric-learning keeps round(1 + 2 / delta) nodes: for 0.3 and 0.35 that is
    # the same grid as here; for 0.45 it has one node fewer and fails with an index error
    # on similarities above its last node (0.8), so the batch keeps below it (the extra
    # node then holds no mass and the losses agree)
    x, y = batch(10, dim=16, seed=1)
    xn = F.normalize(x, dim=1)
    assert (xn @ xn.T - torch.eye(10, dtype=x.dtype)).max() < 0.8
    got = HistogramLoss(delta=delta)(x, y)
    want = pml_losses.HistogramLoss(delta=delta)(x, y)
    torch.testing.assert_close(got, want)


# -- 3. MarginLoss per-class betas: labels < 0 -------------------------------------------------
def margin_with_betas() -> MarginLoss:
    loss = MarginLoss(learn_beta=True, num_classes=4)
    with torch.no_grad():
        loss.beta.copy_(torch.tensor([0.5, 0.9, 1.3, 1.7]))
    return loss


def test_margin_per_class_beta_refuses_negative_labels():
    x, y = batch(dtype=torch.float32)
    y = y.clone()
    y[0] = -1  # was beta[-1], class 3's
    loss = margin_with_betas()
    with pytest.raises(ValueError, match="label -1 is outside"):
        loss(x, y)
    t = Triplets(torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    with pytest.raises(ValueError, match="label -1 is outside"):
        loss(x, y, indices=t)
    with pytest.raises(ValueError, match="label 4 is outside"):
        loss(x, torch.where(y < 0, 4, y))
    assert torch.isfinite(loss(x, torch.where(y < 0, 0, y)))


# -- 4. the batch as its own reference ---------------------------------------------------------
SPECIAL: dict[str, dict[str, Any]] = {
    "circle": {"detach_weights": False},
    "dynamic_soft_margin": {"momentum": 1.0},
    "multiple_losses": {"losses": {"a": LOSSES.build("contrastive"),
                                   "b": LOSSES.build("multi_similarity")}},
    "weighted_sum": {"losses": [LOSSES.build("contrastive"),
                                LOSSES.build("multi_similarity")]},
    "ranked_list": {"margin": 0.4, "Tn": 1.0},
    "p2s_grad": {"descriptors_dim": 8},
    "manifold": {"l": 8, "K": 4},
}
#: no reference-set argument at all: the memory is the reference / two-view losses
NO_REF = {"cross_batch_memory", "vicreg"}


def make(registry, name: str):
    cls = registry.get(name)
    sig = inspect.signature(cls.__init__).parameters
    params: dict[str, Any] = {}
    if "num_classes" in sig:
        params["num_classes"] = 4
    if "embedding_size" in sig:
        params["embedding_size"] = 8
    if "loss" in sig and sig["loss"].default is inspect.Parameter.empty:
        params["loss"] = LOSSES.build("contrastive")
    params.update(SPECIAL.get(name, {}))
    torch.manual_seed(0)
    return cls(**params).double()


def value_and_grad(loss_fn, x, y, **kwargs):
    x = x.detach().clone().requires_grad_(True)
    kw = {k: (x if v == "x" else v) for k, v in kwargs.items()}
    value = loss_fn(x, y, **kw)
    (grad,) = torch.autograd.grad(value, x, allow_unused=True)
    return value.detach(), grad


@pytest.mark.parametrize("name", [n for n in LOSSES.names() if n not in NO_REF])
def test_every_loss_treats_the_batch_as_its_own_reference_as_no_reference(name):
    x, y = batch(12)
    v0, g0 = value_and_grad(make(LOSSES, name), x, y)
    v1, g1 = value_and_grad(make(LOSSES, name), x, y, ref_embeddings="x", ref_labels=y)
    torch.testing.assert_close(v1, v0)
    if g0 is not None or g1 is not None:
        torch.testing.assert_close(g1, g0)


@pytest.mark.parametrize("name", [n for n in MINERS.names() if n != "packed_triplets"])
def test_every_miner_treats_the_batch_as_its_own_reference_as_no_reference(name):
    x, y = batch(12)
    plain = make(MINERS, name)(x, y)
    as_ref = make(MINERS, name)(x, y, x, y)
    assert type(as_ref) is type(plain)
    for a, b in zip(as_ref, plain, strict=True):
        assert torch.equal(a, b)
    a1, p = as_ref[0], as_ref[1]
    assert not bool((a1 == p).any())  # never an anchor as its own positive


def test_packed_triplets_miner_accepts_the_batch_as_its_reference():
    x = torch.randn(9, 4)
    y = torch.arange(9)
    as_ref, plain = MINERS.build("packed_triplets")(x, y, x, y), MINERS.build("packed_triplets")(x)
    assert all(torch.equal(a, b) for a, b in zip(as_ref, plain, strict=True))


def test_batch_as_reference_matches_pml():
    x, y = batch(dtype=torch.float32)  # QA's repro batch: class 0 has a single member
    for ours, theirs in ((NTXentLoss(), pml_losses.NTXentLoss()),
                         (SupConLoss(), pml_losses.SupConLoss())):
        got = ours(x, y, ref_embeddings=x, ref_labels=y)  # was 6.0725 / 7.7930
        torch.testing.assert_close(got, theirs(x, y, ref_emb=x, ref_labels=y))
        torch.testing.assert_close(got, ours(x, y))
    a, p, n = BatchHardMiner()(x, y, x, y)  # was (9, 9, 5): item 9 as its own positive
    pa, pp, pn = pml_miners.BatchHardMiner()(x, y, x, y)
    assert torch.equal(a, pa) and torch.equal(p, pp) and torch.equal(n, pn)


def test_distinct_tensors_stay_a_reference_set():
    x, y = batch(dtype=torch.float32)
    r, ry = x.clone(), y.clone()  # equal values, other objects: the diagonal pairs count
    assert resolve_reference(x, y, r, ry) == (r, ry)
    assert resolve_reference(x, y, x, y) == (None, None)
    assert resolve_reference(x, y, x, ry) == (x, ry)
    with_ref = NTXentLoss()(x, y, ref_embeddings=r, ref_labels=ry)
    assert not torch.allclose(with_ref, NTXentLoss()(x, y))
    # pytorch-metric-learning agrees: it drops the diagonal only when ref_labels is labels
    torch.testing.assert_close(with_ref, pml_losses.NTXentLoss()(x, y, ref_emb=r, ref_labels=ry))


def test_self_supervised_view_as_its_own_second_view_keeps_its_positives():
    # the asymmetric form passes view 2 as a reference with the same ids: identical views
    # (the same object) must still pair row i with row i, as with a copy
    x, _ = batch(dtype=torch.float32)
    loss = SelfSupervisedLoss(NTXentLoss(), symmetric=False)
    same = loss(x, ref_embeddings=x)
    torch.testing.assert_close(same, loss(x, ref_embeddings=x.clone()))
    theirs = pml_losses.SelfSupervisedLoss(pml_losses.NTXentLoss(), symmetric=False)
    torch.testing.assert_close(same, theirs(x, x))


# -- 5. SNRDistance with a constant anchor row -------------------------------------------------
# pytorch-metric-learning's SNRDistance on the same input divides by a zero variance: inf
# in the row (NaN on its diagonal) and NaN gradients for every input row.
def test_snr_a_constant_anchor_row_gets_a_large_finite_distance():
    x = torch.randn(4, 6)
    x[1] = 0.0  # a dead ReLU
    theirs = pml_distances.SNRDistance()(x)
    assert not torch.isfinite(theirs[1]).any()
    for row in (torch.zeros(6), torch.full((6,), 0.1), torch.full((6,), -3.0)):
        x[1] = row
        for call in (lambda d: d(x), lambda d: d(x, x.flip(0)), lambda d: d.pairwise(x, x)):
            for d in (SNRDistance(), SNRDistance(normalize_embeddings=False)):
                assert torch.isfinite(call(d)).all()
    loss = SignalToNoiseRatioContrastiveLoss()
    xg = x.clone().requires_grad_(True)
    value = loss(xg, torch.tensor([0, 0, 1, 1]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(xg.grad).all()
    xg = x.clone().requires_grad_(True)
    d = SNRDistance()(xg)
    assert (d[1, [0, 2, 3]] > 1e3).all() and d[1, 1] == 0  # large, finite; a tie stays 0
    d.sum().backward()
    assert torch.isfinite(xg.grad).all()


def test_snr_constant_reference_rows_and_small_spread_stay_finite():
    x = torch.randn(4, 6, dtype=torch.float64)
    y = torch.zeros(3, 6, dtype=torch.float64)
    y[1] = 2.0  # a constant reference row is fine: var(x - c) / var(x) = 1
    d = SNRDistance()(x, y)
    torch.testing.assert_close(d[:, :2], torch.ones(4, 2, dtype=torch.float64))
    # a row with a small but real spread (relative 1e-4) is accepted; finite gradients
    x = torch.randn(4, 6)
    x[1] = 1.0 + 1e-4 * torch.randn(6)
    x.requires_grad_(True)
    d = SNRDistance()(x)
    d.sum().backward()
    assert torch.isfinite(d).all() and torch.isfinite(x.grad).all()
