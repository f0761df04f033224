"""Image augmentation keeps the data's value range and pixel geometry, refuses settings
and layouts it cannot honour, varies per epoch through a plain DataLoader; data specs
and ``training.val_classes`` report the specific problem."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from dmlkit.config.schema import Config
from dmlkit.data.augment import AugmentedDataset
from dmlkit.data.augment_ops import AugmentPolicy, color_jitter, random_affine_matrices
from dmlkit.data.dataset import ArrayDataset


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# colour jitter keeps the data's own range


def test_colour_jitter_keeps_images_stored_in_0_255():
    x = 255 * torch.rand(8, 3, 6, 6, generator=gen())
    x[:, :, 0, 0] = 255.0  # each image spans 0..255, as pixels stored as floats do
    x[:, :, 0, 1] = 0.0
    out = color_jitter(x, gen(1), brightness=0.05)
    factor = 0.95 + 0.1 * torch.rand(8, generator=gen(1))
    expected = (x * factor[:, None, None, None]).clamp(0, 255)  # within the images' range
    assert float(out.max()) == 255.0
    assert torch.allclose(out, expected, atol=1e-3)


def test_colour_jitter_keeps_standardized_images_below_zero():
    x = torch.randn(8, 3, 6, 6, generator=gen())
    out = color_jitter(x, gen(2), contrast=0.3)
    assert float(out.min()) < -0.5


def test_colour_jitter_of_unit_range_images_still_clamps_to_0_1():
    x = torch.rand(8, 3, 6, 6, generator=gen())
    out = color_jitter(x, gen(1), brightness=0.9)
    factor = 0.1 + 1.8 * torch.rand(8, generator=gen(1))
    assert torch.allclose(out, (x * factor[:, None, None, None]).clamp(0, 1), atol=1e-6)
    assert float(out.max()) <= 1.0 and float(out.max()) == 1.0


# rotations and crops in pixels


def _pixel_linear(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    d = torch.diag(torch.tensor([width / 2, height / 2]))
    return d @ theta[:, :, :2] @ torch.linalg.inv(d)  # (n, 2, 2)


def test_rotation_of_a_wide_image_is_a_rotation_in_pixels():
    theta = random_affine_matrices(50, gen(4), degrees=40, size=(16, 64))
    a = _pixel_linear(theta, 16, 64)
    eye = torch.eye(2).expand(50, 2, 2)
    assert torch.allclose(a @ a.transpose(1, 2), eye, atol=1e-5)
    angles = torch.atan2(a[:, 1, 0], a[:, 0, 0]).abs() * 180 / math.pi
    assert float(angles.max()) > 30


def test_a_rotated_wide_line_keeps_its_angle():
    img = torch.zeros(1, 1, 16, 64)
    img[0, 0, 7:9, 8:56] = 1.0  # a horizontal bar
    angle = math.radians(30)
    policy = AugmentPolicy(degrees=30)
    # find a seed drawing close to +-30 degrees
    for seed in range(200):
        theta = random_affine_matrices(1, gen(seed), degrees=30, size=(16, 64))
        a = _pixel_linear(theta, 16, 64)[0]
        if abs(abs(float(torch.atan2(a[1, 0], a[0, 0]))) - angle) < 0.05:
            break
    out = policy(img, gen(seed))[0, 0]  # (16, 64)
    ys, xs = torch.nonzero(out > 0.3, as_tuple=True)
    slope = np.polyfit(xs.double().numpy(), ys.double().numpy(), 1)[0]
    assert abs(math.degrees(math.atan(abs(slope))) - 30) < 6


def test_crop_ratio_is_width_over_height_in_pixels():
    theta = random_affine_matrices(
        20, gen(5), crop_scale=(0.25, 0.25), crop_ratio=(2, 2), size=(16, 64)
    )
    width_px = theta[:, 0, 0] * 64
    height_px = theta[:, 1, 1] * 16
    assert torch.allclose(width_px / height_px, torch.full((20,), 2.0), atol=1e-4)
    assert torch.allclose(width_px * height_px, torch.full((20,), 0.25 * 16 * 64), rtol=1e-4)


def test_square_images_draw_the_same_maps_as_without_a_size():
    kwargs = dict(crop_scale=(0.3, 0.9), degrees=25, translate=0.1, hflip=True, vflip=True)
    a = random_affine_matrices(30, gen(6), **kwargs)
    b = random_affine_matrices(30, gen(6), size=(8, 8), **kwargs)
    assert torch.equal(a, b)


# channel-last images refused whenever augmentation is on


def test_augmentation_refuses_channel_last_images_for_any_model():
    from dmlkit.training.run import augmented

    cfg = Config.from_dict(
        {"data": {"name": "digits", "augment": {"hflip": True}}, "model": {"name": "mlp"}}
    )
    train = ArrayDataset(torch.rand(6, 8, 8, 3), torch.arange(6) % 2)
    with pytest.raises(ValueError, match="channel-last"):
        augmented(train, cfg)
    cfg.data.augment = None
    assert augmented(train, cfg) is train


# grey images: brightness and contrast apply, saturation is refused


def test_brightness_and_contrast_change_grey_images():
    grey = 0.3 + 0.2 * torch.rand(5, 1, 6, 6, generator=gen())
    out = AugmentPolicy(brightness=0.5)(grey, gen(1))
    ratio = out / grey
    assert not torch.allclose(out, grey)
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-4)
    out = AugmentPolicy(contrast=0.5)(grey, gen(2))
    assert not torch.allclose(out, grey)
    assert torch.allclose(out.mean((1, 2, 3)), grey.mean((1, 2, 3)), atol=1e-5)


def test_saturation_of_grey_images_is_refused_when_set_up():
    data = ArrayDataset(torch.rand(4, 1, 8, 8), torch.arange(4))
    with pytest.raises(ValueError, match="data.augment.saturation"):
        AugmentedDataset(data, policy={"saturation": 0.2})
    with pytest.raises(ValueError, match="saturation"):
        color_jitter(torch.rand(2, 1, 4, 4), gen(), saturation=0.2)


# per-epoch augmentation through a DataLoader


def test_items_differ_between_epochs_and_recur_per_epoch():
    data = ArrayDataset(torch.rand(6, 3, 8, 8, generator=gen()), torch.arange(6) % 2)
    aug = AugmentedDataset(data, seed=3, policy={"degrees": 20, "brightness": 0.3})
    first = aug[2][0]
    aug.set_epoch(1)
    second = aug[2][0]
    assert not torch.allclose(first, second)
    aug.set_epoch(0)
    assert torch.equal(aug[2][0], first)
    loader = torch.utils.data.DataLoader(aug, batch_size=3, shuffle=False)
    epochs = []
    for epoch in range(2):
        aug.set_epoch(epoch)
        epochs.append(torch.cat([x for x, _ in loader]))
    assert not torch.allclose(epochs[0], epochs[1])


def test_batches_at_epoch_zero_keep_their_seed():
    data = ArrayDataset(torch.rand(6, 3, 8, 8, generator=gen()), torch.arange(6) % 2)
    aug = AugmentedDataset(data, seed=3, policy={"degrees": 20})
    key = np.asarray([1, 4], dtype=np.int64).tobytes()
    expected = torch.Generator().manual_seed(
        zlib.crc32(np.asarray([3], dtype=np.int64).tobytes() + key)
    )
    assert torch.equal(aug.generator_for([1, 4]).get_state(), expected.get_state())
    with pytest.raises(ValueError, match="epoch"):
        aug.set_epoch(-1)


# (n, H, W) float images


def test_augmenting_images_without_a_channel_axis_says_how_to_store_them():
    data = ArrayDataset(torch.rand(60, 8, 8), torch.arange(60) % 3)
    with pytest.raises(ValueError, match=r"\(n, 1, H, W\)"):
        AugmentedDataset(data, policy={"hflip": True})


# training.val_classes: the specific error wins


def test_one_unknown_class_name_in_val_classes_names_it(tmp_path):
    from dmlkit.data.class_folds import holdout_classes

    cfg = Config.from_yaml("training: {val_classes: [nope]}")
    assert cfg.training.val_classes == ["nope"]
    data = ArrayDataset(torch.rand(8, 2), torch.arange(8) % 4, class_names=["a", "b", "c", "d"])
    with pytest.raises(ValueError, match="no class named 'nope'"):
        holdout_classes(data, cfg.training.val_classes)


# .NPZ spelled in capitals


def test_an_uppercase_npz_suffix_is_an_npz_file(tmp_path):
    from dmlkit.data.load import data_config, load_dataset

    path = tmp_path / "data.NPZ"
    with open(path, "wb") as f:  # (np.savez would append .npz to the name)
        np.savez(f, x=np.random.rand(6, 3).astype(np.float32), labels=np.arange(6) % 2)
    cfg = data_config(str(path))
    assert cfg.name == "npz" and cfg.path == str(path)
    assert load_dataset(cfg).x.shape == (6, 3)
