"""Checks of loaded inputs, so bad data is refused (or flagged) at load, not mid-training."""

from __future__ import annotations

import warnings

import torch

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
        ``x`` is 1-D (one value per item: a feature axis is missing), or holds NaN or
        infinite values (the message counts them and names the first row).

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
    if x.numel() == 0 or x.dtype == torch.bool or x.is_complex():
        return data
    if x.is_floating_point():
        finite = torch.isfinite(x.flatten(1)).all(dim=1)  # (n,)
        if not bool(finite.all()):
            bad = (~finite).nonzero().flatten()
            raise ValueError(
                f"{source}: {bad.numel()} of {x.shape[0]} items hold NaN or infinite values "
                f"(first: row {int(bad[0])}); clean or drop them before training")
    peak = max(abs(float(x.max())), abs(float(x.min())))  # integer inputs too
    if peak > MAX_ABS_INPUT:
        warnings.warn(
            f"{source}: inputs reach |x| = {peak:.3g}; networks saturate on inputs this far "
            "from unit scale and train to chance: standardize them (subtract the mean, "
            "divide by the standard deviation) or scale them to [0, 1]",
            UserWarning, stacklevel=3)
    return data


__all__ = ["MAX_ABS_INPUT", "check_inputs"]
