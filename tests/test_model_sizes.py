"""Model constructors reject impossible sizes (``dim``, ``width``, hidden widths, ...) with
a ValueError naming the parameter, instead of a 0-dim embedding or a torch error later."""

from __future__ import annotations

import inspect
import typing

import pytest

from dmlkit.models.bias_free import BiasFreeCNN, BiasFreeMLP
from dmlkit.models.cnn import SmallCNN
from dmlkit.models.mlp import MLPEmbedder
from dmlkit.models.speaker_encoder import SpeakerEncoder
from dmlkit.registry import MODELS

REQUIRED = {"in_features": 4}  # parameters without defaults


def _int_size_params() -> list[tuple[str, str]]:
    """(model name, parameter) for every ``int`` parameter of the models that need no
    pretrained weights (those under ``dmlkit.models.pretrained`` are tested with them)."""
    found = []
    for name, cls in MODELS.items():
        if cls.__module__.startswith("dmlkit.models.pretrained"):
            continue
        hints = typing.get_type_hints(cls.__init__)
        for param in inspect.signature(cls.__init__).parameters:
            if hints.get(param) is int:
                found.append((name, param))
    return found


def test_the_walk_finds_the_size_parameters() -> None:
    found = set(_int_size_params())
    assert {("small_cnn", "dim"), ("small_cnn", "width"), ("small_cnn", "in_channels"),
            ("mlp", "dim"), ("bias_free_cnn", "dim"), ("speaker_encoder", "channels")} <= found


@pytest.mark.parametrize(("name", "param"), _int_size_params())
@pytest.mark.parametrize("value", [0, -1, 2.5, "abc"])
def test_every_integer_size_parameter_is_checked(name: str, param: str, value) -> None:
    kwargs = {k: v for k, v in REQUIRED.items()
              if k in inspect.signature(MODELS.get(name).__init__).parameters}
    with pytest.raises(ValueError, match=f"{name}: {param} must be an integer >= ") as err:
        MODELS.build(name, **{**kwargs, param: value})
    assert repr(value) in str(err.value)


@pytest.mark.parametrize(("build", "words"), [
    (lambda: SmallCNN(dim=0), "small_cnn: dim must be an integer >= 1, got 0"),
    (lambda: SmallCNN(width=0), "small_cnn: width must be an integer >= 1, got 0"),
    (lambda: SmallCNN(dropout="x"), "small_cnn: dropout must be a number in [0, 1)"),
    (lambda: MLPEmbedder(4, hidden=[16, 0]), "mlp: hidden[1] must be an integer >= 1, got 0"),
    (lambda: MLPEmbedder(4, hidden=8), "mlp: hidden must be a list of integers"),
    (lambda: MLPEmbedder(4, dropout=1.0), "mlp: dropout must be a number in [0, 1)"),
    (lambda: BiasFreeMLP(4, hidden=[-2]), "bias_free_mlp: hidden[0] must be an integer >= 1"),
    (lambda: BiasFreeCNN(image_size=(8, 2)), "bias_free_cnn takes images of side >= 4"),
    (lambda: SpeakerEncoder(dilations=()), "speaker_encoder: dilations must be a non-empty"),
    (lambda: SpeakerEncoder(dilations=(2, 0)), "speaker_encoder: dilations[1] must be"),
])  # fmt: skip
def test_bad_sizes_name_the_parameter(build, words: str) -> None:
    with pytest.raises(ValueError) as err:
        build()
    assert words in str(err.value)


def test_sound_sizes_still_build() -> None:
    import numpy as np

    model = SmallCNN(image_size=8, dim=np.int64(8), width=4)
    assert model.dim == 8 and type(model.dim) is int
    assert MLPEmbedder(4, dim=3, hidden=[]).dim == 3
    assert BiasFreeCNN(image_size=(8, 12), dim=5).image_size == (8, 12)
    assert BiasFreeCNN(image_size=np.int64(8)).image_size == (8, 8)


@pytest.mark.parametrize("image_size", [(8, 8, 8), (8.0, 8), True, "8"])
def test_bias_free_cnn_image_size_is_a_side_or_a_pair(image_size) -> None:
    with pytest.raises(TypeError, match=r"bias_free_cnn: image_size must be an int or \(height"):
        BiasFreeCNN(image_size=image_size)


def test_a_too_small_image_size_says_how_to_enlarge_the_images():
    from dmlkit.models.cnn import SmallCNN

    with pytest.raises(ValueError, match=r"small_cnn takes images of side >= \d+ on each side, "
                                         r"got 2; enlarge .*data.image_size"):
        SmallCNN(image_size=2)
