"""A saved run whose data names a part of a source without parts is read whole, as it
was trained; links inside a class folder into the rest of the dataset are not followed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from dmlkit.data.image_folder import folder_images


def test_a_saved_run_with_a_part_of_an_npz_is_read_whole(tmp_path):
    from dmlkit.config import Config
    from dmlkit.runs import load_run
    from dmlkit.runs.data import run_data
    from dmlkit.training import train_run

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(40, 6)).astype(np.float32),
             labels=np.repeat(np.arange(4), 10))
    run_dir = tmp_path / "run"
    train_run(Config.from_dict({
        "name": "x", "data": {"name": "npz", "path": str(tmp_path / "d.npz")},
        "model": {"name": "mlp", "dim": 4, "hidden": [8]},
        "loss": {"name": "triplet_margin", "margin": 0.2},
        "training": {"epochs": 1, "num_threads": 1, "progress": False}}), run_dir,
        log=lambda *a: None)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved["data"]["part"] = "test"  # (as older versions saved it, reading the file whole)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    run = load_run(run_dir, metrics=False)
    assert run.config.data.part == "train"
    assert len(run_data(run, "heldout")) > 0


def _png(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(path)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
def test_links_into_other_classes_or_the_dataset_are_not_followed(tmp_path):
    root = tmp_path / "data"
    for cls in ("a", "b"):
        for i in range(3):
            _png(root / cls / f"{i}.png")
    outside = tmp_path / "extra"
    _png(outside / "x.png")
    os.symlink(root / "b", root / "a" / "to_b")  # another class
    os.symlink(root, root / "b" / "up")  # the dataset folder
    os.symlink(outside, root / "a" / "more")  # outside the dataset: followed
    names, files = folder_images(root)
    assert names == ["a", "b"]
    counts = {c: sum(1 for label, _ in files if label == c) for c in (0, 1)}
    assert counts == {0: 4, 1: 3}
