"""A folder of images of several sizes given to a run's command (``embed``, ``evaluate``,
``index build --data FOLDER``), whose run reads folders at their own size, says to pass
``--data`` a ``.yaml`` data section with ``image_size`` (the run's config cannot be set
from the command), with a snippet that works."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dmlkit.config.schema import Config


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A small_cnn run trained (saved untrained) on 8 x 8 grey images, and a folder of
    grey images of two sizes."""
    pytest.importorskip("PIL")
    from PIL import Image

    from dmlkit.training.build import build_model, resolve_config

    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    np.savez(root / "train.npz", x=rng.random((8, 1, 8, 8)).astype(np.float32),
             labels=np.arange(8) % 2)
    cfg = Config.from_dict({
        "name": "mixed", "data": {"name": "npz", "path": str(root / "train.npz")},
        "model": {"name": "small_cnn", "dim": 4, "width": 4},
        "training": {"epochs": 1}})  # fmt: skip
    resolved = resolve_config(cfg, torch.rand(1, 8, 8), 2)
    (root / "run").mkdir()
    resolved.to_yaml(root / "run" / "config.yaml")
    torch.save(build_model(resolved).state_dict(), root / "run" / "model.pt")
    for label in ("a", "b"):
        (root / "folder" / label).mkdir(parents=True)
        for i, side in enumerate((10, 12)):
            pixels = (rng.random((side, side)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "folder" / label / f"{i}.png")
    return root


def test_mixed_sizes_say_to_pass_a_data_yaml_that_works(root):
    from dmlkit.cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["embed", str(root / "run"), "--data", str(root / "folder"),
                              "-o", str(root / "e.npz")])
    assert res.exit_code != 0
    message = " ".join(res.output.split())
    assert "differ in size" in message and "pass --data a .yaml file" in message
    assert "set data.image_size (" not in message
    snippet = re.search(r"data: \{[^}]*\}", message).group(0)
    assert "image_size: 8" in snippet and "color: grayscale" in snippet
    (root / "data.yaml").write_text(snippet + "\n")
    res = runner.invoke(app, ["embed", str(root / "run"), "--data", str(root / "data.yaml"),
                              "-o", str(root / "e.npz")])
    assert res.exit_code == 0, res.output
    assert np.load(root / "e.npz")["embeddings"].shape == (4, 4)


def test_training_on_such_a_folder_still_says_set_data_image_size(root):
    from dmlkit.data.image_folder import load_image_folder

    with pytest.raises(ValueError, match="set data.image_size"):
        load_image_folder(root / "folder")
