"""Channel-last images given to a trained run are refused, as training refuses them, never
reshaped into the run's (C, H, W) (which scrambles them): one layout rule for
`dmlkit train` and for `evaluate`, `embed`, `index build` and `search`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cli_helpers import error_line
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.runs.queries import InputSpec, check_input_shape, input_fit
from dmlkit.training.build import channel_last_problem, model_shape_params

runner = CliRunner()


def _spec(*shape: int) -> InputSpec:
    return InputSpec(tuple(shape), "float32", 0.0, 1.0)


@pytest.mark.parametrize("spec, shape", [
    ((3, 16, 16), (16, 16, 3)),    # square RGB, channel-last
    ((3, 48, 64), (48, 64, 3)),    # non-square: H and W in their place, C last
    ((1, 8, 8), (8, 8, 1)),        # grey, channel-last: refused, as training refuses it
    ((8, 8), (8, 8, 1)),           # a model trained on (n, H, W) grey images
])
def test_channel_last_images_do_not_fit_and_say_transpose(spec, shape):
    assert input_fit(shape, _spec(*spec)) is None
    with pytest.raises(ValueError, match=r"^q\.npz: the images look channel-last") as err:
        check_input_shape(shape, _spec(*spec), "q.npz")
    assert "x.transpose(0, 3, 1, 2)" in str(err.value)


def test_the_message_is_the_one_training_gives():
    shape = (48, 64, 3)
    with pytest.raises(ValueError) as trained:
        model_shape_params({"name": "small_cnn"}, torch.zeros(shape))
    with pytest.raises(ValueError) as queried:
        check_input_shape(shape, _spec(3, 48, 64), "q.npz")
    assert str(trained.value) == channel_last_problem(shape)
    assert str(queried.value) == f"q.npz: {channel_last_problem(shape)}"
    with pytest.raises(ValueError, match="channel-last"):  # grey: training refuses it too
        model_shape_params({"name": "small_cnn"}, torch.zeros(8, 8, 1))


@pytest.mark.parametrize("spec, shape", [
    ((3, 16, 16), (3, 16, 16)),    # the training shape
    ((3, 16, 16), (768,)),         # flat rows
    ((1, 8, 8), (8, 8)),           # images without their channel axis
    ((1, 8, 8), (64,)),
    ((8, 8), (1, 8, 8)),
    ((64,), (1, 8, 8)),            # items of a model trained on flat rows
    ((16, 16, 3), (16, 16, 3)),    # a flat-row model trained on channel-last images
])
def test_reshapes_that_keep_the_values_in_place_still_fit(spec, shape):
    assert input_fit(shape, _spec(*spec)) == spec


@pytest.mark.parametrize("spec, shape", [
    ((3, 16, 16), (16, 3, 16)),    # another order of the axes: never reshaped
    ((1, 8, 8), (4, 16)),
    ((3, 4, 4), (4, 4, 3)),        # looks channel-first (4 channels?): refused all the same
])
def test_reshapes_that_would_move_values_do_not_fit(spec, shape):
    assert input_fit(shape, _spec(*spec)) is None
    with pytest.raises(ValueError, match="bring them to that shape"):
        check_input_shape(shape, _spec(*spec), "q.npz")


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory):
    """A small_cnn run on (n, 3, 16, 16) uint8 images, its index, and the same images
    channel-first (cf.npz) and channel-last (nhwc.npz, nhwc.npy)."""
    from dmlkit.config import load_config
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("layout")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 6)
    x = rng.integers(0, 256, (24, 3, 16, 16), dtype=np.uint8)
    np.savez(root / "cf.npz", x=x, labels=labels)
    np.savez(root / "nhwc.npz", x=x.transpose(0, 2, 3, 1), labels=labels)
    np.save(root / "nhwc.npy", x.transpose(0, 2, 3, 1)[:3])
    (root / "c.yaml").write_text(
        f"name: rgb\ndata: {{name: npz, path: {root / 'cf.npz'}}}\n"
        "model: {name: small_cnn, dim: 4, width: 4}\n"
        "sampler: {name: m_per_class, m: 2, batch_size: 8}\n"
        "training: {epochs: 1, num_threads: 1}\n")
    train_run(load_config(root / "c.yaml"), root / "run", log=lambda *a: None)
    res = runner.invoke(app, ["index", "build", str(root / "run"), "--out", str(root / "idx")])
    assert res.exit_code == 0, res.output
    return root


_error = error_line


def test_every_command_refuses_channel_last_data_as_train_does(rgb_run, tmp_path):
    nhwc = str(rgb_run / "nhwc.npz")
    commands = {
        "evaluate": ["evaluate", str(rgb_run / "run"), "--data", nhwc, "--sections",
                     "retrieval", "--out", str(tmp_path / "ev.json")],
        "embed": ["embed", str(rgb_run / "run"), "--data", nhwc, "--out",
                  str(tmp_path / "e.npz")],
        "index build": ["index", "build", str(rgb_run / "run"), "--data", nhwc, "--out",
                        str(tmp_path / "idx")],
        "search": ["search", str(rgb_run / "idx"), "-q", str(rgb_run / "nhwc.npy")],
        "search --as inputs": ["search", str(rgb_run / "idx"), "-q", nhwc, "--as", "inputs"],
    }
    for name, cmd in commands.items():
        res = runner.invoke(app, cmd)
        assert res.exit_code != 0, (name, res.output)
        message = _error(res)
        assert "channel-last" in message and "x.transpose(0, 3, 1, 2)" in message, name
    assert not (tmp_path / "e.npz").exists() and not (tmp_path / "ev.json").exists()
    res = runner.invoke(app, ["evaluate", str(rgb_run / "run"), "--data",
                              str(rgb_run / "cf.npz"), "--sections", "retrieval", "--out",
                              str(tmp_path / "ev.json")])
    assert res.exit_code == 0, res.output  # the same images channel-first: evaluated
