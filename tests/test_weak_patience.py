"""Early stopping in a pairs / triplets run: refused where nothing is validated, as in a
labelled run, instead of being accepted and never firing."""

import numpy as np
import pytest

from dmlkit.config import Config
from dmlkit.training import train_run

BASE = {
    "model": {"name": "mlp", "hidden": [16], "dim": 8},
    "loss": {"name": "triplet_margin", "margin": 0.2},
    "optimizer": {"name": "adam", "lr": 1e-3},
}


def _digits_triplets(**training):
    return Config.from_dict(BASE | {
        "data": {"name": "digits", "split": "stratified", "test_fraction": 0.5, "seed": 0,
                 "kind": "triplets", "num_tuples": 200},
        "training": {"epochs": 2, "batch_size": 32, **training}})  # fmt: skip


def test_patience_without_validation_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="validates on nothing"):
        train_run(_digits_triplets(patience=1), tmp_path / "run", log=lambda _m: None)
    assert not (tmp_path / "run" / "model.pt").exists()


def test_patience_with_a_tuple_file_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.normal(size=(30, 4)).astype(np.float32))
    rows = ["anchor,positive,negative"] + [f"{i},{(i + 1) % 30},{(i + 7) % 30}" for i in range(30)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    config = Config.from_dict(BASE | {
        "data": {"kind": "triplets", "tuples": str(tmp_path / "t.csv"),
                 "features": str(tmp_path / "x.npy")},
        "training": {"epochs": 2, "batch_size": 8, "patience": 1}})  # fmt: skip
    with pytest.raises(ValueError, match="tuple file has no labels"):
        train_run(config, tmp_path / "run", log=lambda _m: None)


def test_patience_with_a_validation_share_still_trains(tmp_path):
    result = train_run(_digits_triplets(patience=1, val_fraction=0.2), tmp_path / "run",
                       log=lambda _m: None)  # fmt: skip
    assert (tmp_path / "run" / "model.pt").exists()
    assert result.metrics
