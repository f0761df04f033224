"""Cross-validation folds, text runs and the metric an app learns size a loss with one
row per class by the number of training classes, whatever the class ids are."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_tr7_class_rows import _npz as class_data
from test_weak_export_fixes import CharEncoder

import dmlkit.training.cross_validation as cv_module
import dmlkit.training.trainer as trainer_module
from dmlkit.config import Config
from dmlkit.training.cross_validation import cross_validate


def _npz(path, scale: int):
    return class_data(path, scale, n=120, classes=6, dim=12)


def test_cross_validation_sizes_losses_by_the_classes(tmp_path, monkeypatch):
    sizes: list[int | None] = []
    real = cv_module.resolve_config

    def spy(config, example, num_classes):
        sizes.append(num_classes)
        return real(config, example, num_classes)

    monkeypatch.setattr(cv_module, "resolve_config", spy)
    scores = {}
    for scale in (1, 1000):
        cfg = Config.from_dict({
            "name": "cv", "data": {"name": "npz", "path": str(_npz(tmp_path / f"{scale}.npz",
                                                                   scale))},
            "model": {"name": "mlp", "dim": 8, "hidden": [16]},
            "loss": {"name": "normalized_softmax"},
            "sampler": {"name": "m_per_class", "m": 4, "batch_size": 8},
            "training": {"epochs": 1, "seed": 0, "progress": False, "num_threads": 1}})
        scores[scale] = cross_validate(cfg, 2, seed=0).to_dict()
    assert max(sizes) <= 6  # the whole training part (6 classes), then 3 a fold; not 5001
    for key in ("final_score", "best_score", "curve"):
        assert scores[1000][key] == scores[1][key], key


def test_text_runs_size_losses_by_the_classes(tmp_path, monkeypatch):
    from dmlkit.text import train_text_run

    monkeypatch.setattr(trainer_module, "build_model", lambda config: CharEncoder())
    words = {"cooking": "onion soup pan", "finance": "stock bank share",
             "football": "goal match team", "music": "guitar song band"}
    rows = [(f"{text} {i}", name) for name, text in words.items() for i in range(6)]
    path = tmp_path / "t.csv"
    path.write_text("text,label\n" + "".join(f'"{t}",{c}\n' for t, c in rows))
    cfg = Config.from_dict({
        "name": "t", "data": {"name": "text", "path": str(path), "kind": "labels",
                              "split": "classes", "train_classes": ["cooking", "music"]},
        "model": {"name": "sentence_encoder"},
        "loss": {"name": "normalized_softmax", "embedding_size": 4},  # (CharEncoder)
        "training": {"epochs": 1, "batch_size": 4, "progress": False, "num_threads": 1}})
    train_text_run(cfg, tmp_path / "run", log=lambda *_: None)
    saved = Config.from_yaml(tmp_path / "run" / "config.yaml")
    assert saved.loss["num_classes"] == 2  # classes 0 and 3 of 4: not 4 rows
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert state["class_ids"] is not None and len(state["class_ids"]) == 2


@pytest.mark.parametrize("labels_of", [lambda c: c * 1000, lambda c: c - 7])
def test_a_learned_embedder_trains_on_any_class_ids(labels_of):
    from dmlkit.apps.outliers import MetricOutlierDetector

    rng = np.random.default_rng(1)
    codes = np.arange(60) % 3
    X = rng.normal(size=(3, 6))[codes] + 0.3 * rng.normal(size=(60, 6))
    learn = {"loss": {"name": "normalized_softmax"}, "miner": None,
             "sampler": {"name": "m_per_class", "m": 4, "batch_size": 12},
             "training": {"epochs": 1, "progress": False}}
    scores = []
    for y in (codes, labels_of(codes)):
        det = MetricOutlierDetector(embedder="learn", learn_config=learn, calibration_folds=2,
                                    random_state=0).fit(X, y)
        scores.append(det.score_samples(X))
    np.testing.assert_allclose(scores[0], scores[1])
