"""training.uniformity_weight: the uniformity regularizer and its place in the Trainer."""

from __future__ import annotations

import math

import pytest
import torch

from dmlkit.config.schema import TrainingConfig
from dmlkit.functional.uniformity import uniformity


def _loop_uniformity(e: torch.Tensor, t: float) -> float:
    e = e.double()
    u = [row / row.norm() for row in e]
    total, n = 0.0, len(u)
    for i in range(n):
        for j in range(n):
            if i != j:
                total += math.exp(-t * float((u[i] - u[j]).square().sum()))
    return math.log(total / (n * (n - 1)))


@pytest.mark.parametrize("t", [2.0, 0.5])
def test_uniformity_matches_loop_and_gradient(t):
    g = torch.Generator().manual_seed(0)
    e = torch.randn(9, 4, generator=g, requires_grad=True)
    value = uniformity(e, t)
    assert value.item() == pytest.approx(_loop_uniformity(e.detach(), t), rel=1e-5)
    value.backward()
    assert e.grad is not None and torch.isfinite(e.grad).all()
    e64 = e.detach().double().requires_grad_(True)
    torch.autograd.gradcheck(lambda x: uniformity(x, t), (e64,))


def test_uniformity_orders_collapse_and_spread():
    collapsed = torch.ones(6, 3) + 1e-3 * torch.randn(6, 3)
    spread = torch.cat([torch.eye(3), -torch.eye(3)])  # the 6 poles of the sphere
    assert uniformity(collapsed).item() == pytest.approx(0.0, abs=1e-3)
    assert uniformity(spread).item() < uniformity(collapsed).item() - 3.0
    assert uniformity(spread).item() >= -8.0  # bounded below by -4 t


def test_uniformity_half_precision_and_bad_input():
    e = torch.randn(5, 3)
    assert uniformity(e.bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError, match="at least 2"):
        uniformity(torch.randn(1, 3))
    with pytest.raises(ValueError, match="t must be"):
        uniformity(e, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        uniformity(torch.full((3, 2), float("nan")))


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf"), "1"])
def test_uniformity_weight_validated(bad):
    with pytest.raises(ValueError, match="uniformity_weight"):
        TrainingConfig(uniformity_weight=bad)


def _spread_after_training(build, weight: float, tmp_path) -> float:
    trainer = build(tmp_path / f"run{weight}", uniformity_weight=weight)
    trainer.fit()
    with torch.no_grad():
        return float(uniformity(trainer.model.eval()(trainer.train_data.x[:300].float())))


def test_trainer_uniformity_spreads_embeddings(tmp_path, unseen_digits_trainer):
    plain = _spread_after_training(unseen_digits_trainer, 0.0, tmp_path)
    spread = _spread_after_training(unseen_digits_trainer, 5.0, tmp_path)
    assert spread < plain - 0.1  # the term spreads the training images over the sphere


def test_trainer_uniformity_skips_a_batch_of_one(tmp_path, unseen_digits_trainer):
    trainer = unseen_digits_trainer(tmp_path, uniformity_weight=1.0)
    train = trainer.train_data
    trainer.model.eval()  # (its batch norm takes no batch of one in training mode)
    x, y = train.x[:1].float(), train.labels[:1]
    assert torch.isfinite(trainer.batch_loss((x, y)))  # a last batch of one: no pairs
    x2, y2 = train.x[:2].float(), train.labels[:2]
    with torch.no_grad():
        emb = trainer.model(x2)
        expected = trainer.loss(emb, y2) + uniformity(emb)  # two items: the term is added
        assert trainer.batch_loss((x2, y2)).item() == pytest.approx(expected.item(), rel=1e-5)
