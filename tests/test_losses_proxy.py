"""Classifier / proxy losses: naive fp64 references, pytorch-metric-learning equality, chunking."""

from __future__ import annotations

import math

import pytest
import torch

from dmlkit.functional.tuples import Triplets
from dmlkit.losses import (
    ArcFaceLoss,
    CenterLoss,
    CosFaceLoss,
    NormalizedSoftmaxLoss,
    ProxyAnchorLoss,
    ProxyNCALoss,
    SoftTripleLoss,
    SphereFaceLoss,
    SubCenterArcFaceLoss,
)

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")

C, D, N = 5, 6, 12


@pytest.fixture
def one_thread():
    """Tiny-tensor optimization loops: one thread avoids parallel-region overhead."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def data(seed: int = 0, n: int = N, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=dtype) * 2.0
    y = torch.randint(0, C, (n,), generator=g)
    y[0] = 0  # at least one class absent is likely, class 0 always present
    return x, y


# -- naive references (loops over samples and classes, straight from the papers) ---------------


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def cos_of(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (unit(a) * unit(b)).sum()


def mean_ce(rows: list[list[torch.Tensor]], y: torch.Tensor) -> torch.Tensor:
    """Mean of -log softmax(row)[y_i], computed from scalars."""
    total = 0.0
    for i, row in enumerate(rows):
        denom = sum(torch.exp(v) for v in row)
        total = total - torch.log(torch.exp(row[int(y[i])]) / denom)
    return total / len(rows)


def naive_margin_softmax(x, y, w, target_fn, scale_fn, per_class=1):
    rows = []
    for i in range(len(x)):
        row = []
        for c in range(C):
            cos = max(cos_of(x[i], w[c * per_class + k]) for k in range(per_class))
            if c == int(y[i]):
                cos = target_fn(cos)
            row.append(scale_fn(cos, x[i]))
        rows.append(row)
    return mean_ce(rows, y)


def arc_target(m_deg):
    m = math.radians(m_deg)

    def f(cos):
        theta = torch.acos(cos)
        return torch.cos(theta + m) if theta + m <= math.pi else cos - m * math.sin(m)

    return f


def sphere_target(m):
    def f(cos):
        theta = torch.acos(cos)
        k = math.floor(float(theta.detach()) * m / math.pi)
        return (-1) ** k * torch.cos(m * theta) - 2 * k

    return f


def naive_proxy_nca(x, y, proxies, scale):
    rows = [
        [-scale * ((unit(x[i]) - unit(proxies[c])) ** 2).sum() for c in range(C)]
        for i in range(len(x))
    ]
    return mean_ce(rows, y)


def naive_proxy_anchor(x, y, proxies, margin, alpha):
    pos_total, neg_total, with_pos = 0.0, 0.0, 0
    for c in range(C):
        cos = [cos_of(x[i], proxies[c]) for i in range(len(x))]
        pos = [torch.exp(-alpha * (cos[i] - margin)) for i in range(len(x)) if y[i] == c]
        neg = [torch.exp(alpha * (cos[i] + margin)) for i in range(len(x)) if y[i] != c]
        if pos:
            with_pos += 1
            pos_total = pos_total + torch.log(1 + sum(pos))
        neg_total = neg_total + torch.log(1 + sum(neg)) if neg else neg_total
    return pos_total / with_pos + neg_total / C


def naive_soft_triple(x, y, centers, K, la, gamma, margin, tau):
    rows = []
    for i in range(len(x)):
        row = []
        for c in range(C):
            sims = [cos_of(x[i], centers[c * K + k]) for k in range(K)]
            z = sum(torch.exp(s / gamma) for s in sims)
            s_c = sum(torch.exp(s / gamma) / z * s for s in sims)
            row.append(la * (s_c - (margin if c == int(y[i]) else 0.0)))
        rows.append(row)
    loss = mean_ce(rows, y)
    reg = 0.0
    for c in range(C):
        for k in range(K):
            for k2 in range(k + 1, K):
                dot = cos_of(centers[c * K + k], centers[c * K + k2])
                reg = reg + torch.sqrt(2.0 + 1e-5 - 2.0 * dot)
    return loss + tau * reg / (C * K * (K - 1))


def naive_center(x, y, centers):
    return sum(0.5 * ((x[i] - centers[int(y[i])]) ** 2).sum() for i in range(len(x))) / len(x)


# -- cases: (ours, naive reference, pml factory, parameter name, pml weight getter) --------------

ARC = dict(margin=28.6, scale=8.0)
CASES = {
    "normalized_softmax": (
        lambda: NormalizedSoftmaxLoss(C, D, temperature=0.1),
        lambda x, y, m: naive_margin_softmax(x, y, m.weight, lambda c: c, lambda c, xi: c / 0.1),
        lambda: pml_losses.NormalizedSoftmaxLoss(C, D, temperature=0.1),
        "W", "W",
    ),
    "cosface": (
        lambda: CosFaceLoss(C, D, margin=0.35, scale=8.0),
        lambda x, y, m: naive_margin_softmax(
            x, y, m.weight, lambda c: c - 0.35, lambda c, xi: 8.0 * c
        ),
        lambda: pml_losses.CosFaceLoss(num_classes=C, embedding_size=D, margin=0.35, scale=8.0),
        "W", "W",
    ),
    "arcface": (
        lambda: ArcFaceLoss(C, D, **ARC),
        lambda x, y, m: naive_margin_softmax(
            x, y, m.weight, arc_target(28.6), lambda c, xi: 8.0 * c
        ),
        lambda: pml_losses.ArcFaceLoss(C, D, **ARC),
        "W", "W",
    ),
    "arcface_big_margin": (  # exercises the theta + m > pi branch
        lambda: ArcFaceLoss(C, D, margin=100.0, scale=4.0),
        lambda x, y, m: naive_margin_softmax(
            x, y, m.weight, arc_target(100.0), lambda c, xi: 4.0 * c
        ),
        lambda: pml_losses.ArcFaceLoss(C, D, margin=100.0, scale=4.0),
        "W", "W",
    ),
    "subcenter_arcface": (
        lambda: SubCenterArcFaceLoss(C, D, sub_centers=3, **ARC),
        lambda x, y, m: naive_margin_softmax(
            x, y, m.weight, arc_target(28.6), lambda c, xi: 8.0 * c, per_class=3
        ),
        lambda: pml_losses.SubCenterArcFaceLoss(
            num_classes=C, embedding_size=D, sub_centers=3, **ARC
        ),
        "W", "W",
    ),
    "sphereface": (
        lambda: SphereFaceLoss(C, D, margin=4, scale=0.5),
        lambda x, y, m: naive_margin_softmax(
            x, y, m.weight, sphere_target(4), lambda c, xi: 0.5 * xi.norm() * c
        ),
        lambda: pml_losses.SphereFaceLoss(C, D, margin=4, scale=0.5),
        "W", "W",
    ),
    "proxy_nca": (
        lambda: ProxyNCALoss(C, D, softmax_scale=3.0),
        lambda x, y, m: naive_proxy_nca(x, y, m.proxies, 3.0),
        lambda: pml_losses.ProxyNCALoss(C, D, softmax_scale=3.0),
        "proxies", "proxies",
    ),
    "proxy_anchor": (
        lambda: ProxyAnchorLoss(C, D, margin=0.1, alpha=32.0),
        lambda x, y, m: naive_proxy_anchor(x, y, m.proxies, 0.1, 32.0),
        lambda: pml_losses.ProxyAnchorLoss(C, D, margin=0.1, alpha=32),
        "proxies", "proxies",
    ),
    "soft_triple": (
        lambda: SoftTripleLoss(C, D, centers_per_class=3, la=20.0, gamma=0.1, margin=0.01),
        lambda x, y, m: naive_soft_triple(x, y, m.centers, 3, 20.0, 0.1, 0.01, 0.0),
        lambda: pml_losses.SoftTripleLoss(
            C, D, centers_per_class=3, la=20, gamma=0.1, margin=0.01
        ),
        "fc", "fc",
    ),
}


def build(name: str):
    torch.manual_seed(0)
    return CASES[name][0]().double()


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_naive_reference(name):
    loss_fn = build(name)
    x, y = data(1)
    expected = CASES[name][1](x, y, loss_fn)
    assert torch.allclose(loss_fn(x, y), expected, rtol=1e-9, atol=1e-9)


def _copy_to_pml(name, ours):
    pml = CASES[name][2]().double()
    ours_p = getattr(ours, CASES[name][3])
    pml_p = getattr(pml, CASES[name][4])
    # PML's margin-loss weights and SoftTriple centers are (embedding_size, rows)
    transpose = pml_p.shape != ours_p.shape
    pml_p.data = (ours_p.detach().T if transpose else ours_p.detach()).clone()
    return pml, ours_p, pml_p, transpose


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_pytorch_metric_learning(name, dtype):
    ours = build(name).to(dtype)
    pml, ours_p, pml_p, transpose = _copy_to_pml(name, ours)
    pml = pml.to(dtype)
    x, y = data(2, dtype=dtype)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    a, b = ours(x1, y), pml(x2, y)
    a.backward()
    b.backward()
    tol = 1e-5 if dtype == torch.float64 else 1e-4
    assert torch.allclose(a, b, rtol=tol, atol=tol), (a.item(), b.item())
    assert torch.allclose(x1.grad, x2.grad, rtol=tol, atol=tol)
    pml_grad = pml_p.grad.T if transpose else pml_p.grad
    assert ours_p.grad is not None and ours_p.grad.abs().sum() > 0, "no gradient to the proxies"
    assert torch.allclose(ours_p.grad, pml_grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", sorted(CASES))
def test_chunked_equals_whole_batch(name):
    whole = build(name)
    chunked = build(name)
    chunked.chunk_budget = 80  # a few rows (or proxies) per chunk, with recomputation
    x, y = data(3, n=20)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    la, lb = whole(xa, y), chunked(xb, y)
    la.backward()
    lb.backward()
    assert torch.allclose(la, lb, rtol=1e-10, atol=1e-12)
    assert torch.allclose(xa.grad, xb.grad, rtol=1e-8, atol=1e-12)
    pname = CASES[name][3]
    assert torch.allclose(getattr(whole, pname).grad, getattr(chunked, pname).grad, atol=1e-10)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rejects_bad_labels_and_unsupported_inputs(name):
    loss_fn = build(name)
    x, y = data(0)
    with pytest.raises(ValueError, match="outside"):
        loss_fn(x, torch.full_like(y, C))
    with pytest.raises(ValueError, match="outside"):
        loss_fn(x, y - 10)
    with pytest.raises(ValueError, match="ref_embeddings"):
        # a distinct reference set (the batch itself, same objects, is no reference)
        loss_fn(x, y, ref_embeddings=x.clone(), ref_labels=y.clone())
    idx = torch.arange(3)  # mined tuples are taken (as sample weights)
    assert torch.isfinite(loss_fn(x, y, indices=Triplets(idx, idx, idx)))
    with pytest.raises(ValueError, match="shape"):
        loss_fn(x, torch.stack([y, y], dim=1))
    with pytest.raises(ValueError, match="labels"):
        loss_fn(x)
    with pytest.raises(ValueError, match="embedding_size"):
        loss_fn(torch.randn(N, D + 1, dtype=torch.float64), y)


def test_soft_triple_regularizer_matches_paper():
    torch.manual_seed(0)
    loss_fn = SoftTripleLoss(C, D, centers_per_class=3, tau=0.2).double()
    x, y = data(4)
    expected = naive_soft_triple(x, y, loss_fn.centers, 3, 20.0, 0.1, 0.01, 0.2)
    assert torch.allclose(loss_fn(x, y), expected, rtol=1e-9)
    single = SoftTripleLoss(C, D, centers_per_class=1, tau=0.2).double()
    assert single.regularizer().item() == 0.0


def test_center_loss_reference_and_gradient():
    torch.manual_seed(0)
    loss_fn = CenterLoss(C, D).double()
    x, y = data(5)
    x.requires_grad_(True)
    out = loss_fn(x, y)
    assert torch.allclose(out, naive_center(x, y, loss_fn.centers), rtol=1e-12)
    out.backward()
    # d/dc_j = sum_{i: y_i = j} (c_j - x_i) / B
    for j in range(C):
        members = y == j
        expected = (loss_fn.centers[j] - x[members]).sum(0) / N if members.any() else 0 * x[0]
        assert torch.allclose(loss_fn.centers.grad[j], expected.detach())
    normed = CenterLoss(C, D, normalize_embeddings=True).double()
    xn = x.detach() / x.detach().norm(dim=1, keepdim=True)
    cn = normed.centers / normed.centers.norm(dim=1, keepdim=True)
    assert torch.allclose(normed(x.detach() * 3.0, y), naive_center(xn, y, cn))


def test_center_loss_combines_with_softmax_and_compacts_classes(one_thread):
    """A weighted sum trains: the centers move toward class means."""
    torch.manual_seed(0)
    softmax = NormalizedSoftmaxLoss(C, D)
    center = CenterLoss(C, D)
    x, y = data(6, dtype=torch.float32)
    y = torch.arange(N) % C
    params = [x.requires_grad_(True), *softmax.parameters(), *center.parameters()]
    first = center(x, y).item()
    for _ in range(30):  # plain gradient descent on embeddings, weights and centers
        grads = torch.autograd.grad(softmax(x, y) + 0.5 * center(x, y), params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= 0.5 * g
    assert center(x, y).item() < 0.5 * first


def test_arcface_gradient_finite_at_unit_cosine():
    torch.manual_seed(0)
    loss_fn = ArcFaceLoss(C, D).double()
    x = loss_fn.weight.detach()[[0, 1, 2]].clone().requires_grad_(True)  # cos = 1 to own class
    y = torch.tensor([0, 1, 2])
    out = loss_fn(x, y)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(x.grad).all()
    assert torch.isfinite(loss_fn.W.grad).all()
    expected = naive_margin_softmax(x.detach(), y, loss_fn.weight.detach(), arc_target(28.6),
                                    lambda c, xi: 64.0 * c)
    assert torch.allclose(out, expected, rtol=1e-6)
    pml = pml_losses.ArcFaceLoss(num_classes=C, embedding_size=D).double()
    pml.W.data = loss_fn.weight.detach().T.clone()
    assert torch.allclose(out, pml(x.detach(), y), rtol=1e-6)  # same value (PML's grad is NaN)
    x2 = (-loss_fn.weight.detach()[[0]]).clone().requires_grad_(True)  # cos = -1
    loss_fn(x2, torch.tensor([0])).backward()
    assert torch.isfinite(x2.grad).all()
    x3 = loss_fn.weight.detach()[[0]].float().clone().requires_grad_(True)  # fp32 too
    loss_fn.float()(x3, torch.tensor([0])).backward()
    assert torch.isfinite(x3.grad).all()


def test_half_inputs_are_computed_in_fp32():
    torch.manual_seed(0)
    loss_fn = ArcFaceLoss(C, D)
    x, y = data(7, dtype=torch.float32)
    full = loss_fn(x, y)
    half = loss_fn(x.half(), y)
    assert half.dtype == torch.float32
    assert torch.allclose(full, half, rtol=1e-2)


def test_subcenter_outliers():
    torch.manual_seed(0)
    loss_fn = SubCenterArcFaceLoss(num_classes=2, embedding_size=D, sub_centers=2).double()
    w = loss_fn.weight.detach()
    # class 0: three samples on sub-center 0, one on the opposite side; class 1 on its sub-center 1
    x = torch.stack([w[0], w[0] * 2, w[0] + 0.01, -w[0], w[3]])
    y = torch.tensor([0, 0, 0, 0, 1])
    assert loss_fn.outliers(x, y, threshold=75.0).tolist() == [3]


def test_logits_for_prediction():
    torch.manual_seed(0)
    loss_fn = NormalizedSoftmaxLoss(C, D, temperature=0.5).double()
    x, y = data(8)
    logits = loss_fn.logits(x)
    w = loss_fn.weight.detach()
    expected = torch.tensor([[float(cos_of(xi, wc)) / 0.5 for wc in w] for xi in x])
    assert torch.allclose(logits, expected.double())
    nca = ProxyNCALoss(C, D, softmax_scale=2.0).double()
    proxies = nca.proxies.detach()
    expected = [[-2.0 * float(((unit(xi) - unit(p)) ** 2).sum()) for p in proxies] for xi in x]
    assert torch.allclose(nca.logits(x), torch.tensor(expected, dtype=torch.float64))
    assert SoftTripleLoss(C, D).logits(x.float()).shape == (N, C)


def test_large_batch_is_chunked():
    """A batch much bigger than the chunk budget runs with bounded per-chunk intermediates."""
    torch.manual_seed(0)
    loss_fn = ProxyAnchorLoss(num_classes=300, embedding_size=16)
    loss_fn.chunk_budget = 6 * 512 * 64  # 64 proxies per chunk
    x = torch.randn(512, 16, requires_grad=True)
    y = torch.randint(0, 300, (512,))
    out = loss_fn(x, y)
    out.backward()
    ref = ProxyAnchorLoss(num_classes=300, embedding_size=16)
    ref.load_state_dict(loss_fn.state_dict())
    assert torch.allclose(out, ref(x, y), rtol=1e-5)


def test_fused_chunks_weights_only_no_grad_and_no_double_backward():
    whole, chunked = build("arcface"), build("arcface")
    chunked.chunk_budget = 80
    x, y = data(9, n=20)
    whole(x, y).backward()  # embeddings without grad: only the weights get one
    out = chunked(x, y)
    out.backward()
    assert torch.allclose(whole.W.grad, chunked.W.grad, atol=1e-10)
    with torch.no_grad():
        assert torch.allclose(chunked(x, y), out.detach())
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(chunked(xg, y), xg, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), xg)
