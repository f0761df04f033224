"""EfficientNet-Lite0: the feature cache keys flat rows of pixels by the image shape
they are read as (``image_size``, ``in_channels``), and finetune ``trainable_blocks``
that train only blocks past the last tap (which never run) are refused."""

from __future__ import annotations

import pytest
import torch

from dmlkit.config.schema import Config
from dmlkit.models.pretrained.efficientnet_lite import EfficientNetLite0
from dmlkit.models.pretrained.efficientnet_lite0 import EfficientNetLite0Embedder
from dmlkit.models.pretrained.feature_cache import cached_features, compute_features
from dmlkit.training.build import check_idle_model_settings, resolve_config


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("lite0") / "w.pth"
    torch.manual_seed(0)
    torch.save(EfficientNetLite0().state_dict(), path)
    return str(path)


def test_flat_rows_read_as_another_image_shape_are_not_read_from_the_cache(weights, tmp_path):
    x = torch.rand(4, 400, generator=torch.Generator().manual_seed(0))  # flat 1 x 20 x 20
    for hw in ([20, 20], [16, 25], [20, 20]):
        model = EfficientNetLite0Embedder(head_type="none", in_channels=1, resolution=32,
                                          image_size=hw, weights=weights,
                                          cache_dir=str(tmp_path)).eval()
        torch.testing.assert_close(cached_features(model, x), compute_features(model, x))
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_the_key_of_images_not_flat_is_unchanged(weights):
    from dmlkit.models.pretrained.feature_cache import input_key

    model = EfficientNetLite0Embedder(head_type="none", in_channels=1, resolution=32,
                                      image_size=[20, 20], weights=weights)
    assert input_key(model, torch.rand(2, 1, 20, 20)) == ""
    assert input_key(model, torch.rand(2, 20, 20)) == ""
    assert input_key(model, torch.rand(2, 400)) == "|flat-1x(20, 20)"


def _config(model: dict) -> Config:
    return Config.from_dict({
        "name": "idle", "data": {"name": "digits"},
        "model": {"name": "efficientnet_lite0", "resolution": 32, "mode": "finetune", **model},
        "loss": {"name": "multi_similarity"}, "training": {"epochs": 1}})


@pytest.mark.parametrize("model, match", [
    ({"taps": [7], "trainable_blocks": 2},
     r"model.trainable_blocks \(2\) has no effect with model.taps \[7\]: the backbone stops "
     r"at block 7, so blocks 14..15 and the head convolution never run.*at least 9"),
    ({"taps": [3, 11], "trainable_blocks": 4}, r"taps \[3, 11\].*at least 5"),
    ({"taps": [7], "trainable_blocks": 0}, r"so the head convolution never run"),
])  # fmt: skip
def test_trainable_blocks_past_the_last_tap_are_refused(model, match):
    with pytest.raises(ValueError, match=match) as info:
        resolve_config(_config(model), torch.rand(8, 8), 10)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("model", [
    {"taps": [7], "trainable_blocks": 9},  # block 7 trains
    {"taps": [7]},  # all blocks (the stem too)
    {"taps": [7], "trainable_blocks": 16},
    {"trainable_blocks": 0},  # the head tap: the head convolution trains
    {"taps": [7, 16], "trainable_blocks": 2},
])  # fmt: skip
def test_trainable_blocks_that_feed_a_tap_are_kept(model):
    check_idle_model_settings(_config(model).model)


def test_the_refused_settings_train_no_backbone_weight(weights):
    """What the check refuses: no backbone weight gets a gradient."""
    model = EfficientNetLite0Embedder(dim=4, resolution=32, mode="finetune", taps=[7],
                                      trainable_blocks=2, weights=weights)
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is None for p in model.backbone.parameters())
