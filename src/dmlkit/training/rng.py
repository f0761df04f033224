"""Random-number state: seeding a scope, and capturing / restoring it for exact resumes."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from dmlkit.config.field_rules import MAX_SEED


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


#: the largest seed a run takes: its components seed with offsets from it (``seed + 1``,
#: ``seed + epoch``) that must stay within what torch's generators take (below 2**64)
#: the seeds torch's generators take (``torch.manual_seed``)
_TORCH_SEEDS = range(-(2**63), 2**64)


def check_seed(seed: Any, where: str = "seed") -> None:
    """A ``ValueError`` naming ``where`` (``"training.seed"``, ``"--seed"``) unless
    ``seed`` is an integer in ``0..MAX_SEED`` (2**63 - 1)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not (
            0 <= seed <= MAX_SEED):
        raise ValueError(f"{where} must be an integer from 0 to {MAX_SEED} (2**63 - 1); "
                         f"got {seed!r}: use a seed in that range")


@contextmanager
def rng_scope(seed: int) -> Iterator[None]:
    """Seed torch, numpy and ``random`` inside the block; restore the caller's states after.

    Training draws (weight init, dropout, components that use global generators) are thus
    reproducible from ``seed`` without leaking into the caller's random state. A seed
    torch's generators do not take (outside ``-2**63..2**64 - 1``) is a ``ValueError``.
    """
    if int(seed) not in _TORCH_SEEDS:
        raise ValueError(f"seed {seed} is outside the range torch's generators take "
                         f"(-2**63 to 2**64 - 1); use a seed from 0 to {MAX_SEED}")
    saved = get_rng_state()
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        set_rng_state(saved)


__all__ = ["MAX_SEED", "check_seed", "get_rng_state", "set_rng_state", "rng_scope"]
