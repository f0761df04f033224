"""One contract for every registered loss and miner (driven by the registries).

Checks: scalar output, backward, fp64 gradcheck, zero-but-connected loss when a batch
has no valid tuple, determinism, config round-trip, clear errors for bad input.
A new registered class is covered automatically; classes whose constructor needs more
than ``num_classes`` / ``embedding_size`` / ``loss`` get an entry in ``SPECIAL``.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch

from dmlkit.functional.tuples import Pairs, Quadruplets, Triplets
from dmlkit.registry import LOSSES, MINERS, build_from_config, config_of

NUM_CLASSES = 4
DIM = 8

#: registry name -> extra constructor parameters
SPECIAL: dict[str, dict[str, Any]] = {
    # exact gradient (the default treats circle loss's self-paced weights as constants)
    "circle": {"detach_weights": False},
    # a memory holding exactly the current batch, with live gradients, is a pure function
    # of the batch (the default detaches the memory, so gradcheck would see a different loss)
    "cross_batch_memory": {"memory_size": 8, "detach_batch": False},
    # momentum 1: the histogram is the current batch's, so the loss is a pure function
    "dynamic_soft_margin": {"momentum": 1.0},
    "multiple_losses": {"losses": {"a": LOSSES.build("contrastive"),
                                   "b": LOSSES.build("multi_similarity")},
                        "weights": {"a": 1.0, "b": 0.5}},
    "weighted_sum": {"losses": [LOSSES.build("contrastive"), LOSSES.build("multi_similarity")],
                     "weights": [1.0, 0.5]},
    # pytorch-metric-learning's required parameters and names
    "ranked_list": {"margin": 0.4, "Tn": 1.0},
    "p2s_grad": {"descriptors_dim": 8},
    "manifold": {"l": 8, "K": 4},
}


def make(registry, name: str, **overrides: Any):
    cls = registry.get(name)
    params: dict[str, Any] = {}
    sig = inspect.signature(cls.__init__).parameters
    if "num_classes" in sig:
        params["num_classes"] = NUM_CLASSES
    if "embedding_size" in sig:
        params["embedding_size"] = DIM
    if "loss" in sig and sig["loss"].default is inspect.Parameter.empty:
        params["loss"] = LOSSES.build("contrastive")
    params.update(SPECIAL.get(name, {}))
    params.update(overrides)
    torch.manual_seed(0)
    return cls(**params)


def call(loss_fn, x, y, **kwargs):
    """``loss_fn(x, y)``; two-view losses without labels get a second view made from ``x``."""
    if getattr(loss_fn, "takes_labels", True):
        return loss_fn(x, y, **kwargs)
    return loss_fn(x, ref_embeddings=0.5 * x.roll(1, 0) + 0.1, **kwargs)


def batch(n: int = 16, dtype=torch.float32, seed: int = 0, classes: int = NUM_CLASSES):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM, generator=g, dtype=dtype)
    y = torch.arange(n) % classes
    return x, y


@pytest.mark.parametrize("name", LOSSES.names())
def test_loss_scalar_backward_and_determinism(name):
    loss_fn = make(LOSSES, name)
    x, y = batch()
    x.requires_grad_(True)
    out = call(loss_fn, x, y)
    assert out.dim() == 0 and torch.isfinite(out)
    out.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0, "loss on a random batch should have a non-zero gradient"
    again = call(make(LOSSES, name), x.detach(), y)
    assert torch.allclose(out.detach(), again.detach())


@pytest.mark.parametrize("name", LOSSES.names())
def test_loss_gradcheck_fp64(name):
    loss_fn = make(LOSSES, name).double()
    x, y = batch(n=8, dtype=torch.float64, seed=1)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: call(loss_fn, e, y), (x,), eps=1e-6, atol=1e-4)


@pytest.mark.parametrize("name", LOSSES.names())
def test_loss_without_valid_tuples_is_connected_zero(name):
    loss_fn = make(LOSSES, name)
    if getattr(loss_fn, "requires_labels", False):
        pytest.skip("classifier/proxy losses have a loss for every labelled sample")
    if not getattr(loss_fn, "takes_labels", True):
        pytest.skip("two-view losses have no tuples")
    # a single sample has no pair at all
    x1 = torch.randn(1, DIM, requires_grad=True)
    out = loss_fn(x1, torch.zeros(1, dtype=torch.long))
    assert out.item() == 0.0
    out.backward()
    assert x1.grad is not None and torch.isfinite(x1.grad).all()
    # explicitly empty tuples
    if loss_fn.accepts_indices:
        x, y = batch()
        x.requires_grad_(True)
        empty = torch.zeros(0, dtype=torch.long)
        out = loss_fn(x, y, indices=Triplets(empty, empty, empty))
        assert out.item() == 0.0
        out.backward()
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", LOSSES.names())
def test_loss_empty_batch_is_connected_zero(name):
    loss_fn = make(LOSSES, name)
    x = torch.zeros(0, DIM, requires_grad=True)
    out = call(loss_fn, x, torch.zeros(0, dtype=torch.long))
    assert out.item() == 0.0
    out.backward()


@pytest.mark.parametrize("name", LOSSES.names())
def test_loss_bad_inputs_raise(name):
    loss_fn = make(LOSSES, name)
    x, y = batch()
    with pytest.raises(ValueError, match="NaN"):
        bad = x.clone()
        bad[0, 0] = float("nan")
        call(loss_fn, bad, y)
    if not getattr(loss_fn, "takes_labels", True):
        with pytest.raises(ValueError, match="shape"):
            call(loss_fn, x[0], y)
        return
    with pytest.raises(ValueError, match="length"):
        loss_fn(x, y[:-1])
    with pytest.raises(ValueError, match="shape"):
        loss_fn(x[0], y)
    with pytest.raises(TypeError):
        loss_fn(x, y.float())


@pytest.mark.parametrize("name", LOSSES.names())
def test_loss_config_round_trip(name):
    loss_fn = make(LOSSES, name)
    config = config_of(loss_fn)
    rebuilt = build_from_config(LOSSES, config)
    assert config_of(rebuilt) == config
    rebuilt.load_state_dict(loss_fn.state_dict())
    x, y = batch()
    assert torch.allclose(call(loss_fn, x, y), call(rebuilt, x, y))


@pytest.mark.parametrize("name", MINERS.names())
def test_miner_contract(name):
    miner = make(MINERS, name)
    label_free = not getattr(miner, "takes_labels", True)
    x, y = batch(n=15 if label_free else 16)
    x.requires_grad_(True)
    out = miner(x, y)
    assert isinstance(out, (Pairs, Triplets, Quadruplets))
    for t in out:
        assert t.dtype == torch.long and not t.requires_grad
    again = make(MINERS, name)(x, y)
    assert all(torch.equal(a, b) for a, b in zip(out, again, strict=True))
    config = config_of(miner)
    assert config_of(build_from_config(MINERS, config)) == config
    if label_free:  # the batch layout decides: labels change nothing, a bad layout raises
        assert all(torch.equal(a, b) for a, b in zip(miner(x, torch.arange(15)), out, strict=True))
        with pytest.raises(ValueError):
            miner(torch.randn(16, DIM))
        return
    # a batch where every sample is its own class yields no tuple with a positive
    none = miner(x, torch.arange(16))
    if isinstance(none, (Triplets, Quadruplets)):
        assert none.anchor.numel() == 0
    else:
        assert none.a1.numel() == 0
    with pytest.raises(ValueError):
        miner(x, y[:-1])
