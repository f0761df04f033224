"""The resize of the pretrained backbones' inputs: bilinear, antialiased where a side
shrinks, written as two matrix products (which ONNX export takes)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


@functools.lru_cache(maxsize=32)
def _antialias_weights64(n_in: int, n_out: int) -> Tensor:
    """:func:`antialias_weights` in float64, computed once per size: an ordinary tensor
    (made outside inference mode, whatever mode the first call came in), never handed
    out itself, so no caller can change it."""
    with torch.inference_mode(False), torch.no_grad():
        scale = n_in / n_out
        support = max(scale, 1.0)  # filter half-width, in input samples
        centres = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale  # (n_out,)
        taps = torch.arange(n_in, dtype=torch.float64) + 0.5  # (n_in,)
        w = (1.0 - ((taps[None] - centres[:, None]) / support).abs()).clamp(min=0.0)
        return w / w.sum(dim=1, keepdim=True)  # (n_out, n_in)


def antialias_weights(n_in: int, n_out: int) -> Tensor:
    """``(n_out, n_in)`` weights of a bilinear resize of one axis from ``n_in`` to ``n_out``
    samples (half-pixel centres), antialiased: shrinking, the triangle filter widens to
    the step between output samples, so every input sample counts (torch's
    ``F.interpolate(..., mode="bilinear", antialias=True)`` and Pillow's bilinear resize
    weigh alike); enlarging, it is plain linear interpolation. Rows sum to 1.

    A new float32 tensor every call (the float64 weights are cached per size): one made
    under ``torch.inference_mode()`` is used there, and a later resize of images that
    need gradients (integrated gradients) gets weights autograd can save.
    """
    with torch.inference_mode(False):
        return _antialias_weights64(n_in, n_out).float()  # (n_out, n_in), a copy


def resize_images(x: Tensor, side: int, antialias: bool = True) -> Tensor:
    """Images ``(n, C, H, W)`` -> ``(n, C, side, side)``, bilinear.

    Where no side shrinks, this is ``F.interpolate(mode="bilinear")`` as it always was
    (bit for bit, so cached features of enlarged images stay valid). Where one does, the
    resize is antialiased (:func:`antialias_weights`): plain bilinear reads 2 x 2 pixels
    per output pixel and skips the rest, which aliases fine patterns of large images.
    It is written as two matrix products, which ONNX export takes (torch's own
    ``antialias=True`` it does not). ``antialias=False``: plain bilinear at every size,
    the resize of dmlkit before it antialiased (what runs trained then embed with)."""
    h, w = (int(s) for s in x.shape[-2:])
    if (h, w) == (side, side):
        return x
    if max(h, w) <= side or not antialias:
        return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    rows = antialias_weights(h, side).to(x.device, x.dtype)  # (side, H)
    cols = antialias_weights(w, side).to(x.device, x.dtype)  # (side, W)
    return rows @ x @ cols.T  # (n, C, side, side)


__all__ = ["antialias_weights", "resize_images"]
