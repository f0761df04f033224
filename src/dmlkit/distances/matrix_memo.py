"""One batch's distance matrix, handed from the miner that computed it to the loss after it.

A miner and the loss that follows it usually measure the same embeddings with the same
distance: the miner to select tuples, the loss to score them. The miner records its
whole ``(n, m)`` matrix here (computed without gradients) together with the identity and
version counter of the embedding tensors it measured; the loss takes it back only when
it is called on those very tensor objects, unchanged since (same version), with an
equal distance, in the matrix's dtype. Anything else (other tensors, an in-place change,
another distance, a second read) finds nothing, and the loss computes its own matrix.

At most one matrix is held, of at most :data:`MAX_ENTRIES` entries, and it is dropped
when read, so nothing outlives the step that made it.
"""

from __future__ import annotations

import weakref
from typing import Any

from torch import Tensor

from dmlkit.distances.base import BaseDistance

#: matrices larger than this (entries) are not kept: 16 MB of float32
MAX_ENTRIES = 1 << 22

_held: tuple[Any, ...] | None = None


def distance_key(distance: BaseDistance) -> tuple[Any, ...]:
    """What makes two distance objects measure the same: their class and plain settings."""
    items = sorted(
        (k, v) for k, v in vars(distance).items()
        if not k.startswith("_") and k != "training" and isinstance(v, (bool, int, float, str))
    )  # fmt: skip
    return (type(distance), tuple(items))


def _ident(t: Tensor | None) -> tuple[Any, int]:
    return (None, -1) if t is None else (weakref.ref(t), t._version)


def remember(
    embeddings: Tensor, ref_embeddings: Tensor | None, distance: BaseDistance, matrix: Tensor
) -> None:
    """Keep ``matrix`` = ``distance`` between the (normalized) ``embeddings`` and
    ``ref_embeddings`` (None: the embeddings themselves) for the next :func:`recall`."""
    global _held
    if matrix.numel() > MAX_ENTRIES or matrix.requires_grad:
        _held = None
        return
    _held = (_ident(embeddings), _ident(ref_embeddings), distance_key(distance), matrix)


def recall(
    embeddings: Tensor, ref_embeddings: Tensor | None, distance: BaseDistance
) -> Tensor | None:
    """The kept matrix if it was measured on these unchanged tensors with an equal
    distance and has their dtype; None otherwise. Either way nothing is kept after."""
    global _held
    held, _held = _held, None
    if held is None:
        return None
    (emb_ref, emb_ver), (ref_ref, ref_ver), key, matrix = held
    if emb_ref() is not embeddings or emb_ver != embeddings._version:
        return None
    if ref_embeddings is None:
        if ref_ref is not None:
            return None
    elif ref_ref is None or ref_ref() is not ref_embeddings or ref_ver != ref_embeddings._version:
        return None
    if key != distance_key(distance) or matrix.dtype != embeddings.dtype:
        return None
    if matrix.device != embeddings.device:
        return None
    return matrix


def forget() -> None:
    """Drop the kept matrix."""
    global _held
    _held = None


__all__ = ["MAX_ENTRIES", "distance_key", "forget", "recall", "remember"]
