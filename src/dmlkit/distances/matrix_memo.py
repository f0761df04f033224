"""One batch's distance matrix, handed from the miner that computed it to the loss after it.

A miner and the loss that follows it usually measure the same embeddings with the same
distance: the miner to select tuples, the loss to score them. The miner records its
whole ``(n, m)`` matrix here (computed without gradients) together with the identity and
version counter of the embedding tensors it measured; the loss takes it back only when
it is called on those very tensor objects, unchanged since (same version), with an
equal distance (:func:`distance_key`: same class and settings, and the very same tensor
state, such as a Mahalanobis ``components`` matrix, unchanged), in the matrix's dtype.
Anything else (other tensors, an in-place change, another distance or another state of
it, a second read) finds nothing, and the loss computes its own matrix.

At most one matrix is held, of at most :data:`MAX_ENTRIES` entries, and it is dropped
when read, so nothing outlives the step that made it.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor, nn

from dmlkit.distances.base import BaseDistance

#: matrices larger than this (entries) are not kept: 16 MB of float32
MAX_ENTRIES = 1 << 22

_held: tuple[Any, ...] | None = None


def distance_key(distance: BaseDistance) -> tuple[Any, ...]:
    """What makes two distance objects measure the same: their class, their plain settings
    (bools, numbers, strings, None) by value, and any other state (tensor settings,
    buffers, parameters, submodules' state) by identity and, for tensors, version counter.

    Two distances whose tensors are distinct objects never match, even with equal values
    (a missed reuse costs one matrix; a wrong one, a wrong loss), and a tensor changed in
    place since (a trained ``components`` after an optimizer step) no longer matches.
    """
    return (type(distance), _state(distance))


#: attributes every ``nn.Module`` has (hooks, its stores of parameters, buffers and
#: submodules, ``training``): not settings of a distance
_MODULE_INTERNALS = frozenset(vars(nn.Module())) | {"training"}


def _state(module: nn.Module) -> tuple[Any, ...]:
    items: list[tuple[Any, ...]] = [
        (name, _setting(value)) for name, value in sorted(vars(module).items())
        if name not in _MODULE_INTERNALS
    ]  # fmt: skip  (a setting kept as ``self._power`` counts as ``self.power`` does)
    for store in (module._parameters, module._buffers):
        items.extend((name, _setting(value)) for name, value in sorted(store.items()))
    for name, sub in sorted(module._modules.items()):
        items.append((name, None if sub is None else (type(sub), _state(sub))))
    return tuple(items)


def _setting(value: Any) -> Any:
    """A plain value as itself, a tuple or list of plain values as a tuple, a small tensor
    by its values (:class:`_Values`), anything else (a large tensor, an array, an object)
    as :class:`_Same`."""
    if value is None or isinstance(value, _PLAIN):
        return value
    if isinstance(value, (tuple, list)) and all(
            v is None or isinstance(v, _PLAIN) for v in value):
        return (type(value), tuple(value))
    if isinstance(value, Tensor) and value.numel() <= SMALL_TENSOR:
        return _Values(value)
    return _Same(value)


_PLAIN = (bool, int, float, str)
#: tensors of at most this many elements are compared by value (two distances built from
#: one config hold equal but separate ``components``); larger ones by identity and version
SMALL_TENSOR = 1 << 16


class _Values:
    """Stands for a small tensor's values at the time the key was made (a copy)."""

    __slots__ = ("_copy",)

    def __init__(self, t: Tensor) -> None:
        self._copy = t.detach().clone()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Values):
            return NotImplemented
        a, b = self._copy, other._copy
        return (a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
                and bool(torch.equal(a, b)))

    __hash__ = None  # type: ignore[assignment]


class _Same:
    """Stands for one object in a key: equal only to a stand-in of the very same object,
    taken at the same version when it is a tensor. Held weakly where it can be."""

    __slots__ = ("_get", "_version")

    def __init__(self, obj: Any) -> None:
        try:
            self._get: Any = weakref.ref(obj)
        except TypeError:  # (an object without weak references: held until the read)
            self._get = lambda: obj
        self._version = obj._version if isinstance(obj, Tensor) else None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Same):
            return NotImplemented
        obj = self._get()
        return obj is not None and obj is other._get() and self._version == other._version

    __hash__ = None  # type: ignore[assignment]


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
