"""MLKR with several target columns (one-hot classes) and `dmlkit classical fit -m mlkr`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dmlkit.classical import MLKR
from dmlkit.classical.mahalanobis import ManualGradObjective
from dmlkit.classical.mlkr import mlkr_loss_grad
from dmlkit.cli.main import app


def _loop_loss(L: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """sum_i |Y_i - sum_{j!=i} k_ij Y_j / sum_{j!=i} k_ij|^2, one pair at a time (fp64)."""
    Z = X @ L.T
    total = X.new_zeros(())
    for i in range(X.shape[0]):
        num, den = torch.zeros_like(Y[0]), X.new_zeros(())
        for j in range(X.shape[0]):
            if j != i:
                k = torch.exp(-((Z[i] - Z[j]) ** 2).sum())
                num, den = num + k * Y[j], den + k
        total = total + ((Y[i] - num / den) ** 2).sum()
    return total


@pytest.mark.parametrize("budget", [1 << 24, 30])  # one chunk / several chunks
def test_multi_target_objective_matches_loop_and_gradcheck(budget):
    g = torch.Generator().manual_seed(3)
    X = torch.randn(13, 3, dtype=torch.float64, generator=g)
    L = torch.randn(2, 3, dtype=torch.float64, generator=g)
    Y = torch.eye(3, dtype=torch.float64)[torch.arange(13) % 3]  # (13, 3) one-hot
    loss, grad = mlkr_loss_grad(L, X, Y, budget=budget)
    Lr = L.clone().requires_grad_(True)
    ref = _loop_loss(Lr, X, Y)
    ref.backward()
    assert torch.allclose(loss, ref, atol=1e-10)
    assert torch.allclose(grad, Lr.grad, atol=1e-8)
    y = torch.linspace(-1, 1, 13, dtype=torch.float64)  # one column = the 1-D objective
    one, g_one = mlkr_loss_grad(L, X, y[:, None], budget=budget)
    flat, g_flat = mlkr_loss_grad(L, X, y, budget=budget)
    assert torch.allclose(one, flat) and torch.allclose(g_one, g_flat)
    Lg = L.clone().requires_grad_(True)
    fn = lambda A: ManualGradObjective.apply(A, lambda B: mlkr_loss_grad(B, X, Y, budget))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (Lg,), eps=1e-6, atol=1e-5)


def test_mlkr_on_one_hot_classes_finds_the_informative_feature():
    rng = np.random.RandomState(0)
    y = np.arange(90) % 3
    X = np.column_stack([y + 0.1 * rng.randn(90), 3 * rng.randn(90)])
    est = MLKR(device="cpu", random_state=0).fit(X, np.eye(3)[y])
    M = est.get_mahalanobis_matrix()
    assert M[1, 1] < 0.1 * M[0, 0]  # from the identity, the noise axis shrinks


def test_cli_classical_fit_mlkr(tmp_path):
    rng = np.random.RandomState(1)
    y = np.arange(60) % 3
    X = np.column_stack([y + 0.1 * rng.randn(60), 3 * rng.randn(60), rng.randn(60)])
    np.savez(tmp_path / "e.npz", embeddings=X, labels=y)
    out = tmp_path / "m"
    res = CliRunner().invoke(app, ["classical", "fit", str(tmp_path / "e.npz"), "--method",
                                   "mlkr", "--out", str(out), "-p", "device=cpu"])
    assert res.exit_code == 0, res.output
    assert np.load(out / "components.npy").shape == (3, 3)
    saved = json.loads((out / "metric.json").read_text())
    assert saved["method"].lower() == "mlkr"
    learned, raw = saved["evaluation"]["learned"], saved["evaluation"]["raw"]
    assert learned["knn_accuracy"] > raw["knn_accuracy"]
