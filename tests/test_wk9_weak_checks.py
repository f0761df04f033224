"""Weak supervision refusals and records: bad feature files, first-batch checks of tuple
runs, resume with changed image files, augmentation keys, metrics.json contents, held-out
pairs of one kind, tuples drawn from hierarchical labels."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from dmlkit.config.schema import Config
from dmlkit.data.tuples import TupleDataset, load_features, read_tuples_csv
from dmlkit.training import Trainer, resolve_config, train_run


def quiet(*_args):
    pass


TRIPLETS = "anchor,positive,negative\n"


# -- bad feature files: the labelled npz source's one-line errors ----------------------------
def test_bad_feature_files_give_one_line_errors(tmp_path):
    (tmp_path / "z.npy").write_bytes(b"")
    (tmp_path / "z.npz").write_bytes(b"")
    (tmp_path / "g.npy").write_bytes(b"garbage" * 10)
    np.savez(tmp_path / "full.npz", x=np.ones((5, 3), np.float32))
    whole = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(whole[: len(whole) // 2])
    for name, words in [("z.npy", r"z.npy is empty \(0 bytes\)"),
                        ("z.npz", r"z.npz is empty \(0 bytes\)"),
                        ("g.npy", r"g.npy is not a numpy array file \("),
                        ("t.npz", r"t.npz cannot be read \(")]:
        with pytest.raises(ValueError, match=words):
            load_features(tmp_path / name)


def test_an_empty_feature_array_and_an_empty_csv_are_named(tmp_path):
    np.save(tmp_path / "e.npy", np.zeros((0, 4), np.float32))
    (tmp_path / "t.csv").write_text(TRIPLETS + "0,1,2\n")
    with pytest.raises(ValueError, match=r"e.npy holds no rows \(shape \(0, 4\)\)"):
        read_tuples_csv(tmp_path / "t.csv", "triplets", features=tmp_path / "e.npy")
    np.save(tmp_path / "x.npy", np.zeros((4, 4), np.float32))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"empty.csv is empty; write a header "
                       "anchor,positive,negative"):
        read_tuples_csv(tmp_path / "empty.csv", "triplets", features=tmp_path / "x.npy")


# -- first-batch checks of tuple runs ------------------------------------------------------------
def weak_config(tmp_path, loss=None, kind="triplets", **training):
    rng = np.random.default_rng(0)
    if not (tmp_path / "x.npy").exists():
        np.save(tmp_path / "x.npy", rng.standard_normal((60, 6)).astype(np.float32))
        if kind == "triplets":
            rows = [rng.choice(60, 3, replace=False) for _ in range(80)]
            text = TRIPLETS + "".join(f"{a},{p},{n}\n" for a, p, n in rows)
        else:
            rows = [rng.choice(60, 2, replace=False) for _ in range(80)]
            text = "item_a,item_b,similar\n" + "".join(
                f"{a},{b},{i % 2}\n" for i, (a, b) in enumerate(rows))
        (tmp_path / "t.csv").write_text(text)
    return Config.from_dict({
        "name": "w", "data": {"kind": kind, "tuples": str(tmp_path / "t.csv"),
                              "features": str(tmp_path / "x.npy"), "test_fraction": 0.25},
        "model": {"name": "mlp", "dim": 4, "hidden": [8]},
        "loss": loss or {"name": "triplet_margin", "margin": 0.2},
        "training": {"epochs": 1, "batch_size": 16, "num_threads": 1, "progress": False,
                     **training}})


@pytest.mark.parametrize("loss, words", [
    ({"name": "margin", "num_classes": 10}, "'margin' with num_classes needs class labels"),
    ({"name": "weighted_sum", "losses": [{"name": "margin", "num_classes": 10},
                                         {"name": "contrastive"}]},
     "'margin' with num_classes needs class labels"),
    ({"name": "self_supervised", "loss": {"name": "ntxent"}}, "'self_supervised' takes no "
     "tuples"),
])
def test_a_tuple_run_refuses_losses_that_cannot_train_before_writing(tmp_path, loss, words):
    cfg = weak_config(tmp_path, loss, kind="pairs")
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=words):
        train_run(cfg, out, log=quiet)
    assert not out.exists()


def _trainer(cfg, data, **parts):
    return Trainer(resolve_config(cfg, data.example(), None), data, log=None, **parts)


def test_the_trainer_checks_a_first_batch_of_tuples(tmp_path):
    from dmlkit.losses import ContrastiveLoss, MarginLoss, SelfSupervisedLoss

    cfg = weak_config(tmp_path)
    x = torch.rand(40, 6)
    pairs = TupleDataset(np.array([[i, i + 1] for i in range(30)]), x, np.arange(30) % 2)
    with pytest.raises(ValueError, match=r"loss 'MarginLoss' cannot train from pairs "
                       "without class labels: MarginLoss with num_classes"):
        _trainer(cfg, pairs, loss=MarginLoss(num_classes=10))
    with pytest.raises(ValueError, match="'SelfSupervisedLoss' cannot train from pairs .*"
                       "takes no tuples"):
        _trainer(cfg, pairs, loss=SelfSupervisedLoss(ContrastiveLoss()))
    x[:, 0] = float("nan")  # NaN features: the data message, not "training diverged"
    trip = TupleDataset(np.array([[i, i + 1, i + 2] for i in range(30)]), x)
    with pytest.raises(ValueError, match="returns NaN or infinite embeddings for a first "
                       "batch of the training data, before any training step"):
        _trainer(cfg, trip)


# -- resume notices changed image files ---------------------------------------------------------
def test_resume_refuses_changed_image_files(tmp_path):
    from PIL import Image

    (tmp_path / "im").mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(
            tmp_path / "im" / f"{i}.png")
    rows = [rng.choice(12, 3, replace=False) for _ in range(40)]
    (tmp_path / "t.csv").write_text(TRIPLETS + "".join(
        f"im/{a}.png,im/{p}.png,im/{n}.png\n" for a, p, n in rows))
    cfg = Config.from_dict({
        "name": "w", "data": {"kind": "triplets", "tuples": str(tmp_path / "t.csv"),
                              "test_fraction": 0.25},
        "model": {"name": "mlp", "dim": 4, "hidden": [8]},
        "loss": {"name": "triplet_margin", "margin": 0.2},
        "training": {"epochs": 2, "batch_size": 8, "num_threads": 1, "progress": False}})
    out = tmp_path / "run"

    def stop(trainer, record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(KeyboardInterrupt):
            train_run(cfg, out, log=quiet, callbacks=(stop,))
        path = tmp_path / "im" / f"{rows[0][0]}.png"
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)  # edited in place
        with pytest.raises(ValueError, match="data changed since the run started: the "
                           "image files differ"):
            train_run(cfg, out, resume=True, log=quiet)


# -- augmentation keys of drawn tuples -----------------------------------------------------------
@pytest.mark.parametrize("key, value", [("augment_shift", 1), ("augment_hflip", True)])
def test_augmentation_of_drawn_tuples_is_refused(key, value):
    with pytest.raises(ValueError, match=f"data.{key} would be ignored: .*no tuple run "
                       "augments"):
        Config.from_dict({"data": {"name": "digits", "kind": "triplets", key: value}}).check()
    Config.from_dict({"data": {"name": "digits", "kind": "triplets"}}).check()  # (fine)


# -- metrics.json: history and validation ------------------------------------------------------
def test_a_weak_run_records_history_and_validation(tmp_path):
    cfg = Config.from_dict({
        "name": "w", "data": {"name": "digits", "kind": "triplets", "num_tuples": 300,
                              "max_per_class": 20},
        "model": {"name": "mlp", "dim": 4, "hidden": [8]},
        "loss": {"name": "triplet_margin", "margin": 0.2},
        "training": {"epochs": 2, "batch_size": 64, "num_threads": 1, "progress": False,
                     "val_fraction": 0.25}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train_run(cfg, tmp_path / "run", log=quiet)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["history"]] == [1, 2]
    assert metrics["history"] == json.loads(json.dumps(result.history))
    assert metrics["validation"]["num_items"] > 0
    assert metrics["validation"]["best_epoch"] in (1, 2)


def test_a_tuple_file_run_records_history(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_run(weak_config(tmp_path), tmp_path / "run", log=quiet)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert len(metrics["history"]) == 1 and "validation" not in metrics


# -- held-out pairs of one kind; drawn pairs of one kind -------------------------------------
def test_held_out_pairs_of_one_kind_warn_that_auc_cannot_be_scored():
    from dmlkit.training.weak import tuple_metrics

    held = TupleDataset(torch.tensor([[0, 1], [2, 3]]), torch.rand(4, 2), [1, 1])
    with pytest.warns(UserWarning, match="pair_auc cannot be scored .*all 2 held-out pairs "
                      "are similar"):
        assert np.isnan(tuple_metrics(None, held)["pair_auc"])


def test_drawn_pairs_of_one_kind_are_refused():
    from dmlkit.training.weak import build_weak_splits

    cfg = Config.from_dict({"data": {"name": "digits", "kind": "pairs", "num_tuples": 1}})
    with pytest.raises(ValueError, match=r"the 1 pairs drawn .*all 1 pairs are .*raise "
                       "data.num_tuples"):
        build_weak_splits(cfg)


# -- tuples drawn from hierarchical labels ----------------------------------------------------
def test_drawing_tuples_from_hierarchical_labels_says_how_to_proceed(tmp_path):
    from dmlkit.data.tuples import triplets_from_labels
    from dmlkit.training.weak import build_weak_splits

    y = np.stack([np.arange(80) % 2, np.arange(80) % 8], axis=1)
    with pytest.raises(ValueError, match=r"hierarchical \(n, L\) labels, but drawing pairs / "
                       "triplets needs one class label per item"):
        triplets_from_labels(y, 10)
    np.savez(tmp_path / "h.npz", x=np.random.default_rng(0).random((80, 4)).astype(np.float32),
             labels=y)
    cfg = Config.from_dict({"data": {"name": "npz", "path": str(tmp_path / "h.npz"),
                                     "kind": "pairs"}})
    with pytest.raises(ValueError, match=r"data.kind pairs draws its pairs from one class "
                       r"label per item, .*\(40, 2\) hierarchical .*labels\[:, k\]"):
        build_weak_splits(cfg)


def test_a_checkpoint_from_before_the_image_file_checksums_still_resumes():
    from dmlkit.training.data_fingerprint import data_changes

    saved = {"the training tuples": "a", "the items": "b"}  # (checkpointed before)
    now = {**saved, "the image files": "c"}
    assert data_changes(saved, now) == []
    assert data_changes({**saved, "the image files": "d"}, now) == ["the image files"]
    assert data_changes(saved, {"the training tuples": "a"}) == ["the items"]
