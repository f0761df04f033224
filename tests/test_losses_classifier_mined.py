"""Classifier and proxy losses on a miner's tuples: per-sample weights, as
pytorch-metric-learning takes them.

Sample ``i`` weighs (how often ``i`` occurs in the tuples' index tensors) / (the largest
such count), 0 when it occurs in none; ProxyNCA counts only the anchors (the proxies are
its reference set), Proxy-Anchor adds ``w - 1`` to its exponents. Checked against naive
fp64 loops and against pytorch-metric-learning with its own miners' tuples (values and
gradients of the inputs and of the class vectors), on the one-chunk and chunked paths.
"""

from __future__ import annotations

import pytest
import torch

from dmlkit.functional.tuples import Pairs, Triplets
from dmlkit.losses import CenterLoss, CrossBatchMemory, P2SGradLoss
from dmlkit.registry import LOSSES

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")

N, D, C = 30, 16, 5

#: registry name -> (pytorch-metric-learning class, name of the class-vector parameter)
CASES = {
    "arcface": ("ArcFaceLoss", "W"),
    "cosface": ("CosFaceLoss", "W"),
    "sphereface": ("SphereFaceLoss", "W"),
    "normalized_softmax": ("NormalizedSoftmaxLoss", "W"),
    "subcenter_arcface": ("SubCenterArcFaceLoss", "W"),
    "proxy_nca": ("ProxyNCALoss", "proxies"),
    "proxy_anchor": ("ProxyAnchorLoss", "proxies"),
    "soft_triple": ("SoftTripleLoss", "fc"),
}
MINERS = {  # name -> (x, y) -> the library's tuples
    "batch_hard": lambda x, y: pml_miners.BatchHardMiner()(x, y),
    "multi_similarity": lambda x, y: pml_miners.MultiSimilarityMiner()(x, y),
    # the first pairs only: most samples are in no tuple (weight 0)
    "multi_similarity_part": lambda x, y: tuple(
        t[:6] for t in pml_miners.MultiSimilarityMiner()(x, y)),
}


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    return x, y


def typed(t):
    return Pairs(*t) if len(t) == 4 else Triplets(*t)


def pair(name):
    """Our loss and the library's, fp64, the library's initial class vectors copied."""
    pml_name, attr = CASES[name]
    torch.manual_seed(0)
    theirs = getattr(pml_losses, pml_name)(num_classes=C, embedding_size=D).double()
    ours = LOSSES.build(name, num_classes=C, embedding_size=D).double()
    with torch.no_grad():
        getattr(ours, attr).copy_(getattr(theirs, attr))
    return ours, theirs, attr


def value_and_grads(loss, attr, x, *args, **kwargs):
    x = x.clone().requires_grad_(True)
    loss.zero_grad(set_to_none=True)
    v = loss(x, *args, **kwargs)
    v.backward()
    return v.detach(), x.grad, getattr(loss, attr).grad.clone()


def assert_same(a, b):
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-10)


# -- naive references -----------------------------------------------------------------------
def naive_weights(tuples, n, anchors_only=False):
    """Counts by a loop over the tuple members, over the largest count."""
    if anchors_only:
        members = [tuples[0], tuples[2]] if len(tuples) == 4 else [tuples[0]]
    else:
        members = list(tuples)
    counts = [0.0] * n
    for member in members:
        for i in member.tolist():
            counts[i] += 1.0
    top = max(counts)
    return torch.tensor([c / top for c in counts], dtype=torch.float64)


def naive_weighted_mean(loss, x, y, w):
    """``1/n sum_i w_i L_i`` with ``L_i`` the loss of sample ``i`` alone (each of these
    losses is the batch mean of per-sample terms)."""
    total = 0.0
    for i in range(len(y)):
        total = total + w[i] * loss(x[i : i + 1], y[i : i + 1])
    return total / len(y)


def naive_proxy_anchor(x, y, proxies, w, margin=0.1, alpha=32.0):
    """The paper's two sums, each exponent shifted by the sample's ``w - 1``."""
    xs = [v / v.norm() for v in x]
    ps = [p / p.norm() for p in proxies]
    with_pos = sorted(set(y.tolist()))
    pos_total, neg_total = 0.0, 0.0
    for c, p in enumerate(ps):
        pos = [torch.exp(-alpha * (xi @ p - margin) + w[i] - 1)
               for i, xi in enumerate(xs) if int(y[i]) == c]
        neg = [torch.exp(alpha * (xi @ p + margin) + w[i] - 1)
               for i, xi in enumerate(xs) if int(y[i]) != c]
        if pos:
            pos_total = pos_total + torch.log(1 + sum(pos))
        if neg:
            neg_total = neg_total + torch.log(1 + sum(neg))
    return pos_total / len(with_pos) + neg_total / len(ps)


# -- tests ----------------------------------------------------------------------------------
@pytest.mark.parametrize("miner", sorted(MINERS))
@pytest.mark.parametrize("name", sorted(CASES))
def test_mined_tuples_match_pytorch_metric_learning(name, miner):
    x, y = batch()
    tuples = MINERS[miner](x, y)
    assert tuples[0].numel() > 0
    ours, theirs, attr = pair(name)
    got = value_and_grads(ours, attr, x, y, indices=typed(tuples))
    want = value_and_grads(theirs, attr, x, y, indices_tuple=tuples)
    assert_same(got, want)
    # the tuples change the loss: it is not the unweighted one
    assert not torch.allclose(got[0], ours(x, y).detach()) or name == "proxy_nca"


@pytest.mark.parametrize("name", sorted(set(CASES) - {"proxy_anchor"}))
def test_mined_tuples_weigh_the_per_sample_losses_as_a_loop_counts_them(name):
    x, y = batch(1)
    tuples = MINERS["multi_similarity_part"](x, y)
    ours, _, _ = pair(name)
    w = naive_weights(tuples, N, anchors_only=name == "proxy_nca")
    assert (w == 0).any() and (w == 1).any()  # some samples are in no tuple
    with torch.no_grad():
        got = ours(x, y, indices=typed(tuples))
        want = naive_weighted_mean(ours, x, y, w)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_proxy_anchor_mined_tuples_shift_the_exponents_as_a_loop_does():
    x, y = batch(2)
    tuples = pml_miners.BatchHardMiner()(x, y)
    ours, _, _ = pair("proxy_anchor")
    w = naive_weights(tuples, N)
    assert (w < 1).any()
    xl = x.clone().requires_grad_(True)
    want = naive_proxy_anchor(xl, y, ours.proxies.detach(), w)
    (g_want,) = torch.autograd.grad(want, xl)
    got, g_got, _ = value_and_grads(ours, "proxies", x, y, indices=typed(tuples))
    torch.testing.assert_close(got, want.detach(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g_got, g_want, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_chunked_path_weighs_the_same(name):
    x, y = batch(3)
    tuples = typed(MINERS["multi_similarity_part"](x, y))
    whole, _, attr = pair(name)
    chunked, _, _ = pair(name)
    chunked.chunk_budget = 80  # a few rows (or proxies) per chunk
    assert_same(value_and_grads(whole, attr, x, y, indices=tuples),
                value_and_grads(chunked, attr, x, y, indices=tuples))


@pytest.mark.parametrize("name", sorted(CASES))
def test_empty_tuples_weigh_every_sample_one(name):
    x, y = batch(4)
    ours, _, attr = pair(name)
    empty = torch.zeros(0, dtype=torch.long)
    assert_same(value_and_grads(ours, attr, x, y, indices=Triplets(empty, empty, empty)),
                value_and_grads(ours, attr, x, y))


def test_losses_without_a_weighted_form_still_refuse_tuples():
    x, y = batch(5)
    idx = torch.arange(3)
    for loss in (CenterLoss(C, D), P2SGradLoss(D, C)):
        with pytest.raises(ValueError, match="tuple indices"):
            loss(x.float(), y, indices=Triplets(idx, idx, idx))
    # a memory bank needs a loss with a reference-set form
    with pytest.raises(ValueError, match="reference embeddings"):
        CrossBatchMemory(LOSSES.build("arcface", num_classes=C, embedding_size=D), D)
