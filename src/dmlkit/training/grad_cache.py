"""Gradient caching (``training.grad_cache_chunk``, Gao et al. 2021): a batch embedded in
chunks whose activations are not kept but recomputed, one chunk at a time, in the backward
pass, so that encoder memory grows with the chunk, not the batch.

Any batch that slices by item is chunked: a tensor ``(B, ...)``, a list or tuple of
items (a text model's sentences), or a mapping of ``(B, ...)`` tensors (tokenized text).
In a model whose batch norms train, a last chunk of one item joins the chunk before it
(batch norm cannot normalize one item in training mode), and ``grad_cache_chunk: 1`` is
refused (:func:`check_grad_cache`); other models get chunks of at most ``chunk`` items.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn


def chunk_bounds(n: int, chunk: int, merge_single: bool = False) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of the chunks of ``n`` items, ``chunk`` at a time; with
    ``merge_single`` a last chunk of one item is merged into the one before (no chunk of
    one item when ``n >= 2``, unless ``chunk`` is 1)."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    bounds = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    if merge_single and chunk > 1 and len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds


def batch_length(inputs: Any) -> int:
    """The number of items in a batch that :func:`slice_batch` can split; a
    ``TypeError`` for any other batch."""
    if isinstance(inputs, Tensor) and inputs.dim() > 0:
        return int(inputs.shape[0])
    if isinstance(inputs, (list, tuple)):
        return len(inputs)
    if isinstance(inputs, Mapping) and inputs and all(
            isinstance(v, Tensor) and v.dim() > 0 for v in inputs.values()):
        lengths = {int(v.shape[0]) for v in inputs.values()}
        if len(lengths) == 1:
            return lengths.pop()
    raise TypeError(
        f"training.grad_cache_chunk cannot split a batch of {type(inputs).__name__} into "
        "chunks (it splits tensors, lists or tuples of items, and mappings of tensors that "
        "share their first axis); remove grad_cache_chunk for this model")


def slice_batch(inputs: Any, start: int, end: int) -> Any:
    """Items ``start:end`` of a batch (see :func:`batch_length`)."""
    if isinstance(inputs, Mapping):
        return {k: v[start:end] for k, v in inputs.items()}
    return inputs[start:end]


def training_batch_norms(model: nn.Module) -> list[str]:
    """Names of ``model``'s batch norms that normalize with batch statistics in training
    mode (``model.train()``; the modes of all submodules are restored after)."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.train()
        return [name or type(m).__name__ for name, m in model.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    finally:
        for m, mode in modes.items():
            m.training = mode


def check_grad_cache(model: nn.Module, chunk: int | None) -> None:
    """Refuse ``grad_cache_chunk: 1`` for a model with batch norms that train: a chunk of
    one item has no batch statistics."""
    if chunk != 1:
        return
    norms = training_batch_norms(model)
    if norms:
        raise ValueError(
            f"training.grad_cache_chunk 1 embeds one item at a time, but the model has batch "
            f"norm layers ({', '.join(norms[:3])}{', ...' if len(norms) > 3 else ''}), which "
            "cannot normalize a single item in training mode: use grad_cache_chunk >= 2")


@contextlib.contextmanager
def kept_norm_statistics(model: nn.Module) -> Iterator[None]:
    """Batch norms' running statistics as they were on entry, restored on exit (a forward
    pass recomputed for gradients must not count its batch twice)."""
    saved = [(buf, buf.detach().clone()) for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) for buf in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def cached_embeddings(model: nn.Module, inputs: Any, chunk: int) -> Tensor:
    """``model(inputs)`` embedded ``chunk`` items at a time (:func:`chunk_bounds`; a last
    chunk of one item joins the one before when batch norms train), each chunk's
    activations recomputed in the backward pass: ``(B, dim)``, with the plain forward's
    gradients (batch norm sees per-chunk statistics)."""
    from torch.utils.checkpoint import checkpoint

    n = batch_length(inputs)
    if n <= chunk:
        return model(inputs)
    norms = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
                for m in model.modules())

    def contexts() -> tuple[Any, Any]:  # the backward's recompute keeps norm statistics
        return contextlib.nullcontext(), kept_norm_statistics(model)

    return torch.cat([checkpoint(model, slice_batch(inputs, s, e), use_reentrant=False,
                                 context_fn=contexts)
                      for s, e in chunk_bounds(n, chunk, merge_single=norms)])  # (B, dim)


__all__ = ["batch_length", "cached_embeddings", "check_grad_cache", "chunk_bounds",
           "kept_norm_statistics", "slice_batch", "training_batch_norms"]
