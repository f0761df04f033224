"""A module's train / eval modes, set for a block and restored after; and the mode of
building models whose whole state is loaded from a saved one right after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

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


_SAVED_STATE_FOLLOWS: ContextVar[bool] = ContextVar("saved_state_follows", default=False)


@contextmanager
def saved_state_follows(follows: bool = True) -> Iterator[None]:
    """Models built inside the ``with`` block get their whole state dict from a saved one
    right after (a run's ``model.pt``, strictly): a model that loads pretrained weights
    when it is built may leave them unloaded (:func:`building_for_saved_state`), so a
    saved run loads without the weights file or package it was trained from.
    ``follows=False``: they do not (the block builds models as outside it)."""
    token = _SAVED_STATE_FOLLOWS.set(follows)
    try:
        yield
    finally:
        _SAVED_STATE_FOLLOWS.reset(token)


def building_for_saved_state() -> bool:
    """Whether models built now get their whole state from a saved one right after
    (inside :func:`saved_state_follows`)."""
    return _SAVED_STATE_FOLLOWS.get()


__all__ = ["building_for_saved_state", "eval_mode", "saved_state_follows"]
