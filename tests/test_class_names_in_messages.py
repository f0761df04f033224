"""Messages about classes show the data's class names beside the ids; a folder of
images of several sizes names the setting that fixes it."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.data.class_folds import class_folds, holdout_classes
from dmlkit.data.dataset import ArrayDataset
from dmlkit.data.digits import load_digits
from dmlkit.data.splits import named_ids

NAMES = ["coat", "dress", "pullover", "sandal", "shirt", "sneaker", "trouser", "tshirt"]


def _training_part() -> ArrayDataset:
    labels = torch.tensor([1, 2, 6, 7]).repeat_interleave(3)  # dress, pullover, trouser, tshirt
    return ArrayDataset(torch.randn(len(labels), 4), labels, NAMES)


def test_named_ids_show_names_only_where_they_say_more() -> None:
    assert named_ids([7, 2], NAMES) == "[7 (tshirt), 2 (pullover)]"
    assert named_ids([7, 2], None) == "[7, 2]"
    assert named_ids([3, 4], [str(i) for i in range(10)]) == "[3, 4]"  # digits: '3' is 3


def test_val_classes_given_by_name_are_echoed_by_name() -> None:
    data = _training_part()
    with pytest.raises(ValueError) as err:
        holdout_classes(data, ["tshirt", "trouser", "pullover"])
    assert str(err.value) == (
        "val_classes [2 (pullover), 6 (trouser), 7 (tshirt)] leaves 1 class(es) for training "
        "and 3 for validation (training classes: [1 (dress), 2 (pullover), 6 (trouser), "
        "7 (tshirt)]); each side needs at least 2")
    with pytest.raises(ValueError, match=re.escape(
            "val_classes [0 (coat)] are not among the training classes [1 (dress),")):
        holdout_classes(data, ["coat", "dress"])
    with pytest.raises(ValueError, match=re.escape("3 class folds of 4 classes [1 (dress),")):
        class_folds(data.classes, 3, class_names=NAMES)


def _named_npz(path) -> None:
    data = load_digits()
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    np.savez(path, x=data.x.numpy(), labels=data.labels.numpy(), class_names=np.array(names))


CONFIG = """
name: named
data: {{name: npz, path: {path}, split: classes, train_classes: [zero, one, two, three, four,
       five], test_classes: [six, seven, eight, nine], max_per_class: 20,
       max_heldout_per_class: 8}}
model: {{name: small_cnn, in_channels: 1, image_size: 8, dim: 8, width: 4}}
loss: {{name: triplet_margin, margin: 0.1}}
sampler: {{name: m_per_class, m: 5, batch_size: 10}}
training: {{epochs: 1, seed: 0, num_threads: 1, progress: false}}
"""


def test_train_and_crossval_name_the_classes(tmp_path) -> None:
    _named_npz(tmp_path / "d.npz")
    path = tmp_path / "named.yaml"
    path.write_text(CONFIG.format(path=tmp_path / "d.npz"))
    out = CliRunner().invoke(app, ["train", str(path), "--out", str(tmp_path / "r"), "--set",
                                   "training.val_classes=[one, two, three, four, five]"])
    assert out.exit_code == 1
    assert ("val_classes [1 (one), 2 (two), 3 (three), 4 (four), 5 (five)] leaves 1 class(es)"
            in out.output), out.output
    out = CliRunner().invoke(app, ["crossval", str(path), "--folds", "2"])
    assert out.exit_code == 0, out.output
    folds = [line for line in out.output.splitlines() if line.startswith("fold ")]
    shown = [re.findall(r"(\d+) \((\w+)\)", line.split(": MAP@R")[0]) for line in folds]
    assert len(folds) == 2 and all(shown), out.output
    names = ["zero", "one", "two", "three", "four", "five"]
    assert sorted(int(i) for fold in shown for i, _ in fold) == [0, 1, 2, 3, 4, 5]
    assert all(names[int(i)] == name for fold in shown for i, name in fold)


def test_tune_names_the_classes_that_cannot_make_the_folds(tmp_path) -> None:
    pytest.importorskip("optuna")
    from dmlkit.config import Config
    from dmlkit.tuning import tune

    _named_npz(tmp_path / "d.npz")
    text = CONFIG.format(path=tmp_path / "d.npz") + (
        "tune: {folds: 4, space: {optimizer.lr: {choices: [0.001, 0.01]}}}\n")
    words = "4 class folds of 6 classes [0 (zero), 1 (one),"
    with pytest.raises(ValueError, match=re.escape(words)):
        tune(Config.from_yaml(text), 2, tmp_path / "out", log=lambda _m: None)


def test_images_of_several_sizes_name_data_image_size(tmp_path) -> None:
    image = pytest.importorskip("PIL.Image")
    from dmlkit.data.image_folder import load_image_folder

    for name, size in (("a", (28, 28)), ("b", (32, 40))):
        (tmp_path / name).mkdir()
        image.new("RGB", size, (10, 20, 30)).save(tmp_path / name / "x.png")
    with pytest.raises(ValueError, match=re.escape(
            "differ in size [(3, 28, 28), (3, 40, 32)]; set data.image_size")):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, 16).x.shape == (2, 3, 16, 16)
