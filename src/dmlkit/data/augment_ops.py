"""Batched, seeded image augmentations on tensors: random resized crops, flips, small
rotations / affine maps, and colour jitter (brightness and contrast of grey and 3-channel
images, saturation of 3-channel ones).

Every function takes ``(n, C, H, W)`` images and a ``torch.Generator`` and returns a new
tensor of the same shape; each image gets its own random parameters. Geometric maps are
one ``affine_grid`` + ``grid_sample`` (bilinear, zero padding), so a crop, a rotation and
a translation cost one resampling together. :class:`AugmentPolicy` bundles the settings
(as in a config's ``data.augment`` mapping) and applies them in a fixed order.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)  # (n,)


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (n, C, H, W) tensor, got {shape}")


def _is_number(value: Any) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def _range(name: str, value: Any, low: float, high: float) -> tuple[float, float]:
    """``value`` as a pair ``(a, b)`` of numbers with ``low <= a <= b <= high``."""
    if not (isinstance(value, (list, tuple)) and len(value) == 2
            and all(map(_is_number, value)) and low <= value[0] <= value[1] <= high):
        raise ValueError(f"data.augment.{name} must be a pair [a, b] of numbers with "
                         f"{low} <= a <= b <= {high}; got {value!r} ({type(value).__name__})")
    return float(value[0]), float(value[1])


def _number(name: str, value: Any, high: float, high_open: bool) -> float:
    """``value`` as a number in ``[0, high]`` (``[0, high)`` with ``high_open``)."""
    if not (_is_number(value) and 0 <= value and (value < high if high_open else value <= high)):
        raise ValueError(f"data.augment.{name} must be a number in [0, {high}"
                         f"{')' if high_open else ']'}; got {value!r} ({type(value).__name__})")
    return float(value)


def random_affine_matrices(
    n: int,
    generator: torch.Generator | None,
    crop_scale: tuple[float, float] = (1.0, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    degrees: float = 0.0,
    translate: float = 0.0,
    hflip: bool = False,
    vflip: bool = False,
    size: tuple[int, int] | None = None,
) -> Tensor:
    """Per-image ``(n, 2, 3)`` matrices mapping output to input coordinates in ``[-1, 1]``.

    A random resized crop keeps a fraction in ``crop_scale`` of the area with aspect
    ratio (width / height in pixels, log-uniform) in ``crop_ratio``, narrowed where a side
    would leave the image (so ``crop_scale = (1, 1)`` is the whole image), at a random
    place inside the image; then a rotation by up to ``degrees`` (in pixels, so a
    non-square image turns without shear), a shift by up to ``translate`` of the side,
    and flips of a random half of the images. ``size`` is the images' ``(H, W)``
    (``None``: square images; square sizes all give the same maps).
    """
    height, width = (1, 1) if size is None else (int(size[0]), int(size[1]))
    aspect = width / height  # (pixel ratio = normalised ratio * aspect)
    area = _uniform(n, *crop_scale, generator)  # (n,)
    log_ratio = _uniform(n, math.log(crop_ratio[0]), math.log(crop_ratio[1]), generator)
    ratio = log_ratio.exp() / aspect if aspect != 1 else log_ratio.exp()  # normalised
    ratio = torch.minimum(torch.maximum(ratio, area), 1 / area)  # both sides <= 1
    sx = (area * ratio).sqrt()  # (n,) crop width / image width
    sy = (area / ratio).sqrt()  # (n,)
    cx = (1 - sx) * _uniform(n, -1.0, 1.0, generator)  # crop centre inside the image
    cy = (1 - sy) * _uniform(n, -1.0, 1.0, generator)
    angle = _uniform(n, -degrees, degrees, generator) * (math.pi / 180)
    tx = _uniform(n, -translate, translate, generator) * 2  # [-1, 1] spans the side
    ty = _uniform(n, -translate, translate, generator) * 2
    fx = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if hflip else 1.0
    fy = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if vflip else 1.0
    cos, sin = angle.cos(), angle.sin()
    # the rotation in pixels, D^-1 R D with D = diag(W / 2, H / 2) (the identity if square)
    sin_xy = sin / aspect if aspect != 1 else sin
    sin_yx = sin * aspect if aspect != 1 else sin
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sx * cos * fx
    theta[:, 0, 1] = -sx * sin_xy * fy
    theta[:, 1, 0] = sy * sin_yx * fx
    theta[:, 1, 1] = sy * cos * fy
    theta[:, 0, 2] = cx + tx
    theta[:, 1, 2] = cy + ty
    return theta  # (n, 2, 3)


def warp(images: Tensor, theta: Tensor) -> Tensor:
    """Resample ``(n, C, H, W)`` images through ``(n, 2, 3)`` affine maps (bilinear, zeros)."""
    _check_images(images)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def color_jitter(
    images: Tensor,
    generator: torch.Generator | None,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
) -> Tensor:
    """Scale brightness, contrast (around each image's mean grey) and saturation (around
    each pixel's grey) by factors uniform in ``[1 - s, 1 + s]``; brightness and contrast
    of grey (1-channel) and 3-channel images, saturation of 3-channel ones only.

    Values are clamped to each image's own range widened to ``[0, 1]`` (``[min(0, lo),
    max(1, hi)]``), so images in ``[0, 1]`` are clamped to it while images stored in
    another range (``0..255`` floats, standardized values) keep it."""
    _check_images(images)
    channels = images.shape[1]
    if channels not in (1, 3) or (channels == 1 and saturation > 0):
        need = "3-channel" if channels == 1 else "grey (1-channel) or 3-channel"
        raise ValueError(f"colour jitter{' of saturation' if channels == 1 else ''} needs "
                         f"{need} images, got {channels} channel(s)")
    n = images.shape[0]
    if channels == 3:
        weights = images.new_tensor([0.299, 0.587, 0.114])[None, :, None, None]  # (1,3,1,1)
    else:
        weights = images.new_ones(1, 1, 1, 1)
    low = images.amin(dim=(1, 2, 3), keepdim=True).clamp(max=0.0)  # (n, 1, 1, 1)
    high = images.amax(dim=(1, 2, 3), keepdim=True).clamp(min=1.0)
    out = images
    if brightness > 0:
        out = out * _uniform(n, 1 - brightness, 1 + brightness, generator)[:, None, None, None]
    if contrast > 0:
        mean = (out * weights).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)  # (n,1,1,1)
        factor = _uniform(n, 1 - contrast, 1 + contrast, generator)[:, None, None, None]
        out = mean + factor * (out - mean)
    if saturation > 0:
        grey = (out * weights).sum(1, keepdim=True)  # (n, 1, H, W)
        factor = _uniform(n, 1 - saturation, 1 + saturation, generator)[:, None, None, None]
        out = grey + factor * (out - grey)
    return torch.minimum(torch.maximum(out, low), high)


@dataclass
class AugmentPolicy:
    """Augmentation settings (a config's ``data.augment`` mapping); all off by default.

    Attributes
    ----------
    crop_scale : (float, float)
        Area fraction of the random resized crop (``(1, 1)``: no crop).
    crop_ratio : (float, float)
        Aspect-ratio range of the crop.
    degrees : float
        Largest rotation, in degrees.
    translate : float
        Largest shift, as a fraction of the side.
    hflip, vflip : bool
        Mirror a random half of each batch left-right / upside-down.
    brightness, contrast, saturation : float
        Colour jitter strengths: brightness and contrast of grey and 3-channel images,
        saturation of 3-channel ones (grey images refuse it: it would do nothing).
    """

    crop_scale: tuple[float, float] = (1.0, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    degrees: float = 0.0
    translate: float = 0.0
    hflip: bool = False
    vflip: bool = False
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0

    def __post_init__(self) -> None:
        """Every setting type- and range-checked, errors naming its ``data.augment`` key."""
        self.crop_scale = _range("crop_scale", self.crop_scale, 0.01, 1.0)
        self.crop_ratio = _range("crop_ratio", self.crop_ratio, 0.1, 10.0)
        self.degrees = _number("degrees", self.degrees, 180, high_open=False)
        for name in ("translate", "brightness", "contrast", "saturation"):
            setattr(self, name, _number(name, getattr(self, name), 1, high_open=True))
        for name in ("hflip", "vflip"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"data.augment.{name} must be true or false; got {value!r} "
                                 f"({type(value).__name__})")

    @classmethod
    def from_dict(cls, spec: dict[str, Any] | AugmentPolicy | None) -> AugmentPolicy:
        """A policy from a config mapping; unknown keys are errors naming the key."""
        if spec is None:
            return cls()
        if isinstance(spec, AugmentPolicy):
            return spec
        known = set(cls.__dataclass_fields__)
        if not isinstance(spec, dict):
            raise TypeError(f"data.augment must be a mapping of augmentation settings, got "
                            f"{spec!r} ({type(spec).__name__}); its keys: "
                            f"{', '.join(cls.__dataclass_fields__)}; e.g. data.augment: "
                            "{crop_scale: [0.7, 1.0], hflip: true}")
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(f"unknown data.augment key(s) {unknown}; known: {sorted(known)}")
        return cls(**spec)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def geometric(self) -> bool:
        return (self.crop_scale != (1.0, 1.0) or self.degrees > 0 or self.translate > 0
                or self.hflip or self.vflip)  # fmt: skip

    @property
    def colour(self) -> bool:
        return self.brightness > 0 or self.contrast > 0 or self.saturation > 0

    def check_channels(self, channels: int) -> None:
        """Refuse colour jitter for images other than grey or 3-channel ones, and
        ``saturation`` for grey (1-channel) images: it would have no effect."""
        if self.colour and channels not in (1, 3):
            raise ValueError(
                f"data.augment colour jitter (brightness, contrast, saturation) needs grey "
                f"(1-channel) or 3-channel images, the data has {channels} channels; remove "
                "those settings (the geometric ones apply to any channels)")
        if channels == 1 and self.saturation > 0:
            raise ValueError(
                f"data.augment.saturation ({self.saturation}) has no effect on grey "
                "(1-channel) images; remove it (brightness and contrast do apply)")

    def __call__(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        """Augment ``(n, C, H, W)`` images: geometry first, then colour (grey and 3-channel
        images; see :meth:`check_channels` for saturation of grey ones)."""
        _check_images(images)
        self.check_channels(images.shape[1])
        out = images.float()
        if self.geometric and images.shape[0] > 0:
            theta = random_affine_matrices(
                images.shape[0], generator, self.crop_scale, self.crop_ratio,
                self.degrees, self.translate, self.hflip, self.vflip,
                size=(images.shape[2], images.shape[3]),
            )  # fmt: skip
            out = warp(out, theta)  # (n, C, H, W)
        if self.colour and images.shape[0] > 0:
            out = color_jitter(out, generator, self.brightness, self.contrast, self.saturation)
        return out if out is not images else images.clone()


__all__ = ["AugmentPolicy", "random_affine_matrices", "warp", "color_jitter"]
