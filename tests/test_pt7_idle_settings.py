"""A new run refuses the pretrained backbone's settings that could have no effect (as it
refuses ``trainable_blocks`` in ``frozen`` mode): ``dim`` with a residual head, ``hidden``
with a linear or residual one, ``backbone_lr_scale`` in ``frozen`` mode. The shipped
configs pass, and a model with them still builds (saved runs load)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dmlkit.config.schema import Config
from dmlkit.training.build import check_idle_model_settings, resolve_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _config(model: dict) -> Config:
    return Config.from_dict({
        "name": "idle", "data": {"name": "digits"},
        "model": {"name": "efficientnet_lite0", "resolution": 32, **model},
        "loss": {"name": "multi_similarity"}, "training": {"epochs": 1}})


@pytest.mark.parametrize("model, match", [
    ({"head_type": "residual", "dim": 64},
     r"model.dim \(64\) has no effect with model.head_type: residual .*remove it"),
    ({"hidden": 32}, r"model.hidden \(32\) has no effect with model.head_type: linear"),
    ({"head_type": "residual", "hidden": 32}, "model.hidden .* model.head_type: residual"),
    ({"backbone_lr_scale": 0.5},
     r"model.backbone_lr_scale \(0.5\) has no effect with model.mode: frozen"),
    ({"mode": "frozen", "head_type": "mlp", "backbone_lr_scale": 0.1}, "backbone_lr_scale"),
])  # fmt: skip
def test_settings_without_effect_are_refused(model, match):
    with pytest.raises(ValueError, match=match):
        resolve_config(_config(model), torch.rand(8, 8), 10)


@pytest.mark.parametrize("model", [
    {"head_type": "linear", "dim": 16},
    {"head_type": "mlp", "dim": 16, "hidden": 32},
    {"mode": "finetune", "backbone_lr_scale": 0.5},
    {"head_type": "residual"},
    {"head_type": "none", "dim": 16},  # (the untrained features: any config switches to it)
])  # fmt: skip
def test_settings_with_an_effect_are_kept(model):
    resolved = resolve_config(_config(model), torch.rand(8, 8), 10)
    assert {k: resolved.model[k] for k in model} == model


def test_the_shipped_pretrained_configs_pass():
    shipped = [p for p in sorted(CONFIGS.glob("*.yaml")) if "efficientnet_lite0" in p.read_text()]
    assert shipped
    for path in shipped:
        check_idle_model_settings(Config.from_yaml(path).model)


def test_a_model_with_them_still_builds(tmp_path):
    from dmlkit.models.pretrained.efficientnet_lite import EfficientNetLite0
    from dmlkit.registry import MODELS

    torch.save(EfficientNetLite0().state_dict(), tmp_path / "w.pth")
    model = MODELS.build("efficientnet_lite0", resolution=32, head_type="residual", dim=64,
                         hidden=32, backbone_lr_scale=0.5, weights=str(tmp_path / "w.pth"))
    assert model.dim == model.feature_dim
