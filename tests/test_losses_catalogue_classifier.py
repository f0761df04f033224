"""Large-margin softmax, P2SGrad and manifold losses (learnable class vectors / proxies).

Each against a naive fp64 loop and against pytorch-metric-learning's class of the same
name, with the same parameter (name, layout) copied across: values and gradients (inputs
and parameters) to 1e-5; mined tuples as per-sample weights where that library takes
them; parameter state moving between the libraries; edge cases.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dmlkit.functional.tuples import Pairs, Triplets
from dmlkit.losses import LargeMarginSoftmaxLoss, ManifoldLoss, P2SGradLoss
from dmlkit.losses.large_margin_softmax import cos_multiple_angle
from dmlkit.registry import LOSSES, build_from_config, config_of

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")

N, DIM, C = 12, 6, 5


def batch(seed: int, classes: int = C):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, DIM, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (N,), generator=g)
    return x, y


def pair(ours_cls, pml_name, **kwargs):
    """Our loss and the library's, in fp64, with the library's initial parameter copied."""
    torch.manual_seed(0)
    theirs = getattr(pml_losses, pml_name)(**kwargs).double()
    ours = ours_cls(**kwargs).double()
    (p_ours,), (p_theirs,) = list(ours.parameters()), list(theirs.parameters())
    assert p_ours.shape == p_theirs.shape  # same layout: state moves across as is
    with torch.no_grad():
        p_ours.copy_(p_theirs)
    return ours, theirs


def run(loss, x, *args, **kwargs):
    x = x.clone().requires_grad_(True)
    loss.zero_grad(set_to_none=True)
    v = loss(x, *args, **kwargs)
    v.backward()
    (p,) = list(loss.parameters())
    return v.detach(), x.grad, p.grad.clone()


def assert_same(a, b):
    for u, v in zip(a, b, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-8)


# -- naive references ----------------------------------------------------------------------
def naive_large_margin(x, y, w, margin, scale, weights=None):
    total = 0.0
    for i in range(len(y)):
        logits = []
        for c in range(w.shape[1]):
            mag = scale * x[i].norm() * w[:, c].norm()
            cos = F.cosine_similarity(x[i], w[:, c], dim=0)
            if c == y[i]:
                theta = torch.acos(cos.clamp(-1, 1))
                k = math.floor(float(theta.detach()) * margin / math.pi)
                # cos(m theta) through the angle itself
                logits.append(mag * ((-1) ** k * torch.cos(margin * theta) - 2 * k))
            else:
                logits.append(mag * cos)
        loss = -torch.log_softmax(torch.stack(logits), dim=0)[y[i]]
        total = total + loss * (1.0 if weights is None else weights[i])
    return total / len(y)


def naive_p2s(x, y, w):
    total = 0.0
    for i in range(len(y)):
        for c in range(w.shape[1]):
            cos = (x[i] @ w[:, c] / x[i].norm()).clamp(-1, 1)
            total = total + (cos - float(c == y[i])) ** 2
    return total / (len(y) * w.shape[1])


def naive_manifold(x, meta, proxies, lambda_c, alpha, margin):
    z = torch.cat([x, proxies])
    n, k = len(x), len(proxies)
    t = n + k
    s = torch.zeros(t, t, dtype=x.dtype)
    for u in range(t):
        for v in range(t):
            if u != v:
                s[u, v] = torch.exp(2 * torch.clamp(F.cosine_similarity(z[u], z[v], dim=0), min=0))
    deg = s.sum(dim=1)
    s_bar = s / torch.sqrt(deg[:, None] * deg[None, :])
    f = (1 - alpha) * torch.linalg.inv(torch.eye(t, dtype=x.dtype) - alpha * s_bar)

    def hinge(score):
        total = 0.0
        for i in range(n):
            acc = 1.0
            for q in range(k):
                v = score(i, q) - score(i, int(meta[i])) + margin
                if q != meta[i] and v >= 0:
                    acc = acc + torch.exp(v)
            total = total + torch.log(torch.as_tensor(acc, dtype=x.dtype))
        return total / n

    ctx = hinge(lambda i, q: F.cosine_similarity(f[i], f[n + q], dim=0))
    if math.isinf(lambda_c):
        return ctx
    return hinge(lambda i, q: f[i, n + q]) + lambda_c * ctx


def test_chebyshev_is_the_multiple_angle_cosine():
    theta = torch.linspace(0, math.pi, 50, dtype=torch.float64)
    for m in range(1, 7):
        torch.testing.assert_close(cos_multiple_angle(torch.cos(theta), m), torch.cos(m * theta))


# -- large-margin softmax ------------------------------------------------------------------
LM = [{}, {"margin": 2, "scale": 2.0}, {"margin": 1}, {"margin": 3, "scale": 0.5}]


@pytest.mark.parametrize("kwargs", LM)
def test_large_margin_against_loop_and_pml(kwargs):
    x, y = batch(1)
    x = x * 2.5  # norms away from 1: the logits scale with them
    ours, theirs = pair(LargeMarginSoftmaxLoss, "LargeMarginSoftmaxLoss",
                        num_classes=C, embedding_size=DIM, **kwargs)
    got = run(ours, x, y)
    assert_same(got, run(theirs, x, y))
    w = ours.W.detach().clone().requires_grad_(True)
    xl = x.clone().requires_grad_(True)
    loop = naive_large_margin(xl, y, w, kwargs.get("margin", 4), kwargs.get("scale", 1.0))
    loop.backward()
    assert_same(got, (loop.detach(), xl.grad, w.grad))


@pytest.mark.parametrize("kind", ["pairs", "triplets", "empty"])
def test_large_margin_mined_weights_match_pml(kind):
    x, y = batch(2)
    ours, theirs = pair(LargeMarginSoftmaxLoss, "LargeMarginSoftmaxLoss",
                        num_classes=C, embedding_size=DIM)
    if kind == "pairs":
        t = pml_miners.PairMarginMiner(pos_margin=0.2, neg_margin=0.8)(x, y)
    elif kind == "triplets":
        t = pml_miners.TripletMarginMiner(margin=0.3)(x, y)
    else:  # an empty mined set weighs every sample 1, as in the library
        t = (torch.zeros(0, dtype=torch.long),) * 3
    typed = Pairs(*t) if len(t) == 4 else Triplets(*t)
    got = run(ours, x, y, indices=typed)
    assert_same(got, run(theirs, x, y, t))
    if kind == "empty":
        assert_same(got, run(ours, x, y))


def test_large_margin_errors_and_logits():
    loss = LargeMarginSoftmaxLoss(num_classes=C, embedding_size=DIM)
    x, y = batch(3)
    x = x.float()
    with pytest.raises(ValueError, match="margin"):
        LargeMarginSoftmaxLoss(num_classes=C, embedding_size=DIM, margin=0)
    with pytest.raises(ValueError, match="ref_embeddings"):
        # a distinct reference set (the batch itself, same objects, is no reference)
        loss(x, y, ref_embeddings=x.clone(), ref_labels=y.clone())
    with pytest.raises(ValueError, match="label 7"):
        loss(x, torch.full((N,), 7))
    theirs = pml_losses.LargeMarginSoftmaxLoss(num_classes=C, embedding_size=DIM)
    with torch.no_grad():
        theirs.W.copy_(loss.W)
    torch.testing.assert_close(loss.logits(x), theirs.get_logits(x))


# -- P2SGrad --------------------------------------------------------------------------------
def test_p2s_grad_against_loop_and_pml_with_unnormalized_state():
    x, y = batch(4)
    ours, theirs = pair(P2SGradLoss, "P2SGradLoss", descriptors_dim=DIM, num_classes=C)
    with torch.no_grad():  # state after an optimizer step: columns no longer unit
        scale = torch.linspace(0.5, 3.0, C, dtype=torch.float64)
        ours.weight.mul_(scale)
        theirs.weight.mul_(scale)
    got = run(ours, x, y)
    assert_same(got, run(theirs, x, y))
    torch.testing.assert_close(ours.weight, theirs.weight)  # renormalized alike, in place
    w = ours.weight.detach().clone().requires_grad_(True)
    xl = x.clone().requires_grad_(True)
    loop = naive_p2s(xl, y, w)
    loop.backward()
    assert_same(got, (loop.detach(), xl.grad, w.grad))


def test_p2s_grad_edge_cases():
    ours, theirs = pair(P2SGradLoss, "P2SGradLoss", descriptors_dim=DIM, num_classes=C)
    x, _ = batch(5)
    for y in (torch.zeros(N, dtype=torch.long), torch.arange(N) % C):
        assert_same(run(ours, x, y), run(theirs, x, y))
    assert_same(run(ours, x[:1], torch.tensor([2])), run(theirs, x[:1], torch.tensor([2])))
    with torch.no_grad():
        ours.weight[:, 1] = 0.0
    with pytest.raises(ValueError, match="class vector 1"):
        ours(x, torch.zeros(N, dtype=torch.long))
    with pytest.raises(ValueError, match="tuple indices"):
        P2SGradLoss(DIM, C)(x.float(), torch.zeros(N, dtype=torch.long),
                            indices=Triplets(*(torch.tensor([0]),) * 3))


# -- manifold -------------------------------------------------------------------------------
MAN = [
    {},
    {"K": 4, "lambdaC": 0.3, "alpha": 0.5, "margin": 0.01},
    {"K": 6, "lambdaC": 0.0},
    {"K": 3, "lambdaC": 2.0, "alpha": 0.9, "margin": 0.0},
]


@pytest.mark.parametrize("kwargs", MAN)
def test_manifold_against_pml(kwargs):
    x, _ = batch(6)
    k = kwargs.get("K", 50)
    meta = torch.randint(0, k, (N,), generator=torch.Generator().manual_seed(1))
    ours, theirs = pair(ManifoldLoss, "ManifoldLoss", l=DIM, **kwargs)
    got = run(ours, x, meta)
    # the library takes the meta-classes in its indices slot (float32 inverse there)
    assert_same(got, run(theirs, x, None, meta))
    assert_same(got, run(ours, x, indices=meta))


@pytest.mark.parametrize("kwargs", [MAN[1], {"K": 3, "lambdaC": math.inf}])
def test_manifold_against_loop(kwargs):
    x, _ = batch(7)
    meta = torch.arange(N) % kwargs["K"]
    loss = ManifoldLoss(l=DIM, **kwargs).double()
    got = run(loss, x, meta)
    p = loss.proxies.detach().clone().requires_grad_(True)
    xl = x.clone().requires_grad_(True)
    loop = naive_manifold(xl, meta, p, kwargs["lambdaC"], kwargs.get("alpha", 0.8),
                          kwargs.get("margin", 5e-4))
    loop.backward()
    assert_same(got, (loop.detach(), xl.grad, p.grad))


def test_manifold_meta_classes_and_errors():
    x, _ = batch(8)
    loss = ManifoldLoss(l=DIM, K=4).double()
    g = torch.Generator().manual_seed(3)
    meta = ManifoldLoss.random_meta_classes(N, 4, generator=g)
    assert sorted(set(meta.tolist())) == [0, 1, 2, 3] and meta.shape == (N,)
    # one meta-class for every sample (ties in the target): a finite loss and gradient
    v, gx, gp = run(loss, x, torch.zeros(N, dtype=torch.long))
    assert torch.isfinite(v) and torch.isfinite(gx).all() and torch.isfinite(gp).all()
    with pytest.raises(ValueError, match="not both"):
        loss(x, meta, indices=meta)
    with pytest.raises(ValueError, match="label 4"):
        loss(x, torch.full((N,), 4))
    with pytest.raises(ValueError, match="needs labels"):
        loss(x)
    with pytest.raises(ValueError, match="n >= K"):
        ManifoldLoss.random_meta_classes(3, 4)
    with pytest.raises(ValueError, match="alpha"):
        ManifoldLoss(l=DIM, alpha=1.0)
    with pytest.raises(ValueError, match="lambdaC"):
        ManifoldLoss(l=DIM, lambdaC=-1.0)


@pytest.mark.parametrize("name,kwargs", [
    ("large_margin_softmax", {"num_classes": C, "embedding_size": DIM, "margin": 3}),
    ("p2s_grad", {"descriptors_dim": DIM, "num_classes": C}),
    ("manifold", {"l": DIM, "K": C, "lambdaC": 0.5}),
])
def test_config_round_trip_keeps_the_library_names(name, kwargs):
    loss = LOSSES.build(name, **kwargs)
    config = config_of(loss)
    assert all(config[k] == v for k, v in kwargs.items())
    rebuilt = build_from_config(LOSSES, config)
    rebuilt.load_state_dict(loss.state_dict())
    x, y = batch(9)
    x = x.float()
    torch.testing.assert_close(loss(x, y), rebuilt(x, y))


@pytest.mark.parametrize("name", ["large_margin_softmax", "p2s_grad"])
def test_chunked_equals_one_chunk(name):
    kwargs = {"num_classes": C}
    kwargs.update({"embedding_size": DIM} if name == "large_margin_softmax" else
                  {"descriptors_dim": DIM})
    loss = LOSSES.build(name, **kwargs).double()
    x, y = batch(10)
    x = torch.cat([x] * 5)
    y = torch.cat([y] * 5)
    whole = run(loss, x, y)
    loss.chunk_budget = 3 * C  # a few rows per chunk
    assert_same(whole, run(loss, x, y))


@pytest.mark.parametrize("ours,pml_name,args", [
    (LargeMarginSoftmaxLoss, "LargeMarginSoftmaxLoss", (C, DIM)),
    (P2SGradLoss, "P2SGradLoss", (DIM, C)),
    (ManifoldLoss, "ManifoldLoss", (DIM, C)),
])
def test_state_dicts_load_both_ways(ours, pml_name, args):
    a, b = ours(*args), getattr(pml_losses, pml_name)(*args)
    assert list(a.state_dict()) == list(b.state_dict())
    a.load_state_dict(b.state_dict())  # strict: same names, same shapes
    (pa,), (pb,) = list(a.parameters()), list(b.parameters())
    assert torch.equal(pa, pb)
    with torch.no_grad():
        pa.mul_(2.0)
    b.load_state_dict(a.state_dict())
    assert torch.equal(pa, pb)
