"""One rule, one place: an image folder's classes read by ``load_image_folder`` alone (the
training side of a split by classes too), and a run's metrics.json read by
``read_metrics`` alone (the report too)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_index_search_fixes import _error
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.data import image_folder
from dmlkit.data.image_folder import load_image_folder
from dmlkit.data.load import split_dataset, training_dataset

runner = CliRunner()


def _folder(root, modes, n=2):
    """One class folder per entry of ``modes`` (the Pillow mode of its ``n`` images)."""
    rng = np.random.default_rng(0)
    for k, mode in enumerate(modes):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            Image.fromarray(a).convert(mode).save(root / f"c{k}" / f"{i}.png")
    return root


def _same(a, b) -> None:
    torch.testing.assert_close(a.x, b.x)
    assert a.labels.tolist() == b.labels.tolist()
    assert a.class_names == b.class_names and a.paths == b.paths


@pytest.mark.parametrize("color", ["auto", "grayscale", "rgb"])
def test_keep_classes_reads_the_whole_folders_items_of_those_classes(tmp_path, color,
                                                                     monkeypatch):
    root = _folder(tmp_path / "f", ["L", "L", "RGB"])  # colour only in a class not kept
    whole = load_image_folder(root, color=color)
    read = []
    real = image_folder.read_image
    monkeypatch.setattr(image_folder, "read_image",
                        lambda file, *a: read.append(file) or real(file, *a))
    kept = load_image_folder(root, color=color, keep_classes=[0, 1])
    assert sorted(p.parent.name for p in read) == ["c0", "c0", "c1", "c1"]  # c2 not decoded
    assert kept.x.shape[1] == (1 if color == "grayscale" else 3)  # auto: c2's header counts
    _same(kept, whole.subset(np.flatnonzero(whole.labels.numpy() < 2)))


def test_keep_classes_refuses_ids_the_folder_lacks(tmp_path):
    root = _folder(tmp_path / "f", ["L", "L", "L"])
    with pytest.raises(ValueError, match=r"keep_classes \[3\] are not classes of .* \(class "
                                         r"ids 0 to 2: \['c0', 'c1', 'c2'\]\)"):
        load_image_folder(root, keep_classes=[0, 3])
    with pytest.raises(TypeError, match=r"keep_classes must hold class ids \(integers\), got "
                                        r"\['c0', True\]"):
        load_image_folder(root, keep_classes=["c0", True, 1])


@pytest.mark.parametrize("modes", [["L", "L", "RGB"], ["RGB", "L", "L"], ["L", "L", "L"]])
def test_training_side_of_a_folder_split_by_classes_is_split_datasets(tmp_path, modes):
    root = _folder(tmp_path / "f", modes, n=3)
    cfg = {"name": "image_folder", "path": str(root), "split": "classes",
           "train_classes": ["c0", 1], "test_classes": [2]}
    _same(training_dataset(cfg), split_dataset(cfg)[0])
    for bad, words in (({"train_classes": [0, 2]}, "overlap"),
                       ({"train_classes": ["c9"]}, "no class named 'c9'"),
                       ({"test_classes": [7]}, r"test_classes \[7\] are not in the data")):
        with pytest.raises(ValueError, match=words):
            training_dataset({**cfg, **bad})


# 5. the report reads metrics.json as every command does -----------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from dmlkit.config import Config
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("metrics")
    cfg = Config.from_dict({
        "name": "metrics",
        "data": {"name": "digits", "max_per_class": 8, "max_heldout_per_class": 6},
        "model": {"name": "mlp", "dim": 4, "hidden": [8]},
        "training": {"epochs": 1, "num_threads": 1, "progress": False},
    })
    train_run(cfg, root / "run", log=lambda *a: None)
    return root / "run"


def test_report_shows_the_metrics_read_metrics_reads(run_dir):
    from dmlkit.report import collect
    from dmlkit.training.run_dir import read_metrics

    data = collect(run_dir, max_items=20, projection="pca")
    assert data["metrics"] == read_metrics(run_dir / "metrics.json")


@pytest.mark.parametrize("text", ["", '{"precision_at_1": 0.'])
def test_a_corrupt_metrics_file_is_one_error_line_of_dmlkit_report(run_dir, tmp_path, text):
    from dmlkit.training.run_dir import read_metrics

    path = run_dir / "metrics.json"
    good = path.read_bytes()
    try:
        path.write_text(text)
        with pytest.raises(ValueError) as err:
            read_metrics(path)
        res = runner.invoke(app, ["report", str(run_dir), "--out", str(tmp_path / "r.html"),
                                  "--projection", "pca"])
        assert res.exit_code == 1, res.output
        assert _error(res) == f"error: {err.value}"  # read_metrics' message, one line
        assert str(path) in _error(res) and not (tmp_path / "r.html").exists()
    finally:
        path.write_bytes(good)
