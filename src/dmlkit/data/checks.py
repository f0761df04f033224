"""Checks of loaded inputs, so bad data is refused (or flagged) at load, not mid-training."""

from __future__ import annotations

import warnings

import torch

from dmlkit._checks import first_few
from dmlkit.data.dataset import ArrayDataset

#: largest absolute input value that passes without a warning
MAX_ABS_INPUT = 1e4


def check_inputs(data: ArrayDataset, source: str) -> ArrayDataset:
    """Refuse inputs no model can learn from; warn about inputs far from unit scale.

    Parameters
    ----------
    data : ArrayDataset
        Loaded inputs ``x`` of shape ``(n, ...)`` and labels.
    source : str
        The file or dataset name, for the messages.

    Raises
    ------
    ValueError
        ``x`` holds no items, is 1-D (one value per item: a feature axis is missing), or
        holds NaN or infinite values (the message counts the items and names the first
        few rows, as :func:`~dmlkit.apps.embedding.check_finite_rows` does for arrays
        handed in).

    Warns
    -----
    UserWarning
        When the largest ``|x|`` exceeds :data:`MAX_ABS_INPUT` (float or integer inputs):
        networks trained on such inputs saturate and train to chance, so the inputs
        should be standardized.
    """
    x = data.x
    if x.dim() < 2:
        raise ValueError(
            f"{source}: x has shape {tuple(x.shape)}, one value per item; inputs need a "
            "feature axis: (n, features) or images (n, C, H, W) (reshape a single feature "
            "to (n, 1))")
    if x.shape[0] == 0:
        raise ValueError(f"{source} holds no items (x has shape {tuple(x.shape)}): nothing to "
                         "learn from or evaluate")
    if x.numel() == 0 or x.dtype == torch.bool or x.is_complex():
        return data
    if x.is_floating_point():
        finite = torch.isfinite(x.flatten(1)).all(dim=1)  # (n,)
        if not bool(finite.all()):
            bad = (~finite).nonzero().flatten().tolist()  # rows holding a NaN or an inf
            shown = first_few(bad)
            raise ValueError(
                f"{source}: {len(bad)} of {x.shape[0]} items hold NaN or infinite values "
                f"({'row' if len(bad) == 1 else 'rows'} {shown}); drop those items or fill "
                "in the missing values first")
    peak = max(abs(float(x.max())), abs(float(x.min())))  # integer inputs too
    if peak > MAX_ABS_INPUT:
        warnings.warn(
            f"{source}: inputs reach |x| = {peak:.3g}; networks saturate on inputs this far "
            "from unit scale and train to chance: standardize them (subtract the mean, "
            "divide by the standard deviation) or scale them to [0, 1]",
            UserWarning, stacklevel=3)
    return data


def rescale_hint(lo: float, hi: float, low: float, high: float) -> str | None:
    """How to bring inputs over ``[lo, hi]`` into an expected range ``[low, high]``
    within ``[0, 1]`` when they are non-negative and far above it: ``/ 255`` only where
    the maximum is plausibly 8-bit (``128 < hi <= 255``), else division by their maximum
    (digits in 0..16 are not 8-bit pixels); ``None`` when neither applies."""
    if lo < 0 or low < -1e-6 or high > 1.0 + 1e-6 or hi <= 2.0:
        return None
    if 128.0 < hi <= 255.0:
        return "8-bit pixel values: divide them by 255"
    return f"divide them by their maximum, {hi:.4g}"


def check_image_range(x: torch.Tensor, expected: tuple[float, float], source: str,
                      model: str) -> None:
    """Warn when float images ``x`` range beyond the values ``model`` takes
    (``expected``, e.g. ``(0, 1)``) by more than half that range's width, as 8-bit values
    0..255 or -1..1 do: the model trains silently worse on them. The message names
    ``source`` (where the data came from) and the fix. Integer inputs are scaled (or
    warned about) by the loaders; they pass here."""
    if x.numel() == 0 or not x.is_floating_point():
        return
    low, high = float(expected[0]), float(expected[1])
    span = high - low
    lo, hi = float(x.min()), float(x.max())
    if lo >= low - 0.5 * span and hi <= high + 0.5 * span:
        return
    hint = rescale_hint(lo, hi, low, high)
    fix = ("divide them by 255 (x / 255), or store 8-bit pixels as uint8, which dmlkit "
           "scales" if hint is not None and "255" in hint else hint if hint is not None else
           "(x + 1) / 2 for values in [-1, 1]" if lo < low and hi <= high + 0.5 * span
           else f"scale them into [{low:g}, {high:g}]")
    warnings.warn(
        f"{source}: training images range over [{lo:.4g}, {hi:.4g}], but model {model!r} "
        f"takes images in [{low:g}, {high:g}] (it normalizes them as its pretrained "
        f"weights expect, and trains much worse on others): {fix}", UserWarning,
        stacklevel=3)


__all__ = ["MAX_ABS_INPUT", "check_image_range", "check_inputs", "rescale_hint"]
