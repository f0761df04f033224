"""AugmentPolicy: crops, flips, rotations, colour jitter against loop references; seeding."""

from __future__ import annotations

import math

import pytest
import torch

from dmlkit.config.schema import Config, DataConfig
from dmlkit.data.augment import AugmentedDataset
from dmlkit.data.augment_ops import AugmentPolicy, color_jitter, random_affine_matrices, warp
from dmlkit.data.dataset import ArrayDataset


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def naive_warp(img, theta):
    """Bilinear sampling with zero padding, pixel centres at ((2 i + 1) / H - 1), by loops."""
    c, h, w = img.shape
    out = torch.zeros(c, h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            xo, yo = (2 * j + 1) / w - 1, (2 * i + 1) / h - 1
            xi = theta[0, 0] * xo + theta[0, 1] * yo + theta[0, 2]
            yi = theta[1, 0] * xo + theta[1, 1] * yo + theta[1, 2]
            px, py = ((xi + 1) * w - 1) / 2, ((yi + 1) * h - 1) / 2  # pixel coordinates
            x0, y0 = math.floor(px), math.floor(py)
            for dy in (0, 1):
                for dx in (0, 1):
                    yy, xx = y0 + dy, x0 + dx
                    weight = (1 - abs(px - xx)) * (1 - abs(py - yy))
                    if 0 <= yy < h and 0 <= xx < w:
                        out[:, i, j] += weight * img[:, yy, xx].double()
    return out


def test_warp_equals_loop_bilinear_reference():
    x = torch.rand(3, 2, 6, 7, generator=gen(1))
    theta = random_affine_matrices(3, gen(2), crop_scale=(0.3, 0.9), degrees=20,
                                   translate=0.1, hflip=True, vflip=True)  # fmt: skip
    out = warp(x.double(), theta.double())
    for k in range(3):
        assert torch.allclose(out[k], naive_warp(x[k], theta[k].double()), atol=1e-10)


def test_matrices_crop_area_rotation_and_flips():
    theta = random_affine_matrices(500, gen(), crop_scale=(0.25, 0.64), crop_ratio=(1, 1),
                                   degrees=30, hflip=True)  # fmt: skip
    a = theta[:, :, :2]  # (n, 2, 2)
    area = a.det().abs()  # crop area fraction (side scales multiply)
    assert area.min() >= 0.25 - 1e-5 and area.max() <= 0.64 + 1e-5
    rot = a / area.sqrt()[:, None, None]
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(2).expand(500, 2, 2), atol=1e-5)
    angles = torch.atan2(rot[:, 1, 0] * torch.sign(rot.det()), rot[:, 1, 1]).abs() * 180 / math.pi
    assert angles.max() <= 30 + 1e-3 and angles.max() > 25
    flipped = (a.det() < 0).float().mean()
    assert 0.4 < flipped < 0.6
    # the crop stays inside the image: corners map into [-1, 1]
    corners = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]])
    no_rot = random_affine_matrices(200, gen(3), crop_scale=(0.2, 0.9))
    mapped = torch.einsum("nij,kj->nki", no_rot[:, :, :2], corners) + no_rot[:, None, :, 2]
    assert mapped.abs().max() <= 1 + 1e-5


def test_flips_alone_mirror_exactly_and_identity_is_a_copy():
    x = torch.rand(40, 1, 5, 6, generator=gen())
    out = AugmentPolicy(hflip=True)(x, gen(4))
    same = (out - x).abs().flatten(1).amax(1) < 1e-6
    mirrored = (out - x.flip(-1)).abs().flatten(1).amax(1) < 1e-6
    assert (same | mirrored).all() and 5 < mirrored.sum() < 35
    ident = AugmentPolicy()(x, gen())
    assert torch.equal(ident, x) and ident is not x


def test_colour_jitter_against_definitions():
    x = 0.3 + 0.2 * torch.rand(6, 3, 4, 4, generator=gen())  # in [0.3, 0.5]: no clamping
    weights = torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]
    out = color_jitter(x, gen(1), brightness=0.5)
    ratio = out / x
    assert torch.allclose(ratio, ratio[:, :1, :1, :1].expand_as(ratio), atol=1e-4)
    out = color_jitter(x, gen(2), contrast=0.5)
    mean_in = (x * weights).sum(1).mean((1, 2))
    assert torch.allclose((out * weights).sum(1).mean((1, 2)), mean_in, atol=1e-5)
    out = color_jitter(x, gen(3), saturation=0.5)
    assert torch.allclose((out * weights).sum(1), (x * weights).sum(1), atol=1e-5)
    # grey images: brightness scales each image, as for colour ones
    grey = 0.3 + 0.2 * torch.rand(3, 1, 4, 4, generator=gen())
    ratio = color_jitter(grey, gen(4), brightness=0.5) / grey
    assert torch.allclose(ratio, ratio[:, :1, :1, :1].expand_as(ratio), atol=1e-4)
    assert not torch.equal(AugmentPolicy(brightness=0.3)(grey, gen()), grey)


def test_seeded_per_batch_and_off_by_default():
    data = ArrayDataset(torch.rand(20, 3, 8, 8, generator=gen()), torch.arange(20) % 4)
    aug = AugmentedDataset(data, seed=5, policy={"crop_scale": [0.5, 1.0], "degrees": 10,
                                                 "hflip": True, "brightness": 0.2})  # fmt: skip
    a, _ = aug.get_batch([1, 2, 3])
    b, _ = aug.get_batch([1, 2, 3])
    c, _ = aug.get_batch([3, 2, 1])
    assert torch.equal(a, b) and not torch.allclose(a, c[[2, 1, 0]])
    assert not torch.allclose(a, data.x[[1, 2, 3]])
    assert DataConfig().augment is None


def test_bad_policies_and_tabular_data():
    with pytest.raises(ValueError, match="unknown data.augment key"):
        DataConfig(augment={"rotate": 5})
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentPolicy(crop_scale=(0.9, 0.5))
    with pytest.raises(ValueError, match="degrees"):
        AugmentPolicy(degrees=-1)
    with pytest.raises(ValueError, match="brightness"):
        AugmentPolicy(brightness=1.5)
    with pytest.raises(ValueError, match=r"\(n, C, H, W\)"):
        AugmentedDataset(ArrayDataset(torch.rand(5, 4), torch.arange(5)), policy={"hflip": True})
    cfg = Config.from_dict({"data": {"name": "digits", "augment": {"hflip": True}}})
    assert Config.from_dict(cfg.to_dict()).data.augment == {"hflip": True}
