"""Built-in embedders and model parts: input dtypes and shapes, constructor checks,
configs, N-ary tuple networks and the package's listing of its subpackages."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import dmlkit
from dmlkit.functional import Pairs, Triplets
from dmlkit.models import (
    BiasFreeCNN,
    BiasFreeMLP,
    EmbeddingHead,
    GridMeans,
    MLPEmbedder,
    QuadrupletNetwork,
    SiameseNetwork,
    SmallCNN,
    TripletNetwork,
    TupleNetwork,
)
from dmlkit.registry import MODELS, build_from_config, config_of


def embedders():
    """(model, input batch) of each built-in embedder, float32, in eval mode."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    return [
        (MLPEmbedder(8, dim=4, hidden=(6,)), torch.randn(3, 8, generator=g)),
        (SmallCNN(image_size=8, width=2, dim=4), torch.randn(3, 1, 8, 8, generator=g)),
        (BiasFreeMLP(8, dim=4, hidden=(6,)), torch.randn(3, 8, generator=g)),
        (BiasFreeCNN(image_size=8, dim=4), torch.randn(3, 1, 8, 8, generator=g)),
    ]


IDS = ["mlp", "small_cnn", "bias_free_mlp", "bias_free_cnn"]


# -- dtypes ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", range(4), ids=IDS)
def test_embedders_compute_in_their_parameter_dtype(case, dtype):
    model, x = embedders()[case]
    model = model.eval()
    want = model(x)  # float32 reference
    converted = model.to(dtype)
    for given in (x.to(dtype), x):  # float32 inputs are cast to the model's dtype
        out = converted(given)
        assert out.dtype == dtype
        tol = 1e-5 if dtype == torch.float64 else 0.1
        torch.testing.assert_close(out.float(), want, atol=tol, rtol=tol)


def test_float64_mlp_passes_gradcheck():
    torch.manual_seed(0)
    model = MLPEmbedder(4, dim=3, hidden=(5,)).double().eval()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(model, (x,))


@pytest.mark.parametrize("case", range(4), ids=IDS)
def test_float32_embedders_cast_other_inputs_to_float32(case):
    model, x = embedders()[case]
    model = model.eval()
    ints = (x * 10).round().to(torch.uint8)
    torch.testing.assert_close(model(ints), model(ints.float()), rtol=0, atol=0)
    torch.testing.assert_close(model(ints.bool()), model(ints.bool().float()), rtol=0, atol=0)
    out = model(x.double())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, model(x), rtol=0, atol=0)


# -- configs -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        MLPEmbedder(8, dim=5, hidden=[16, 12], dropout=0.25, normalize=False),
        MLPEmbedder(8),
        BiasFreeMLP(8, dim=3, hidden=[4]),
        BiasFreeMLP(8),
    ],
    ids=["mlp", "mlp_default", "bias_free_mlp", "bias_free_mlp_default"],
)
def test_mlp_configs_round_trip(model):
    config = config_of(model)
    rebuilt = build_from_config(MODELS, config)
    assert type(rebuilt) is type(model)
    assert str(rebuilt) == str(model)
    assert config_of(rebuilt) == config
    rebuilt.load_state_dict(model.state_dict())  # strict: the same parameters


def test_mlp_config_holds_its_settings():
    config = config_of(MLPEmbedder(8, dim=5, hidden=(16,), dropout=0.25, normalize=False))
    assert config == {
        "name": "mlp",
        "in_features": 8,
        "dim": 5,
        "hidden": [16],
        "dropout": 0.25,
        "normalize": False,
    }
    assert config_of(BiasFreeMLP(8, hidden=(4,)))["hidden"] == [4]


# -- normalize / concat are bools ----------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda v: MLPEmbedder(8, normalize=v),
        lambda v: SmallCNN(image_size=8, normalize=v),
        lambda v: EmbeddingHead(8, 4, normalize=v),
    ],
    ids=["mlp", "small_cnn", "head"],
)
@pytest.mark.parametrize("value", ["false", 0, 1, None])
def test_normalize_must_be_a_bool(build, value):
    with pytest.raises(TypeError, match=r"normalize must be a bool.*got"):
        build(value)


def test_numpy_bools_are_taken_as_bools():
    model = MLPEmbedder(8, normalize=np.bool_(False)).eval()
    assert model.normalize is False
    out = model(torch.randn(2, 8) * 100)
    assert not torch.allclose(out.norm(dim=1), torch.ones(2))
    cnn = SmallCNN(image_size=8, normalize=np.bool_(True))
    assert cnn.normalize is True and config_of(cnn)["normalize"] is True


def test_tuple_network_concat_must_be_a_bool():
    with pytest.raises(TypeError, match="concat must be a bool"):
        SiameseNetwork(MLPEmbedder(8), concat="no")


# -- input types and shapes ----------------------------------------------------------------


@pytest.mark.parametrize("cls", [MLPEmbedder, BiasFreeMLP])
def test_mlps_refuse_one_dimensional_tensors(cls):
    model = cls(8).eval()
    with pytest.raises(ValueError, match=r"\(n, 8\).*got shape \(8,\)"):
        model(torch.randn(8))


@pytest.mark.parametrize(
    "model",
    [MLPEmbedder(8), BiasFreeMLP(8), SmallCNN(image_size=8), BiasFreeCNN(image_size=8)],
    ids=IDS,
)
def test_embedders_refuse_numpy_arrays(model):
    with pytest.raises(TypeError, match=r"torch\.Tensor.*ndarray.*torch\.as_tensor"):
        model.eval()(np.ones((2, 8), dtype=np.float32))


@pytest.mark.parametrize("cls", [SmallCNN, BiasFreeCNN])
def test_one_colour_image_without_batch_dimension_is_refused(cls):
    model = cls(in_channels=3, image_size=8).eval()
    with pytest.raises(ValueError, match=r"got \(3, 8, 8\).*batch dimension"):
        model(torch.randn(3, 8, 8))


@pytest.mark.parametrize("cls", [SmallCNN, BiasFreeCNN])
def test_shape_errors_quote_the_given_shape(cls):
    model = cls(in_channels=3, image_size=8).eval()
    with pytest.raises(ValueError, match=r"got \(2, 1, 8, 8\)"):
        model(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"got \(8,\)"):
        model(torch.randn(8))


@pytest.mark.parametrize("cls", [SmallCNN, BiasFreeCNN])
def test_grey_images_without_channel_dimension_still_work(cls):
    torch.manual_seed(0)
    model = cls(in_channels=1, image_size=8).eval()
    x = torch.randn(3, 8, 8)
    torch.testing.assert_close(model(x), model(x.unsqueeze(1)))
    torch.testing.assert_close(model(x.flatten(1)), model(x.unsqueeze(1)))


# -- tuple networks of any arity -----------------------------------------------------------


def test_tuple_network_of_any_arity():
    torch.manual_seed(0)
    model = MLPEmbedder(8, dim=3).eval()
    xs = [torch.randn(2, 8, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    for concat in (True, False):
        net = TupleNetwork(model, arity=5, concat=concat)
        assert net.arity == 5
        outs = net(*xs)
        assert len(outs) == 5
        for x, e in zip(xs, outs, strict=True):
            torch.testing.assert_close(e, model(x))
    with pytest.raises(ValueError, match="takes 5 inputs, got 2"):
        net(*xs[:2])


def test_tuple_network_needs_an_arity_of_at_least_two():
    model = MLPEmbedder(8)
    with pytest.raises(ValueError, match="arity.*SiameseNetwork"):
        TupleNetwork(model)
    for bad in (1, 0, -3):
        with pytest.raises(ValueError, match="arity"):
            TupleNetwork(model, arity=bad)
    for bad in (2.0, True, "3"):
        with pytest.raises(TypeError, match="arity"):
            TupleNetwork(model, arity=bad)
    assert TupleNetwork(model, arity=np.int64(3)).arity == 3


def test_named_tuple_networks_keep_their_arity():
    model = MLPEmbedder(8)
    assert (
        SiameseNetwork(model).arity,
        TripletNetwork(model).arity,
        QuadrupletNetwork(model).arity,
    ) == (2, 3, 4)
    assert TripletNetwork(model, arity=3).arity == 3
    with pytest.raises(ValueError, match=r"TripletNetwork.*arity 3.*TupleNetwork"):
        TripletNetwork(model, arity=5)


def test_embed_tuples_checks_the_number_of_members():
    torch.manual_seed(0)
    model = MLPEmbedder(8, dim=3).eval()
    items = torch.randn(6, 8)
    idx = [torch.tensor([0, 1]), torch.tensor([2, 3])]
    pairs = Pairs(idx[0], idx[1], idx[1], idx[0])
    with pytest.raises(ValueError, match="TripletNetwork takes tuples of 3 members, got Pairs"):
        TripletNetwork(model).embed_tuples(items, pairs)
    with pytest.raises(ValueError, match="QuadrupletNetwork takes tuples of 4 members"):
        QuadrupletNetwork(model).embed_tuples(items, pairs)
    with pytest.raises(ValueError, match="SiameseNetwork takes tuples of 2 members"):
        SiameseNetwork(model).embed_tuples(items, Triplets(*idx, idx[0]))
    with pytest.raises(TypeError, match="tuple of index tensors"):
        SiameseNetwork(model).embed_tuples(items, idx[0])
    plain = SiameseNetwork(model).embed_tuples(items, (idx[0], idx[1], idx[1], idx[0]))
    assert len(plain) == 4
    five = tuple(torch.tensor([i, 5 - i]) for i in range(5))
    out = TupleNetwork(model, arity=5).embed_tuples(items, five)
    full = model(items)
    assert len(out) == 5
    for i, e in zip(five, out, strict=True):
        torch.testing.assert_close(e, full[i])


# -- sizes of the public parts -------------------------------------------------------------


@pytest.mark.parametrize("args", [(8, 0), (0, 4), (8, 2.0), (8, True), (-1, 4)])
def test_embedding_head_sizes_are_checked(args):
    with pytest.raises(ValueError, match=r"EmbeddingHead: (in_features|dim) must be an integer"):
        EmbeddingHead(*args)


@pytest.mark.parametrize("grid", [0, -2, 1.5, True])
def test_grid_means_grid_is_checked(grid):
    with pytest.raises(ValueError, match=r"GridMeans: grid must be an integer >= 1"):
        GridMeans(grid)


def test_parts_take_numpy_sizes():
    head = EmbeddingHead(np.int64(8), np.int32(4))
    assert head(torch.randn(2, 8)).shape == (2, 4)
    assert GridMeans(np.int64(2)).grid == 2


# -- package listing and documentation -----------------------------------------------------


def test_dir_of_the_package_lists_subpackages_without_importing_them():
    names = dir(dmlkit)
    assert {"losses", "models", "index", "cli", "__version__"} <= set(names)
    code = (
        "import sys, dmlkit; names = dir(dmlkit); "
        "print('losses' in names, 'dmlkit.losses' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["True", "False", "False"]


def test_small_cnn_docstring_describes_its_unpooled_third_block():
    third = SmallCNN(image_size=16, width=2).body[2]
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in third)
    assert "third pooled block" not in SmallCNN.__doc__
    assert "unpooled" in SmallCNN.__doc__
