"""Seeded, batched image augmentation: random shifts and horizontal flips, and any
:class:`~dmlkit.data.augment_ops.AugmentPolicy` (random resized crops, flips, small
rotations / affine maps, colour jitter).

Everything draws from an explicit ``torch.Generator``; :class:`AugmentedDataset` seeds
one per batch from its own ``seed``, its epoch (:meth:`AugmentedDataset.set_epoch`; 0
unless set) and the batch's item indices, so a batch is augmented the same way whenever
it recurs (an interrupted and resumed run stays bit-identical) and no global random
state is touched.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from dmlkit.data.augment_ops import AugmentPolicy
from dmlkit.data.dataset import ArrayDataset


def random_shift_flip(
    images: Tensor,
    shift: int = 0,
    hflip: bool = False,
    generator: torch.Generator | None = None,
    fill: float = 0.0,
) -> Tensor:
    """Shift each image by a random offset and mirror it left-right with probability 1/2.

    Parameters
    ----------
    images : Tensor of shape (n, C, H, W)
    shift : int
        Largest shift in pixels; offsets ``dy, dx`` are uniform in ``[-shift, shift]``
        and uncovered pixels take ``fill``.
    hflip : bool
        Mirror a random half of the images (left-right).
    generator : torch.Generator, optional
        Source of randomness (a fresh unseeded one would not be reproducible: pass one).
    fill : float
        Value of pixels shifted in from outside the image.

    Returns
    -------
    Tensor of shape (n, C, H, W), same dtype as ``images`` (a new tensor).
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (n, C, H, W) tensor, got {shape}")
    if not isinstance(shift, int) or isinstance(shift, bool) or shift < 0:
        raise ValueError(f"shift must be an int >= 0, got {shift!r}")
    if not isinstance(hflip, bool):
        raise ValueError(f"hflip must be True or False, got {hflip!r} ({type(hflip).__name__})")
    n, c, h, w = images.shape
    if shift >= min(h, w):
        raise ValueError(f"shift must be smaller than the image side {min(h, w)}, got {shift}")
    out = images
    if shift > 0 and n > 0:
        padded = torch.nn.functional.pad(images, (shift, shift, shift, shift), value=fill)
        offsets = torch.randint(0, 2 * shift + 1, (2, n), generator=generator)  # (2, n)
        rows = offsets[0, :, None] + torch.arange(h)  # (n, H)
        cols = offsets[1, :, None] + torch.arange(w)  # (n, W)
        batch = torch.arange(n)[:, None, None]  # (n, 1, 1)
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (n, H, W, C)
        out = out.permute(0, 3, 1, 2).contiguous()  # (n, C, H, W)
    if hflip and n > 0:
        flip = torch.rand(n, generator=generator) < 0.5  # (n,)
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out if out is not images else images.clone()


def check_augment_shape(shift: int, shape: Sequence[int]) -> None:
    """Refuse a shift the images of per-item ``shape`` ``(C, H, W)`` cannot take (one of
    at least their smaller side would shift whole images out of view), naming the
    config setting (``data.augment_shift``): checked where the augmentation is built,
    before training starts, not in its first batch."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        raise ValueError(f"augmentation needs (n, C, H, W) images; the items have shape "
                         f"{shape} (no channel axis): store grey images as (n, 1, H, W) "
                         "(x[:, None]), or turn data.augment_shift, augment_hflip and "
                         "augment off")
    if len(shape) != 3:
        raise ValueError(f"augmentation needs (n, C, H, W) images; the items have shape "
                         f"{shape}: turn data.augment_shift, augment_hflip and augment off")
    side = min(shape[1:])
    if shift >= side:
        raise ValueError(
            f"data.augment_shift ({shift}) must be smaller than the images' side {side} "
            f"(images {shape[0]}x{shape[1]}x{shape[2]}): lower it (a few pixels, e.g. "
            f"{max(1, side // 8)})")


class AugmentedDataset(ArrayDataset):
    """An image :class:`ArrayDataset` whose batches are randomly shifted and flipped.

    ``x``, ``labels`` and ``len`` are the wrapped data's (samplers and validation see
    the originals); :meth:`get_batch` returns augmented images. The generator of a
    batch is seeded from ``seed``, the epoch and the batch's indices (CRC-32), so the
    same batch gets the same augmentation in the same epoch, a different batch (another
    epoch's shuffle) another. Items read one at a time (``dataset[i]``, as a plain
    ``DataLoader`` does) are batches of one: call :meth:`set_epoch` before each epoch to
    augment them anew every epoch (the epoch is 0 until set, and seeds as before).

    Parameters
    ----------
    data : ArrayDataset
        Images of shape ``(n, C, H, W)``.
    shift : int
        Largest random shift in pixels (0: none).
    hflip : bool
        Mirror a random half of each batch left-right.
    seed : int
    policy : AugmentPolicy or dict, optional
        Further augmentation applied after the shift and flip (a config's ``data.augment``).
    """

    def __init__(
        self,
        data: ArrayDataset,
        shift: int = 0,
        hflip: bool = False,
        seed: int = 0,
        policy: AugmentPolicy | dict | None = None,
    ) -> None:
        if not isinstance(data, ArrayDataset):
            raise TypeError(f"data must be an ArrayDataset, got {type(data).__name__}")
        if data.x.dim() == 3:
            raise ValueError(f"augmentation needs (n, C, H, W) images, got "
                             f"{tuple(data.x.shape)} (no channel axis): store grey images "
                             "as (n, 1, H, W) (x[:, None])")
        if data.x.dim() != 4:
            raise ValueError(f"augmentation needs (n, C, H, W) images, got {tuple(data.x.shape)}")
        if not isinstance(shift, int) or isinstance(shift, bool) or shift < 0:
            raise ValueError(f"shift must be an int >= 0, got {shift!r}")
        if not isinstance(hflip, bool):
            raise ValueError(f"hflip must be True or False, got {hflip!r} "
                             f"({type(hflip).__name__})")
        check_augment_shape(shift, data.x.shape[1:])
        super().__init__(data.x, data.labels, data.class_names)
        self.data = data
        self.shift = shift
        self.hflip = hflip
        self.seed = seed
        self.policy = AugmentPolicy.from_dict(policy)
        self.policy.check_channels(int(data.x.shape[1]))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Augment the items of epoch ``epoch`` (an int >= 0) differently from other
        epochs' (epoch 0 seeds as a dataset whose epoch was never set)."""
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self.epoch = epoch

    def generator_for(self, indices: Sequence[int] | Tensor) -> torch.Generator:
        """The generator that augments the batch of ``indices`` in the current epoch."""
        key = np.asarray(torch.as_tensor(indices, dtype=torch.long), dtype=np.int64).tobytes()
        salt = [self.seed] if self.epoch == 0 else [self.seed, -1 - self.epoch]
        salt = np.asarray(salt, dtype=np.int64).tobytes()
        g = torch.Generator()
        g.manual_seed(zlib.crc32(salt + key))  # the CPU generator keeps 32 seed bits
        return g

    def get_batch(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        x, labels = super().get_batch(indices)  # (b, C, H, W), (b,)
        generator = self.generator_for(indices)
        x = random_shift_flip(x, self.shift, self.hflip, generator)
        if self.policy.geometric or self.policy.colour:
            x = self.policy(x, generator)  # (b, C, H, W)
        return x, labels

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, labels = self.get_batch([index])
        return x[0], labels[0]


__all__ = ["random_shift_flip", "check_augment_shape", "AugmentedDataset"]
