"""Checks of the batch an embedder's ``forward`` takes, so that a numpy array or a single
row without its batch dimension is an error saying what to pass, not one from inside
torch."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def check_batch(x: Any, model: str, expected: str) -> Tensor:
    """``x`` itself when it is a tensor.

    Parameters
    ----------
    x : Any
        What the model was called with.
    model : str
        The model's name, for the message.
    expected : str
        The shape the model takes, e.g. ``"(n, 8)"``.

    Raises
    ------
    TypeError
        When ``x`` is not a ``torch.Tensor`` (a numpy array, a list).
    """
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{model} takes a torch.Tensor of shape {expected}, got "
            f"{type(x).__name__}; convert it with torch.as_tensor(x)"
        )
    return x


def check_rows(x: Any, model: str, in_features: int) -> Tensor:
    """``x`` as rows ``(n, in_features)``: a tensor of two or more dimensions, flattened
    after the batch dimension.

    Raises
    ------
    TypeError
        When ``x`` is not a tensor.
    ValueError
        When ``x`` has fewer than two dimensions or rows of another width.
    """
    expected = f"(n, {in_features})"
    x = check_batch(x, model, expected)
    if x.dim() < 2:
        raise ValueError(
            f"{model} takes a batch of shape {expected}, got shape "
            f"{tuple(x.shape)}; for one row add a batch dimension (x.unsqueeze(0))"
        )
    x = x.flatten(1)  # (n, features)
    if x.shape[1] != in_features:
        raise ValueError(f"expected {in_features} input features, got {x.shape[1]}")
    return x


__all__ = ["check_batch", "check_rows"]
