"""NCA's float32 solve keeps no subnormal numbers (slow on CPUs) in its softmax and
gradient weights, and still agrees with the float64 objective and gradient."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.preprocessing import StandardScaler

from dmlkit.classical.nca import (
    flush_subnormal_,
    nca_loss_grad,
    nca_loss_grad_dense,
    row_softmax,
    same_label_weights,
)

TINY = torch.finfo(torch.float32).tiny


def _subnormal(t: torch.Tensor) -> int:
    return int(((t != 0) & (t.abs() < TINY)).sum())


def test_row_softmax_has_no_subnormals_and_equals_the_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 300, generator=g) * 60.0  # spreads of hundreds: underflow
    logits.diagonal().fill_(float("-inf"))
    plain = torch.softmax(logits, dim=1)
    assert _subnormal(plain) > 0  # (the case at hand)
    p = row_softmax(logits)
    assert _subnormal(p) == 0
    assert torch.all(p.diagonal() == 0)
    torch.testing.assert_close(p, plain, rtol=0, atol=1e-30)
    torch.testing.assert_close(p.sum(dim=1), torch.ones(64))


def test_flush_keeps_normal_numbers_and_signs():
    t = torch.tensor([1e-39, -1e-39, 2e-38, -3e-30, 0.5, 0.0])
    flush_subnormal_(t)
    assert t.tolist() == [0.0, 0.0, torch.tensor(2e-38).item(), torch.tensor(-3e-30).item(),
                          0.5, 0.0]


def _digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = load_digits(return_X_y=True)
    x = StandardScaler().fit_transform(x[:600])
    L = torch.from_numpy(np.random.default_rng(0).normal(size=(64, 64)) * 0.2)
    return torch.from_numpy(x), torch.from_numpy(y[:600]), L


def test_float32_dense_and_chunked_agree_with_float64_on_standardized_digits():
    x, y, L = _digits()
    loss64, grad64 = nca_loss_grad_dense(L, x, same_label_weights(y, torch.float64))
    loss32, grad32 = nca_loss_grad_dense(L.float(), x.float(),
                                         same_label_weights(y, torch.float32))
    assert float(loss32) == pytest_approx(float(loss64))
    rel = (grad32.double() - grad64).norm() / grad64.norm()
    assert rel < 1e-3
    c_loss, c_grad = nca_loss_grad(L.float(), x.float(), y, budget=600 * 50)  # row chunks
    assert float(c_loss) == pytest_approx(float(loss64))
    assert (c_grad.double() - grad64).norm() / grad64.norm() < 1e-3


def pytest_approx(v: float):
    import pytest

    return pytest.approx(v, rel=1e-5)
