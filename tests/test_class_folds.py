"""Class-disjoint validation (training.val_classes) and class-disjoint folds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dmlkit.config import Config, digits_config
from dmlkit.data.class_folds import choose_val_classes, class_folds, holdout_classes
from dmlkit.data.dataset import ArrayDataset
from dmlkit.training import train_run
from dmlkit.training.cross_validation import cross_validate, fold_config


def _data(classes: int = 6, per_class: int = 4) -> ArrayDataset:
    labels = torch.arange(classes).repeat_interleave(per_class)
    return ArrayDataset(torch.randn(len(labels), 3), labels)


def small_config(epochs: int = 2) -> Config:
    cfg = digits_config()
    cfg.data.split = "classes"
    cfg.data.train_classes = [0, 1, 2, 3, 4, 5]
    cfg.data.test_classes = [6, 7, 8, 9]
    cfg.data.max_per_class = 30
    cfg.data.max_heldout_per_class = 20
    cfg.model = {"name": "small_cnn", "in_channels": 1, "image_size": 8, "dim": 16, "width": 8}
    cfg.sampler = {"name": "m_per_class", "m": 6, "batch_size": 12}
    cfg.training.epochs = epochs
    cfg.training.progress = False
    return cfg


def test_fraction_and_list_hold_out_whole_classes() -> None:
    data = _data(6)
    train, val = holdout_classes(data, 0.5, seed=3)
    assert len(val.classes) == 3 and not set(val.classes) & set(train.classes)
    assert sorted(train.classes + val.classes) == list(range(6))
    assert len(train) + len(val) == len(data)
    assert holdout_classes(data, 0.5, seed=3)[1].classes == val.classes  # seeded
    train, val = holdout_classes(data, [4, 1])
    assert val.classes == [1, 4] and train.classes == [0, 2, 3, 5]
    assert torch.equal(val.labels, torch.tensor([1] * 4 + [4] * 4))


@pytest.mark.parametrize(
    "val_classes, match",
    [
        ([0], "leaves 5 class\\(es\\) for training and 1 for validation"),
        ([0, 1, 2, 3, 4], "leaves 1 class\\(es\\) for training"),
        (0.1, "val_classes 0.1 of 6 classes leaves 5 class\\(es\\) for training and 1"),
        (0.9, "leaves 1 class\\(es\\) for training"),
        ([0, 7], "val_classes \\[7\\] are not among the training classes"),
        ([2, 2], "repeats a class"),
        (1.0, "fraction must be in \\(0, 1\\), got 1.0"),
    ],
)
def test_bad_val_classes_are_clear_errors(val_classes: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        choose_val_classes(range(6), val_classes)  # type: ignore[arg-type]


def test_val_classes_type_errors() -> None:
    for bad in ("0, 1", [0.5, 1], True):
        with pytest.raises(TypeError, match="val_classes"):
            choose_val_classes(range(6), bad)  # type: ignore[arg-type]


def test_class_folds_partition_the_classes() -> None:
    folds = class_folds(range(7), 3, seed=1)
    vals = [c for _, val in folds for c in val]
    assert sorted(vals) == list(range(7))  # each class validated on exactly once
    for train, val in folds:
        assert len(val) >= 2 and len(train) >= 2 and not set(train) & set(val)
        assert sorted(train + val) == list(range(7))
    assert class_folds(range(7), 3, seed=1) == folds
    assert class_folds(range(7), 3, seed=2) != folds
    with pytest.raises(ValueError, match="4 class folds of 7 classes"):
        class_folds(range(7), 4)
    with pytest.raises(ValueError, match="k >= 2"):
        class_folds(range(7), 1)


def test_config_val_classes_round_trips_and_rejects_bad_values() -> None:
    for value in (0.4, [0, 3, 5]):
        cfg = digits_config()
        cfg.training.val_classes = value
        again = Config.from_yaml(cfg.to_yaml())
        assert again.training.val_classes == value and again.to_dict() == cfg.to_dict()
    with pytest.raises(ValueError, match="val_classes as a fraction must be in \\(0, 1\\)"):
        Config.from_yaml("training: {val_classes: 1.5}")
    with pytest.raises(ValueError, match="leaves fewer than 2 classes for validation"):
        Config.from_yaml("training: {val_classes: [3]}")
    with pytest.raises(TypeError, match="val_classes must be a fraction or a list"):
        Config.from_yaml("training: {val_classes: [0.5, 1.5]}")
    # class names load (they are looked up in the data's class names when training)
    assert Config.from_yaml("training: {val_classes: [a, b]}").training.val_classes == ["a", "b"]
    with pytest.raises(ValueError, match="val_fraction and training.val_classes both set"):
        Config.from_yaml("training: {val_classes: 0.5, val_fraction: 0.2}")


def test_train_run_selects_on_held_out_classes_and_records_the_curve(tmp_path) -> None:
    cfg = small_config(epochs=3)
    cfg.training.val_classes = [1, 4]
    result = train_run(cfg, tmp_path / "run", log=lambda _m: None)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    validation = metrics["validation"]
    assert validation["classes"] == [1, 4] and validation["num_items"] == 60
    curve = [h["val_map_at_r"] for h in metrics["history"]]
    assert len(curve) == 3 and curve == [h["val_map_at_r"] for h in result.history]
    assert validation["best_map_at_r"] == max(curve)
    assert validation["best_epoch"] == 1 + int(np.argmax(curve))
    log_lines = (tmp_path / "run" / "train.log").read_text().splitlines()
    assert [float(line.split("val_map_at_r ")[1]) for line in log_lines] == pytest.approx(
        curve, rel=1e-5
    )
    saved = Config.from_yaml(tmp_path / "run" / "config.yaml")
    assert saved.training.val_classes == [1, 4]


def test_train_run_rejects_val_classes_leaving_one_training_class(tmp_path) -> None:
    cfg = small_config()
    cfg.training.val_classes = [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="leaves 1 class\\(es\\) for training"):
        train_run(cfg, tmp_path / "run", log=lambda _m: None)


def test_cross_validate_folds_equal_single_runs(tmp_path) -> None:
    cfg = small_config(epochs=2)
    seen: list[tuple[int, float]] = []
    result = cross_validate(cfg, 2, seed=0, on_epoch=lambda e, m: seen.append((e, m)))
    assert [e for e, _ in seen] == [1, 2] and result.curve == [m for _, m in seen]
    finals = [f.curve[-1] for f in result.folds]
    assert result.score == result.final_score == pytest.approx(np.mean(finals))
    assert result.curve[-1] == pytest.approx(result.score)
    assert result.best_score == pytest.approx(np.mean([max(f.curve) for f in result.folds]))
    from dmlkit.evaluation import retrieval_metrics
    from dmlkit.training import build_splits

    train, _ = build_splits(cfg)
    fold = result.folds[0]
    val = train.subset([i for i, c in enumerate(train.labels.tolist()) if c in fold.val_classes])
    x = val.x.flatten(1).double()
    raw = retrieval_metrics(x / x.norm(dim=1, keepdim=True), val.labels)["map_at_r"]
    assert fold.raw_map_at_r == pytest.approx(raw, rel=1e-6)
    best = cross_validate(cfg, 2, seed=0, objective="best_epoch")
    assert best.score == result.best_score
    assert (
        best.curve
        == pytest.approx(  # mean of each fold's best so far
            [np.mean([max(f.curve[: e + 1]) for f in result.folds]) for e in range(2)]
        )
    )
    assert sorted(c for f in result.folds for c in f.val_classes) == [0, 1, 2, 3, 4, 5]
    fold = result.folds[1]  # the fold, trained alone by train_run, has the same curve
    alone = train_run(fold_config(cfg, fold.val_classes), tmp_path / "f", log=lambda _m: None)
    assert [h["val_map_at_r"] for h in alone.history] == fold.curve
    again = cross_validate(cfg, 2, seed=0)
    assert again.score == result.score  # deterministic under the seeds
    with pytest.raises(ValueError, match="4 class folds of 6 classes"):
        cross_validate(cfg, 4)
    with pytest.raises(ValueError, match="objective must be one of"):
        cross_validate(cfg, 2, objective="last")


def test_cli_crossval_prints_the_fold_scores_and_train_rejects_bad_val_classes(tmp_path) -> None:
    from typer.testing import CliRunner

    from dmlkit.cli.main import app

    cfg = small_config(epochs=1)
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    result = CliRunner().invoke(app, ["crossval", str(path), "--folds", "2"])
    assert result.exit_code == 0, result.output
    score = cross_validate(cfg, 2, seed=0).score
    assert f"mean MAP@R over 2 class-disjoint folds: {score:.6f} (objective final;" in result.output
    assert "is not used" not in result.output
    # a val_classes of the config is replaced by the folds, and says so
    with_val = CliRunner().invoke(app, ["crossval", str(path), "--folds", "2", "--set",
                                        "training.val_classes=0.5"])
    assert with_val.exit_code == 0, with_val.output
    assert ("note: training.val_classes (0.5) is not used: each fold validates on its own "
            "classes") in with_val.stderr
    assert f"class-disjoint folds: {score:.6f}" in with_val.output
    cfg.training.val_classes = [0]
    cfg.to_yaml(path)
    result = CliRunner().invoke(app, ["train", str(path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert "val_classes [0] leaves fewer than 2 classes for validation" in result.output


def test_crossval_default_folds_fit_the_training_classes(tmp_path) -> None:
    """No --folds and no tune section: 3 folds, or as many as keep two classes a side."""
    from typer.testing import CliRunner

    from dmlkit.cli.main import app

    cfg = small_config(epochs=1)
    cfg.data.train_classes = [0, 1, 2, 3, 4]  # 5 classes: at most 2 folds
    cfg.data.test_classes = [5, 6, 7, 8, 9]
    cfg.sampler = {"name": "m_per_class", "m": 6, "batch_size": 12}
    assert len(cross_validate(cfg).folds) == 2
    cfg.data.train_classes = [0, 1, 2, 3, 4, 5, 6]  # 7 classes: the default 3
    cfg.data.test_classes = [7, 8, 9]
    result = cross_validate(cfg)
    assert len(result.folds) == 3
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    out = CliRunner().invoke(app, ["crossval", str(path)])
    assert out.exit_code == 0, out.output
    assert f"over 3 class-disjoint folds: {result.score:.6f}" in out.output
    with pytest.raises(ValueError, match="use at most 3 folds"):
        cross_validate(cfg, 4)
