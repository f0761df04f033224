"""Messages of a training recipe's data: the retrieval query count printed when some
held-out items cannot be queries, a held-out split of one class warned about before
training, and ``training.val_classes`` refusals that name classes as the data does."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dmlkit.config import Config
from dmlkit.data.class_folds import choose_val_classes, holdout_classes
from dmlkit.data.load import check_heldout, split_dataset
from dmlkit.data.splits import class_ids
from dmlkit.evaluation import evaluate_embeddings, retrieval_metrics

MLP = {"model": {"name": "mlp", "dim": 4, "hidden": [8]},
       "loss": {"name": "triplet_margin", "margin": 0.2},
       "sampler": {"name": "m_per_class", "m": 2, "batch_size": 4},
       "training": {"epochs": 1, "num_threads": 1, "progress": False}}


def _npz(path: Path, counts: list[int]) -> Path:
    """Grey 8 x 8 images, ``counts[c]`` of class ``c``."""
    labels = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(len(labels), 1, 8, 8)) + labels[:, None, None, None])
    np.savez(path, x=x.astype(np.float32), labels=labels)
    return path


def _folder(root: Path, names: list[str], per_class: int = 2) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((4, 4, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def _train(root: Path, data: dict) -> tuple[list[str], int, dict]:
    """``(log lines, warnings caught before training began, metrics)`` of a run."""
    from dmlkit.training import train_run

    lines: list[str] = []
    before: list[int] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def log(line: str, *rest: object) -> None:
            lines.append(str(line))
            if str(line).startswith("training on"):
                before.append(len(caught))

        result = train_run(Config.from_dict({"name": "r", "data": data, **MLP}),
                           root / "run", log=log)
        held = [str(w.message) for w in caught[:before[0]]]
    return lines, held, result.metrics


# the query count --------------------------------------------------------------------------

def test_evaluate_prints_the_queries_it_scores_and_why_some_items_are_none():
    x = torch.randn(7, 3)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2])  # class 2: one item, no positive
    lines: list[str] = []
    result = evaluate_embeddings(x, labels, sections=("retrieval",), log=lines.append)
    assert result["retrieval"]["num_queries"] == 6
    start = lines[0]
    assert start.startswith("retrieval (6 queries, leave-one-out; 1 of the 7 items is not "
                            "a query: its class has no other item, so it has no positive "
                            "to retrieve) ..."), start
    assert lines[1].startswith("retrieval (6 queries, leave-one-out): ")
    lines.clear()  # every item a query: no note
    evaluate_embeddings(x[:6], labels[:6], sections=("retrieval",), log=lines.append)
    assert lines[0] == "retrieval (6 queries, leave-one-out) ..."


def test_evaluate_against_a_gallery_says_which_queries_have_no_reference_of_their_class():
    x, ref = torch.randn(5, 3), torch.randn(4, 3)
    lines: list[str] = []
    result = evaluate_embeddings(x, [0, 0, 1, 2, 2], ref, [0, 1, 1, 0],
                                 sections=("retrieval",), log=lines.append)
    assert result["retrieval"]["num_queries"] == 3
    assert lines[0].startswith("retrieval (3 queries, 4 references; 2 of the 5 items are not "
                               "queries: no reference is of their classes)"), lines[0]


@pytest.mark.parametrize("labels, ref", [
    (torch.tensor([0, 0, 1, 2, 2, 2, 3]), None),
    (torch.tensor([0, 0, 1, 2]), torch.tensor([0, 2, 2, 5])),
    (torch.tensor([[0, 1], [0, 1], [0, 2], [1, 2], [1, 2]]), None),
    (torch.tensor([[0, 1], [0, 2], [1, 2]]), torch.tensor([[0, 2], [1, 1]])),
    (torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=torch.bool), None),
    (torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 1]], dtype=torch.bool),
     torch.tensor([[0, 1, 0], [0, 1, 0]], dtype=torch.bool)),
])
def test_query_count_is_the_metrics_num_queries(labels, ref):
    from dmlkit.evaluation.evaluate import query_count

    x = torch.randn(len(labels), 3)
    ref_x = None if ref is None else torch.randn(len(ref), 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = retrieval_metrics(x, labels, ref_x, ref)["num_queries"]
    assert query_count(labels, ref) == want


def test_train_says_how_many_held_out_items_are_no_query_and_why(tmp_path):
    data = {"name": "npz", "path": str(_npz(tmp_path / "d.npz", [8, 8, 8, 10, 10, 1])),
            "split": "classes", "train_classes": [0, 1, 2]}
    lines, _, metrics = _train(tmp_path, data)
    assert metrics["num_queries"] == 20
    line = next(line for line in lines if line.startswith("training on"))
    assert ("held out 21 items (3 classes; 1 of the 21 items is not a query: its class has "
            "no other item, so it has no positive to retrieve)") in line, line


# a held-out split of one class ------------------------------------------------------------

def test_one_held_out_class_is_warned_about_before_training(tmp_path):
    data = {"name": "npz", "path": str(_npz(tmp_path / "d.npz", [8, 8, 6])),
            "split": "classes", "train_classes": [0, 1]}
    _, before, _ = _train(tmp_path, data)
    ours = [m for m in before if m.startswith("the held-out split of")]
    assert len(ours) == 1, before
    assert "holds one class (2, 6 items)" in ours[0]
    assert "trivially 1.0" in ours[0]
    assert "hold out at least 2 classes (those not in data.train_classes)" in ours[0]


@pytest.mark.parametrize("extra, counts, fix", [
    ({"split": "classes", "train_classes": [0, 1], "test_classes": [2]}, [4, 4, 4],
     "list at least 2 classes in data.test_classes"),
    ({}, [6, 1, 1], "give two or more classes at least 2 items each"),
])
def test_the_one_class_warning_says_what_to_set(tmp_path, extra, counts, fix):
    cfg = Config.from_dict({"name": "r", "data": {
        "name": "npz", "path": str(_npz(tmp_path / "d.npz", counts)), **extra}}).data
    train, heldout = split_dataset(cfg)
    assert heldout.num_classes == 1 and train.num_classes >= 2
    with pytest.warns(UserWarning, match="held-out retrieval metrics will be trivially 1.0"
                      ) as record:
        check_heldout(heldout, train, cfg)
    assert fix in str(record[0].message)


def test_a_held_out_split_of_one_item_is_warned_about_as_nan(tmp_path):
    cfg = Config.from_dict({"name": "r", "data": {
        "name": "npz", "path": str(_npz(tmp_path / "d.npz", [4, 4, 1])),
        "split": "classes", "train_classes": [0, 1]}}).data
    train, heldout = split_dataset(cfg)
    with pytest.warns(UserWarning) as record:
        check_heldout(heldout, train, cfg)
    assert ("holds a single item (class 2): it has no positive to retrieve, so the run's "
            "held-out retrieval metrics will be NaN") in str(record[0].message)


def test_two_held_out_classes_are_not_warned_about(tmp_path):
    cfg = Config.from_dict({"name": "r", "data": {
        "name": "npz", "path": str(_npz(tmp_path / "d.npz", [4, 4, 4, 4])),
        "split": "classes", "train_classes": [0, 1]}}).data
    train, heldout = split_dataset(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_heldout(heldout, train, cfg)


# training.val_classes ---------------------------------------------------------------------

def test_val_class_ids_of_numbered_folders_suggest_what_the_ids_pick(tmp_path):
    root = _folder(tmp_path / "f", [str(i) for i in range(12)])
    trained = ["0", "1", "2", "3", "4", "5", "10", "11"]
    cfg = Config.from_dict({"name": "r", "data": {
        "name": "image_folder", "path": str(root), "split": "classes",
        "train_classes": trained}}).data
    train, _ = split_dataset(cfg)
    with pytest.raises(ValueError) as err:
        holdout_classes(train, [6, 7])
    message = str(err.value)
    assert "id 6 is the folder '4', id 7 is the folder '5'" in message
    assert "the folders '6', '7' are not among the training classes" in message
    example = json.loads(re.search(r"e\.g\. val_classes: (\[.*\])$", message).group(1))
    assert example == ["4", "5"]
    rest, val = holdout_classes(train, example)  # the example is accepted
    assert [train.class_names[c] for c in val.classes] == ["4", "5"]
    assert rest.num_classes == 6


def test_folder_ids_of_classes_present_still_suggest_the_folders_so_named(tmp_path):
    from dmlkit.data.load import load_dataset

    root = _folder(tmp_path / "f", [str(i) for i in range(12)])
    data = load_dataset({"name": "image_folder", "path": str(root)})
    with pytest.raises(ValueError, match=r'e\.g\. train_classes: \["6", "7"\]$') as err:
        class_ids(data, [6, 7], "train_classes")
    assert "id 6 is the folder '4'" in str(err.value)
    assert "not among" not in str(err.value)


def test_repeated_val_classes_are_named():
    names = ["eight", "five", "four", "nine", "one", "seven", "six", "three", "two", "zero"]
    with pytest.raises(ValueError) as err:
        choose_val_classes([1, 2, 4, 5, 7, 8, 9], [9, 9, 4], class_names=names)
    assert str(err.value) == ("val_classes [9 (zero), 9 (zero), 4 (one)] repeats a class: "
                              "9 (zero) is listed 2 times; list each class once")


def test_repeated_val_class_names_of_a_folder_are_named(tmp_path):
    root = _folder(tmp_path / "f", ["zero", "one", "two", "three", "four", "five"])
    cfg = Config.from_dict({"name": "r", "data": {"name": "image_folder", "path": str(root)}})
    train, _ = split_dataset(cfg.data)
    with pytest.raises(ValueError, match=re.escape(
            "val_classes [5 (zero), 5 (zero), 2 (one)] repeats a class: 5 (zero) is listed "
            "2 times")):
        holdout_classes(train, ["zero", "zero", "one"])
