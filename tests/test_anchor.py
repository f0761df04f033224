"""training.anchor_weight: the similarity-drift regularizer and its place in the Trainer."""

from __future__ import annotations

import pytest
import torch

from dmlkit.config.schema import TrainingConfig
from dmlkit.functional.anchor import similarity_drift
from dmlkit.training import Trainer


def _loop_drift(e: torch.Tensor, r: torch.Tensor) -> float:
    e = e.double()
    r = r.double()
    total, n = 0.0, e.shape[0]
    for i in range(n):
        for j in range(n):
            ce = float(e[i] @ e[j] / (e[i].norm() * e[j].norm()))
            cr = float(r[i] @ r[j] / (r[i].norm() * r[j].norm()))
            total += (ce - cr) ** 2
    return total / (n * n)


def test_similarity_drift_matches_loop_and_gradient():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(7, 5, generator=g, requires_grad=True)
    r = torch.randn(7, 3, generator=g)  # another width: only similarities are compared
    value = similarity_drift(e, r)
    assert value.item() == pytest.approx(_loop_drift(e.detach(), r), rel=1e-5)
    value.backward()
    e64 = e.detach().double().requires_grad_(True)
    torch.autograd.gradcheck(lambda x: similarity_drift(x, r.double()), (e64,))
    assert e.grad is not None and torch.isfinite(e.grad).all()


def test_similarity_drift_zero_for_same_similarities():
    x = torch.randn(6, 4)
    q, _ = torch.linalg.qr(torch.randn(4, 4))
    assert similarity_drift(3.0 * x @ q, x).item() == pytest.approx(0.0, abs=1e-6)


def test_similarity_drift_bad_input():
    with pytest.raises(ValueError, match="rows"):
        similarity_drift(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="NaN"):
        similarity_drift(torch.full((2, 2), float("nan")), torch.randn(2, 2))


@pytest.mark.parametrize("bad", [-1.0, float("inf"), "a"])
def test_anchor_weight_validated(bad):
    with pytest.raises(ValueError, match="anchor_weight"):
        TrainingConfig(anchor_weight=bad)


def _drift_after_training(build, anchor: float, tmp_path) -> tuple[float, Trainer]:
    trainer = build(tmp_path / f"run{anchor}", anchor_weight=anchor)
    x = trainer.train_data.x[:200].float()
    with torch.no_grad():
        start = trainer.model.eval()(x)
    trainer.fit()
    with torch.no_grad():
        end = trainer.model.eval()(x)
    return float(similarity_drift(end, start)), trainer


def test_trainer_anchor_keeps_similarities_closer(tmp_path, unseen_digits_trainer):
    free, _ = _drift_after_training(unseen_digits_trainer, 0.0, tmp_path)
    anchored, trainer = _drift_after_training(unseen_digits_trainer, 100.0, tmp_path)
    assert anchored < 0.5 * free  # the term holds the metric near where it started
    state = trainer.state_dict()
    assert state["anchor"]  # saved: a resumed run anchors to the same starting model
    first = next(iter(state["anchor"].values()))
    assert not torch.equal(first, next(iter(state["model"].values())))
