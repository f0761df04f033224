"""Pair and tuple losses against pytorch-metric-learning, and chunked against unchunked.

Same parameter names and defaults, same default distance and reduction: values and
gradients agree to 1e-5 with labels only, with a miner's pairs, with a miner's
triplets and with ``ref_embeddings`` / ``ref_labels``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dmlkit.functional import chunking
from dmlkit.functional.tuples import Pairs, Quadruplets, Triplets
from dmlkit.losses import (
    AngularLoss,
    CircleLoss,
    FastAPLoss,
    GeneralizedLiftedStructureLoss,
    LiftedStructureLoss,
    MarginLoss,
    MultiSimilarityLoss,
    NPairsLoss,
    NTXentLoss,
    QuadrupletLoss,
    SupConLoss,
)

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")

N, DIM = 16, 6

#: (ours, pml name, constructor kwargs, modes pml supports)
FULL = ("labels", "pairs", "triplets", "ref")
CASES = [
    (NTXentLoss, "NTXentLoss", {}, FULL),
    (SupConLoss, "SupConLoss", {}, FULL),
    (MultiSimilarityLoss, "MultiSimilarityLoss", {"alpha": 3.0, "beta": 40.0, "base": 0.4}, FULL),
    (CircleLoss, "CircleLoss", {"m": 0.25, "gamma": 64.0}, FULL),
    (LiftedStructureLoss, "LiftedStructureLoss", {"neg_margin": 0.8, "pos_margin": 0.1}, FULL),
    (GeneralizedLiftedStructureLoss, "GeneralizedLiftedStructureLoss", {}, FULL),
    (AngularLoss, "AngularLoss", {"alpha": 30.0}, FULL),
    (MarginLoss, "MarginLoss", {}, FULL),
    (MarginLoss, "MarginLoss", {"learn_beta": True, "nu": 0.1, "num_classes": 4}, FULL),
    (NPairsLoss, "NPairsLoss", {}, ("labels", "pairs", "triplets")),
    (FastAPLoss, "FastAPLoss", {"num_bins": 5}, ("labels", "pairs", "triplets")),
]


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, DIM, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (N,), generator=g)
    r = torch.randn(N + 6, DIM, generator=g, dtype=torch.float64)
    ry = torch.randint(0, 4, (N + 6,), generator=g)
    return x, y, r, ry


def run(loss, x, y, **kwargs):
    x = x.clone().requires_grad_(True)
    # pytorch-metric-learning's AngularLoss leaves the negatives unnormalized (ours
    # normalizes them, as the paper); on points normalized by a differentiable
    # normalization both give the same values and the same gradients
    emb = F.normalize(x, dim=1) if type(loss).__name__ == "AngularLoss" else x
    value = loss(emb, y, **kwargs)
    value.backward()
    params = [p.grad.clone() for p in loss.parameters() if p.grad is not None]
    return value.detach(), x.grad, params


@pytest.mark.parametrize("mode", FULL)
@pytest.mark.parametrize(
    "ours,pml_name,kwargs,modes", CASES, ids=[f"{c[1]}-{i}" for i, c in enumerate(CASES)]
)
def test_matches_pytorch_metric_learning(ours, pml_name, kwargs, modes, mode):
    if mode not in modes:
        pytest.skip(f"pytorch-metric-learning's {pml_name} has no {mode} mode")
    for seed in range(1):
        x, y, r, ry = batch(seed)
        theirs_fn = getattr(pml_losses, pml_name)(**kwargs).double()
        ours_fn = ours(**kwargs).double()
        if mode == "labels":
            a, b = run(ours_fn, x, y), run(theirs_fn, x, y)
        elif mode == "ref":
            r_in = F.normalize(r, dim=1) if ours is AngularLoss else r
            a = run(ours_fn, x, y, ref_embeddings=r_in, ref_labels=ry)
            b = run(theirs_fn, x, y, ref_emb=r_in, ref_labels=ry)
        else:
            miner = (
                pml_miners.MultiSimilarityMiner(epsilon=0.2)
                if mode == "pairs"
                else pml_miners.TripletMarginMiner(margin=0.1)
            )
            mined = miner(x, y)
            typed = Pairs(*mined) if mode == "pairs" else Triplets(*mined)
            assert mined[0].numel() > 0
            a, b = run(ours_fn, x, y, indices=typed), run(theirs_fn, x, y, indices_tuple=mined)
        assert torch.allclose(a[0], b[0], rtol=1e-5, atol=1e-7), (a[0], b[0])
        assert torch.allclose(a[1], b[1], rtol=1e-5, atol=1e-7)
        assert len(a[2]) == len(b[2])
        for ga, gb in zip(a[2], b[2], strict=True):
            assert torch.allclose(ga, gb, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "ours,pml_name",
    sorted({(c[0], c[1]) for c in CASES}, key=lambda c: c[1]),
    ids=lambda c: getattr(c, "__name__", c),
)
def test_same_parameter_defaults(ours, pml_name):
    import inspect

    theirs = getattr(pml_losses, pml_name)()
    names = [
        p for p in inspect.signature(ours.__init__).parameters if p not in ("self", "distance")
    ]
    for name in names:
        if not hasattr(theirs, name) or (ours is AngularLoss and name == "alpha"):
            continue  # pytorch-metric-learning keeps the angular alpha in radians
        mine, their = getattr(ours(), name), getattr(theirs, name)
        if isinstance(their, torch.Tensor):
            their = their.flatten()[0].item()
        assert mine == pytest.approx(their) if isinstance(mine, float) else mine == their, name
    # same default distance family and direction
    assert ours().distance.is_similarity == theirs.distance.is_inverted


# -- chunked == unchunked ------------------------------------------------------------------
CHUNKED = [
    (NTXentLoss, {}),
    (SupConLoss, {}),
    (MultiSimilarityLoss, {}),
    (CircleLoss, {}),
    (LiftedStructureLoss, {}),
    (GeneralizedLiftedStructureLoss, {}),
    (AngularLoss, {}),
    (MarginLoss, {"learn_beta": True, "nu": 0.1, "num_classes": 4}),
    (NPairsLoss, {}),
    (FastAPLoss, {}),
    (QuadrupletLoss, {}),
]


@pytest.mark.parametrize("mode", ["labels", "pairs", "ref"])
@pytest.mark.parametrize("cls,kwargs", CHUNKED, ids=[c[0].__name__ for c in CHUNKED])
def test_chunked_equals_unchunked(cls, kwargs, mode, monkeypatch):
    x, y, r, ry = batch(3)
    call: dict = {}
    if mode == "pairs":
        g = torch.Generator().manual_seed(1)
        call["indices"] = Pairs(
            torch.randint(0, N, (40,), generator=g),
            torch.randint(0, N, (40,), generator=g),
            torch.randint(0, N, (60,), generator=g),
            torch.randint(0, N, (60,), generator=g),
        )
        if cls in (QuadrupletLoss, MarginLoss):
            pytest.skip("mined tuples are gathered directly: there is no chunked path")
    if mode == "ref":
        call.update(ref_embeddings=r, ref_labels=ry)

    whole = run(cls(**kwargs).double(), x, y, **call)
    n_chunks = []
    original = chunking.row_chunks

    def counting(n_rows, chunk):
        bounds = list(original(n_rows, chunk))
        n_chunks.append(len(bounds))
        return iter(bounds)

    monkeypatch.setattr(chunking, "DEFAULT_BUDGET", 1)  # one row per chunk
    monkeypatch.setattr(chunking, "row_chunks", counting)
    parts = run(cls(**kwargs).double(), x, y, **call)
    assert n_chunks and max(n_chunks) > 1, "the tiny budget should split the rows"
    assert torch.allclose(whole[0], parts[0], rtol=1e-12, atol=1e-12)
    assert torch.allclose(whole[1], parts[1], rtol=1e-10, atol=1e-12)
    for ga, gb in zip(whole[2], parts[2], strict=True):
        assert torch.allclose(ga, gb, rtol=1e-10, atol=1e-12)


def test_quadruplet_with_miner_quadruplets_is_chunk_free_and_finite():
    x, y, _, _ = batch(4)
    q = Quadruplets(
        torch.tensor([0, 1, 2]),
        torch.tensor([3, 4, 5]),
        torch.tensor([6, 7, 8]),
        torch.tensor([9, 10, 11]),
    )
    value, grad, _ = run(QuadrupletLoss().double(), x, y, indices=q)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
