"""Random-number state: seeding a scope, and capturing / restoring it for exact resumes."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def get_rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and Python ``random`` global states, as plain values.

    Everything is a tensor, list, tuple, int, float, str or None, so a checkpoint that
    holds it loads with ``torch.load(..., weights_only=True)``.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [
            name,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "python": list(_listify(random.getstate())),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _listify(value: Any) -> Any:
    return [_listify(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tuplify(value: Any) -> Any:
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(_tuplify(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def rng_scope(seed: int) -> Iterator[None]:
    """Seed torch, numpy and ``random`` inside the block; restore the caller's states after.

    Training draws (weight init, dropout, components that use global generators) are thus
    reproducible from ``seed`` without leaking into the caller's random state.
    """
    saved = get_rng_state()
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        set_rng_state(saved)


__all__ = ["get_rng_state", "set_rng_state", "rng_scope"]
