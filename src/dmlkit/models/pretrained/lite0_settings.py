"""Checks of ``efficientnet_lite0``'s settings: its resize and pooling at every resolution
it embeds images at (``resolution`` and the extra ``scales``), the backbone's learning-rate
scale, and flat inputs it cannot reshape: one-line ``ValueError``\\ s naming the setting
and what to do."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from dmlkit._checks import is_int

MIN_RESOLUTION = 32


def check_scales(scales: Any, resolution: int) -> tuple[int, ...]:
    """``scales`` as a tuple of ints: extra input resolutions, each an int >=
    :data:`MIN_RESOLUTION`, distinct, none equal to ``resolution``.

    Raises
    ------
    ValueError
        Naming the offending value and what to do.
    """
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence):
        raise ValueError(f"scales must be a list of extra resolutions (ints >= "
                         f"{MIN_RESOLUTION}), e.g. [96], got {scales!r}")
    bad = [s for s in scales if not is_int(s) or s < MIN_RESOLUTION]
    if bad:
        raise ValueError(f"scales must be ints >= {MIN_RESOLUTION} (extra resolutions), got "
                         f"{bad[0]!r} in {list(scales)}")
    out = tuple(int(s) for s in scales)
    if resolution in out:
        raise ValueError(f"scales {list(out)} repeat resolution {resolution}, which is always "
                         f"used: remove {resolution} from scales")
    if len(set(out)) != len(out):
        raise ValueError(f"scales must be distinct, got {list(out)}: remove the repeated ones")
    return out


def _which(side: int, resolution: int) -> str:
    """How a message names the input side ``side``: the model's ``resolution``, or one of
    its ``scales``."""
    return "resolution" if side == resolution else "scale"


def check_pixels(pixels: int, resolutions: Sequence[int], in_channels: int) -> None:
    """Refuse ``pixels`` finer than the smallest of ``resolutions`` (the images the pixel
    group is pooled from): cells would repeat values."""
    side = min(resolutions)
    if pixels > side:
        raise ValueError(
            f"pixels {pixels} is finer than the {side} x {side} image the model pools it "
            f"from ({_which(side, resolutions[0])} {side}): cells would repeat values and add "
            f"{in_channels * pixels**2} features to the head's input; use pixels <= {side}, "
            f"or a higher {'resolution' if len(resolutions) == 1 else 'resolution and scales'}")


def check_grid(grid: int, grid_taps: Sequence[int], sides: dict[int, list[int]]) -> None:
    """Refuse a ``grid`` finer than a grid tap's map at the smallest resolution
    (``sides``: resolution -> the side of each tap's map there)."""
    resolution = min(sides)
    map_sides = sides[resolution]
    which = _which(resolution, next(iter(sides)))
    coarse = [t for t in grid_taps if map_sides[t] < grid]
    if coarse:
        side = min(map_sides[t] for t in grid_taps)
        raise ValueError(
            f"grid {grid} is finer than block {coarse[0]}'s {map_sides[coarse[0]]} x "
            f"{map_sides[coarse[0]]} map at {which} {resolution}: cells would repeat "
            f"values; use grid <= {side}, a higher "
            f"{'resolution' if len(sides) == 1 else 'resolution and scales'}, "
            f"or other grid_taps")


def check_lr_scale(scale: Any) -> None:
    """Refuse a ``backbone_lr_scale`` that is not a finite number > 0 (NaN or infinity
    would make the backbone's learning rate, and then its weights, non-finite)."""
    if (isinstance(scale, bool) or not isinstance(scale, numbers.Real)
            or not (math.isfinite(scale) and scale > 0)):
        raise ValueError(f"backbone_lr_scale must be a finite number > 0 (the backbone's "
                         f"learning rate over the head's, e.g. 0.1), got {scale!r}")


def flat_input_problem(values: int, channels: int, feature_dim: int,
                       hw: tuple[int, int] | None) -> str:
    """Why a flat input row of ``values`` values is neither ``feature_dim`` cached features
    nor ``channels x H x W`` pixels of the model's image size ``hw`` (``None``: not set),
    and how to give the image size (as the shape check of a new run's config words it)."""
    side = math.isqrt(values // channels)
    example = (f"e.g. --set model.image_size={side} for {channels} x {side} x {side} images"
               if values == channels * side * side and side >= 8 else
               "--set model.image_size=[height,width]")
    fix = (f"set model.image_size to the images' side or [height, width] ({example}), or "
           "store the rows as (n, C, H, W) images")
    if values == feature_dim:  # (forward takes such rows; data to train on are images)
        return (f"flat input of {values} values, as wide as the backbone's features: the "
                "model reads a dataset's rows as images and computes (and caches) their "
                "features itself, so a dataset of feature rows is not one it takes; give "
                f"the images, and for flat pixel rows {fix}")
    if hw is None:
        return (f"flat input of {values} values: expected {feature_dim} cached features or "
                f"{channels} x H x W pixels, and model.image_size is not set; {fix}")
    return (f"flat input of {values} values: expected {feature_dim} cached features or "
            f"{channels} x {hw[0]} x {hw[1]} = {channels * hw[0] * hw[1]} pixels "
            f"(model.image_size={list(hw)}); {fix}")


__all__ = ["MIN_RESOLUTION", "check_grid", "check_lr_scale", "check_pixels", "check_scales",
           "flat_input_problem"]
