"""A module's train / eval modes, set for a block and restored after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the ``with`` block; afterwards every submodule's
    ``training`` flag is what it was before, even where a submodule's mode differed from
    its parent's (``module.train(was_training)`` would overwrite those)."""
    modes = [(m, m.training) for m in module.modules()]  # parents before their children
    module.eval()
    try:
        yield module
    finally:
        for m, mode in modes:
            m.train(mode)  # (a parent's train() resets its children, restored next)


__all__ = ["eval_mode"]
