"""chunked_sum and distance surrogates: gradients equal plain autograd, on every path."""

from __future__ import annotations

import pytest
import torch

from dmlkit.distances import CosineSimilarity, DotProductSimilarity, EuclideanDistance
from dmlkit.functional.chunking import EAGER_MAX_OUTPUTS, chunked_sum, eager_chunk_size


def _terms(a: int, b: int, x: torch.Tensor, y: torch.Tensor):
    d = torch.cdist(x[a:b], y)  # (c, m)
    loss = torch.stack([torch.relu(1.0 - d).pow(2).sum(), (d * d).sum()])  # (2,)
    count = (d < 1.0).sum()  # int64
    return loss, count


def _reference(x: torch.Tensor, y: torch.Tensor):
    return _terms(0, x.shape[0], x, y)


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_values_and_gradients_match_unchunked(chunk):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([0.7, -1.3], dtype=torch.float64)
    loss, count = chunked_sum(_terms, 10, chunk, x, y)
    ref_loss, ref_count = _reference(x, y)
    assert count.dtype == torch.int64 and int(count) == int(ref_count)
    torch.testing.assert_close(loss, ref_loss)
    got = torch.autograd.grad((loss * w).sum(), (x, y))
    want = torch.autograd.grad((ref_loss * w).sum(), (x, y))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_gradcheck_fp64():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: chunked_sum(_terms, 7, 2, a, b)[0], (x, y))


def test_large_outputs_are_recomputed_in_backward():
    # a per-row output vector is too large for eager gradients: the recompute path runs
    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    n_out = EAGER_MAX_OUTPUTS + 3
    w = torch.randn(n_out, generator=g, dtype=torch.float64)

    def rows(a: int, b: int, x_: torch.Tensor) -> torch.Tensor:
        return (x_[a:b, :1] * x_[a:b].sum(dim=1, keepdim=True)).sum(dim=0).repeat(n_out) * w

    out = chunked_sum(rows, 9, 2, x)
    ref = rows(0, 9, x)
    torch.testing.assert_close(out, ref)
    v = torch.randn(n_out, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        torch.autograd.grad((out * v).sum(), x)[0], torch.autograd.grad((ref * v).sum(), x)[0]
    )


def test_only_inputs_that_need_grad_get_one_and_no_grad_mode_works():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 3, generator=g, requires_grad=True)
    y = torch.randn(4, 3, generator=g)  # no grad
    loss, _ = chunked_sum(_terms, 8, 3, x, y)
    loss.sum().backward()
    assert x.grad is not None and y.grad is None
    with torch.no_grad():
        loss2, _ = chunked_sum(_terms, 8, 3, x, y)
    assert not loss2.requires_grad
    torch.testing.assert_close(loss2, loss.detach())


def test_eager_chunk_size_bounds():
    assert eager_chunk_size(10, 1 << 30) == 10  # tiny batches: one chunk
    assert eager_chunk_size(100_000, 1 << 30) == 64  # never fewer than 64 rows
    assert 64 <= eager_chunk_size(4096, 4 * 4096) <= 4096


def test_zero_rows_raise():
    x = torch.randn(0, 3, requires_grad=True)
    with pytest.raises(ValueError, match="at least one row"):
        chunked_sum(lambda a, b, x_: x_[a:b].sum(), 0, 1, x)


@pytest.mark.parametrize(
    "distance",
    [
        EuclideanDistance(),
        EuclideanDistance(squared=True),
        EuclideanDistance(normalize_embeddings=False),
        CosineSimilarity(),
        DotProductSimilarity(normalize_embeddings=False),
    ],
    ids=["euclidean", "squared", "euclidean-raw", "cosine", "dot-raw"],
)
def test_matrix_surrogate_gradient_equals_autograd(distance):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    y = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y[2] = x[1]  # a zero distance: its gradient is zero on both paths
    x, y = distance.maybe_normalize(x), distance.maybe_normalize(y)
    grad = torch.randn(6, 7, generator=g, dtype=torch.float64)
    xa, ya = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    want = torch.autograd.grad((distance.compute_matrix(xa, ya) * grad).sum(), (xa, ya))
    xs, ys = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    with torch.no_grad():
        mat = distance.compute_matrix(x, y)
    got = torch.autograd.grad(distance.matrix_surrogate(xs, ys, grad, mat), (xs, ys))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_loss_stacked_with_counts_takes_gradients_once():
    # the pack() pattern of the pair losses: no recomputation in backward
    g = torch.Generator().manual_seed(5)
    x = torch.randn(9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    calls = []

    def part(a: int, b: int, x_: torch.Tensor) -> torch.Tensor:
        calls.append((a, b))
        d = torch.cdist(x_[a:b], x_)  # (c, n)
        return torch.stack([torch.exp(-d).sum(), (d < 1).sum().to(d.dtype)])

    out = chunked_sum(part, 9, 4, x)
    n_forward = len(calls)
    (out[0] * 2.0 + out[1]).backward()
    assert len(calls) == n_forward == 3
    xr = x.detach().clone().requires_grad_(True)
    ref = part(0, 9, xr)
    (ref[0] * 2.0).backward()
    torch.testing.assert_close(out.detach(), ref.detach())
    torch.testing.assert_close(x.grad, xr.grad)
