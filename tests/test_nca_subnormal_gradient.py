"""NCA's gradient stays finite when the positives' share of the softmax is a subnormal
float32 number (a gap of about 87-104 between the nearest item's logit and theirs)."""

from __future__ import annotations

import math

import pytest
import torch

from dmlkit.distances import EuclideanDistance
from dmlkit.losses import NCALoss


def _loss_and_grad(x: torch.Tensor, labels: torch.Tensor, **kw: object):
    x = x.clone().requires_grad_(True)
    loss = NCALoss(**kw)(x, labels)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("position", [9.5, 10.0, 10.2])
def test_squared_unnormalized_distances_give_the_float64_gradient(position):
    x = torch.tensor([[0.0], [position], [0.5], [3.0]])
    labels = torch.tensor([0, 0, 1, 1])
    d = EuclideanDistance(squared=True, normalize_embeddings=False)
    loss32, grad32 = _loss_and_grad(x, labels, distance=d)
    loss64, grad64 = _loss_and_grad(x.double(), labels, distance=d)
    assert torch.isfinite(grad32).all()
    assert loss32.item() == pytest.approx(loss64.item(), rel=1e-5)
    torch.testing.assert_close(grad32.double(), grad64, rtol=1e-4, atol=1e-4)


def test_a_large_softmax_scale_on_the_default_distance_keeps_a_finite_gradient():
    t = math.acos(-0.6)
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [math.cos(t), math.sin(t)]])
    labels = torch.tensor([0, 1, 0])
    _, grad32 = _loss_and_grad(x, labels, softmax_scale=30.0)
    _, grad64 = _loss_and_grad(x.double(), labels, softmax_scale=30.0)
    assert torch.isfinite(grad32).all()
    torch.testing.assert_close(grad32.double(), grad64, rtol=1e-4, atol=1e-4)
