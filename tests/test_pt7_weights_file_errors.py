"""A bad ``model.weights`` file of the pretrained backbone is one ``ValueError`` naming the
file, what is wrong with it and the fix, in the library and as one CLI error line (an
empty file never ends the CLI with a bare "Aborted.")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dmlkit.models.pretrained.efficientnet_lite import EfficientNetLite0
from dmlkit.models.pretrained.efficientnet_lite0 import EfficientNetLite0Embedder
from dmlkit.models.pretrained.weights import weights_fix

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def good_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return EfficientNetLite0().state_dict()  # our key names, random weights


def _garbage(path: Path, state: dict) -> None:
    path.write_bytes(b"\x80\x02not a pickle at all")


def _empty(path: Path, state: dict) -> None:
    path.write_bytes(b"")


def _truncated(path: Path, state: dict) -> None:
    torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _other_keys(path: Path, state: dict) -> None:
    torch.save({"a": torch.zeros(3)}, path)


def _one_missing(path: Path, state: dict) -> None:
    torch.save({k: v for k, v in state.items() if k != "stem.conv.weight"}, path)


def _reshaped(path: Path, state: dict) -> None:
    torch.save({**state, "stem.conv.weight": torch.zeros(5, 3, 3, 3)}, path)


def _unknown_published_key(path: Path, state: dict) -> None:
    torch.save({"_foo": torch.zeros(1)}, path)


def _nan(path: Path, state: dict) -> None:
    bad = dict(state)
    bad["blocks.0.depthwise.bn.weight"] = torch.full_like(bad["blocks.0.depthwise.bn.weight"],
                                                          float("nan"))
    torch.save(bad, path)


def _a_tensor(path: Path, state: dict) -> None:
    torch.save(torch.zeros(3), path)


CASES = [
    (_garbage, "cannot be read"),
    (_empty, "is empty"),
    (_truncated, "cannot be read"),
    (_other_keys, "holds none of its 296 entries and holds 1 unknown entry"),
    (_one_missing, r"lacks 1 of its 296 entries \(e.g. 'stem.conv.weight'\)"),
    (_reshaped, r"'stem.conv.weight' has shape \(5, 3, 3, 3\), not \(32, 3, 3, 3\)"),
    (_unknown_published_key, "unexpected key '_foo'"),
    (_nan, "damaged: entry 'blocks.0.depthwise.bn.weight' holds NaN"),
    (_a_tensor, "does not hold a state dict"),
]


@pytest.mark.parametrize("make, what", CASES, ids=[c[0].__name__.strip("_") for c in CASES])
def test_a_bad_weights_file_is_one_error_naming_it_and_the_fix(tmp_path, good_state, make,
                                                                what):
    path = tmp_path / "w.pth"
    make(path, good_state)
    with pytest.raises(ValueError) as info:
        EfficientNetLite0Embedder(dim=8, resolution=32, weights=str(path))
    message = str(info.value)
    assert str(path) in message
    assert re.search(what, message), message
    assert "set model.weights to a correct EfficientNet-Lite0 state-dict file" in message
    assert "\n" not in message


def test_a_good_weights_file_still_loads(tmp_path, good_state):
    path = tmp_path / "w.pth"
    torch.save(good_state, path)
    model = EfficientNetLite0Embedder(dim=8, resolution=32, weights=str(path))
    torch.testing.assert_close(model.backbone.stem.conv.weight, good_state["stem.conv.weight"])


def test_the_packaged_file_damaged_says_reinstall(tmp_path, monkeypatch):
    from dmlkit.models.pretrained import weights

    monkeypatch.setattr(weights, "packaged_weights_dir", lambda: tmp_path)
    assert "pip install --force-reinstall" in weights_fix(tmp_path / "models" / "w.pth")
    assert "model.weights" in weights_fix(tmp_path.parent / "elsewhere.pth")


def test_the_cli_says_one_line_for_an_empty_weights_file(tmp_path):
    from dmlkit.cli.main import app

    (tmp_path / "w.pth").write_bytes(b"")
    res = CliRunner().invoke(app, [
        "train", str(CONFIGS / "digits_unseen.yaml"), "--out", str(tmp_path / "run"),
        "--set", f"model.weights={tmp_path / 'w.pth'}", "--set", "model.resolution=32",
        "--set", f"model.cache_dir={tmp_path / 'cache'}",
        "--set", "data.max_per_class=2", "--set", "data.max_heldout_per_class=2"])
    assert res.exit_code == 1, res.output
    assert "Aborted" not in res.output
    assert f"error: EfficientNet-Lite0 weights file {tmp_path / 'w.pth'} is empty" in res.output
    assert not (tmp_path / "run").exists()
