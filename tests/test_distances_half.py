"""Distances on half-precision inputs (float16, bfloat16) on the CPU: the values of the
float64 computation, in the input dtype, with gradients."""

from __future__ import annotations

import pytest
import torch

from dmlkit.distances import (
    CosineSimilarity,
    DotProductSimilarity,
    EuclideanDistance,
    SNRDistance,
)

HALF = [torch.float16, torch.bfloat16]
#: float16 keeps 11 significant bits, bfloat16 8
TOL = {torch.float16: 4e-3, torch.bfloat16: 3e-2}


def naive_snr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``var(x_i - y_j) / var(x_i)`` by loops, in float64 (inputs L2-normalized)."""
    x = torch.nn.functional.normalize(x.double(), dim=1)
    y = torch.nn.functional.normalize(y.double(), dim=1)
    return torch.tensor([[float(torch.var(a - b) / torch.var(a)) for b in y] for a in x],
                        dtype=torch.float64)


def data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(7, 10, generator=g), torch.randn(5, 10, generator=g)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_snr_distance_on_half_inputs(dtype):
    x, y = data()
    xh, yh = x.to(dtype), y.to(dtype)
    want = naive_snr(xh, yh)  # of the rounded inputs
    got = SNRDistance()(xh, yh)
    assert got.dtype == dtype and got.shape == (7, 5)
    torch.testing.assert_close(got.double(), want, atol=TOL[dtype], rtol=TOL[dtype])
    own = SNRDistance()(xh)  # y = x: exact zeros on the diagonal
    assert own.dtype == dtype
    assert torch.equal(own.diagonal(), torch.zeros(7, dtype=dtype))
    torch.testing.assert_close(own.double(), naive_snr(xh, xh), atol=TOL[dtype],
                               rtol=TOL[dtype])
    rows = SNRDistance().pairwise(xh[:5], yh)
    assert rows.dtype == dtype
    torch.testing.assert_close(rows.double(), want.diagonal()[:5], atol=TOL[dtype],
                               rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_snr_distance_half_gradients(dtype):
    x, _ = data(1)
    xh = x.to(dtype).requires_grad_(True)
    SNRDistance()(xh).sum().backward()
    assert xh.grad is not None and xh.grad.dtype == dtype
    assert bool(torch.isfinite(xh.grad).all()) and float(xh.grad.abs().sum()) > 0
    xd = x.to(dtype).double().requires_grad_(True)  # the same inputs, in float64
    SNRDistance()(xd).sum().backward()
    scale = 2 * torch.finfo(dtype).eps * float(xd.grad.abs().max())  # 2 ulps of the largest
    torch.testing.assert_close(xh.grad.double(), xd.grad, atol=scale, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_snr_distance_keeps_full_precision_dtypes(dtype):
    x, y = data(2)
    got = SNRDistance()(x.to(dtype), y.to(dtype))
    assert got.dtype == dtype
    torch.testing.assert_close(got.double(), naive_snr(x, y),
                               atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=1e-5)


@pytest.mark.parametrize("distance", [EuclideanDistance(), EuclideanDistance(squared=True),
                                      CosineSimilarity(), DotProductSimilarity(),
                                      SNRDistance()], ids=lambda d: type(d).__name__)
@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_every_distance_returns_the_half_input_dtype(distance, dtype):
    x, y = data(3)
    assert distance(x.to(dtype), y.to(dtype)).dtype == dtype
    assert distance.pairwise(x[:5].to(dtype), y.to(dtype)).dtype == dtype
