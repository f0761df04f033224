"""SmallCNN: input layouts, pooled-grid features, dropout, backward compatibility."""

from __future__ import annotations

import pytest
import torch

from dmlkit.models.cnn import SmallCNN
from dmlkit.registry import MODELS, build_from_config, config_of


def images(n=3, side=28, seed=0):
    return torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(seed))


def test_default_is_global_average_pooling_with_old_state_keys():
    torch.manual_seed(0)
    model = SmallCNN(width=4, dim=8)
    assert model.grid == 1 and model.dropout == 0.0
    assert model.head.linear.in_features == 16  # 4 * width channels, pooled to 1 x 1
    keys = set(model.state_dict())
    assert "head.linear.weight" in keys and not any(k.startswith("body.5") for k in keys)
    out = model(images())
    assert out.shape == (3, 8)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("grid", [2, 4, 7])
def test_grid_features_equal_pooled_feature_map(grid):
    torch.manual_seed(0)
    model = SmallCNN(width=4, dim=8, grid=grid, normalize=False).eval()
    assert model.head.linear.in_features == 16 * grid * grid
    x = images()
    fmap = model.body[:3](x)  # (n, 16, 7, 7): the conv blocks before pooling
    # reference pooling: a mean over each cell of an adaptive grid, written as loops
    feats = torch.zeros(3, 16, grid, grid)
    side = fmap.shape[-1]
    for i in range(grid):
        r0, r1 = (i * side) // grid, -(-((i + 1) * side) // grid)
        for j in range(grid):
            c0, c1 = (j * side) // grid, -(-((j + 1) * side) // grid)
            feats[:, :, i, j] = fmap[:, :, r0:r1, c0:c1].mean(dim=(2, 3))
    expected = model.head.linear(feats.flatten(1))  # (n, dim)
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_grid_keeps_where_a_pattern_is():
    torch.manual_seed(0)
    x = torch.zeros(2, 1, 28, 28)
    x[0, 0, 2:8, 2:8] = 1.0  # the same blob, top-left vs bottom-right
    x[1, 0, 20:26, 20:26] = 1.0
    pooled = [SmallCNN(width=4, dim=8, grid=g).eval().body(x) for g in (1, 4)]
    gap_gap = (pooled[0][0] - pooled[0][1]).abs().max()
    grid_gap = (pooled[1][0] - pooled[1][1]).abs().max()
    assert grid_gap > 10 * gap_gap + 1e-3


def test_dropout_only_in_training_and_flat_inputs():
    torch.manual_seed(0)
    model = SmallCNN(width=4, dim=8, grid=2, dropout=0.5)
    x = images()
    model.eval()
    assert torch.equal(model(x), model(x.flatten(1)))
    assert torch.equal(model(x), model(x[:, 0]))
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    b = model(x)
    assert not torch.allclose(a, b)


def test_config_round_trip():
    model = SmallCNN(width=4, dim=16, grid=3, dropout=0.25, normalize=False)
    cfg = config_of(model)
    assert cfg["grid"] == 3 and cfg["dropout"] == 0.25 and cfg["width"] == 4
    clone = build_from_config(MODELS, cfg).eval()
    clone.load_state_dict(model.state_dict())
    x = images()
    assert torch.equal(clone(x), model.eval()(x))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"grid": 0}, "grid"),
        ({"grid": 1.5}, "grid"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"image_size": 3}, "image_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SmallCNN(**kwargs)


@pytest.mark.parametrize("grid", [1, 3])
def test_non_square_images_in_every_layout(grid):
    """56 x 46 images (faces): 4-D, 3-D and flat inputs give the same embeddings."""
    torch.manual_seed(0)
    model = SmallCNN(image_size=(56, 46), width=4, dim=8, grid=grid).eval()
    assert len(model.body) == 5  # three blocks (min(56, 46) >= 16), pool, flatten
    x = torch.rand(5, 1, 56, 46, generator=torch.Generator().manual_seed(1))
    out = model(x)
    assert out.shape == (5, 8) and torch.isfinite(out).all()
    assert torch.allclose(model(x[:, 0]), out) and torch.allclose(model(x.flatten(1)), out)
    fmap = model.body[:3](x)  # (5, 16, 14, 11): rows and columns pooled separately
    assert fmap.shape[-2:] == (14, 11)
    rotated = SmallCNN(image_size=(46, 56), width=4, dim=8, grid=grid).eval()
    rotated.load_state_dict(model.state_dict())  # same weights, transposed images
    assert rotated(x.transpose(2, 3)).shape == (5, 8)
    out.sum().backward()  # trains on them
    assert model.head.linear.weight.grad is not None


def test_non_square_size_round_trips_and_is_checked():
    model = SmallCNN(image_size=(56, 46), width=4, dim=8)
    cfg = config_of(model)
    assert cfg["image_size"] == [56, 46]
    rebuilt = build_from_config(MODELS, cfg)
    assert rebuilt.hw == (56, 46)
    with pytest.raises(ValueError, match="2576 features"):
        model(torch.rand(2, 56 * 56))
    with pytest.raises(ValueError, match="image_size"):
        SmallCNN(image_size=(56, 3))
    with pytest.raises(TypeError, match="image_size"):
        SmallCNN(image_size=(56, 46, 3))
    # a square side still means square (and the 8 x 8 digits keep two blocks)
    assert SmallCNN(image_size=8).hw == (8, 8) and len(SmallCNN(image_size=8).body) == 4
