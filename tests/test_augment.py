"""Seeded shift/flip augmentation and its wiring into training runs."""

from __future__ import annotations

import pytest
import torch

from dmlkit.config.schema import Config, DataConfig
from dmlkit.data.augment import AugmentedDataset, random_shift_flip
from dmlkit.data.dataset import ArrayDataset
from dmlkit.training.run import augmented


def images(n=6, c=2, h=9, w=7, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def shift_reference(img, dy, dx, fill=0.0):
    """``img`` (C, H, W) moved down by ``dy`` and right by ``dx``, loop by loop."""
    c, h, w = img.shape
    out = torch.full_like(img, fill)
    for i in range(h):
        for j in range(w):
            si, sj = i - dy, j - dx
            if 0 <= si < h and 0 <= sj < w:
                out[:, i, j] = img[:, si, sj]
    return out


def test_every_output_is_a_shift_of_at_most_shift_pixels_maybe_flipped():
    x = images()
    out = random_shift_flip(x, shift=2, hflip=True, generator=torch.Generator().manual_seed(3))
    assert out.shape == x.shape and out.dtype == x.dtype
    seen_flip = set()
    for k in range(x.shape[0]):
        matches = [
            (dy, dx, flip)
            for flip in (False, True)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(out[k], shift_reference(x[k].flip(-1) if flip else x[k], dy, dx))
        ]
        assert len(matches) == 1, (k, matches)
        seen_flip.add(matches[0][2])
    assert seen_flip == {False, True}  # with 6 images and seed 3, both happen


def test_shift_covers_all_offsets_and_is_seeded():
    x = torch.zeros(400, 1, 5, 5)
    x[:, 0, 2, 2] = 1.0  # a centred dot: its new place is the offset
    out = random_shift_flip(x, shift=1, generator=torch.Generator().manual_seed(0))
    where = out[:, 0].flatten(1).argmax(1)  # (n,)
    assert set(where.tolist()) == {r * 5 + c for r in (1, 2, 3) for c in (1, 2, 3)}
    again = random_shift_flip(x, shift=1, generator=torch.Generator().manual_seed(0))
    other = random_shift_flip(x, shift=1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again) and not torch.equal(out, other)


def test_no_augmentation_is_a_copy_and_input_untouched():
    x = images()
    before = x.clone()
    out = random_shift_flip(x, shift=0, hflip=False)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    random_shift_flip(x, shift=3, hflip=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, before)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"shift": -1}, "shift"), ({"shift": 1.5}, "shift"), ({"shift": 7}, "shift")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        random_shift_flip(images(), **kwargs)
    with pytest.raises(ValueError, match="images"):
        random_shift_flip(torch.rand(3, 7, 7))


def test_augmented_dataset_batches_are_deterministic_per_batch():
    data = ArrayDataset(images(n=10), torch.arange(10) % 3)
    aug = AugmentedDataset(data, shift=2, hflip=True, seed=5)
    assert len(aug) == 10 and torch.equal(aug.labels, data.labels) and torch.equal(aug.x, data.x)
    xa, ya = aug.get_batch([4, 1, 7])
    xb, _ = aug.get_batch([4, 1, 7])
    assert torch.equal(xa, xb) and torch.equal(ya, data.labels[[4, 1, 7]])
    assert not torch.equal(xa, data.x[[4, 1, 7]])
    x_other, _ = AugmentedDataset(data, shift=2, hflip=True, seed=6).get_batch([4, 1, 7])
    assert not torch.equal(xa, x_other)
    with pytest.raises(ValueError, match="images"):
        AugmentedDataset(ArrayDataset(torch.rand(4, 3), torch.arange(4)), shift=1)
    with pytest.raises(TypeError, match="ArrayDataset"):
        AugmentedDataset(images(), shift=1)  # type: ignore[arg-type]


def test_config_round_trip_and_wiring():
    cfg = Config.from_yaml("data: {name: digits, augment_shift: 2, augment_hflip: true}\n")
    assert cfg.data.augment_shift == 2 and cfg.data.augment_hflip is True
    assert Config.from_yaml(cfg.to_yaml()).data == cfg.data
    data = ArrayDataset(images(n=4, c=1, h=8, w=8), torch.arange(4))
    wrapped = augmented(data, cfg)
    assert isinstance(wrapped, AugmentedDataset) and wrapped.shift == 2 and wrapped.hflip
    assert augmented(data, Config()) is data
    with pytest.raises(ValueError, match="augment_shift"):
        DataConfig(augment_shift=-1)
