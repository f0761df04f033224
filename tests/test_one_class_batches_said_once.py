"""A sampler whose batches hold one class: a loss that could learn nothing from them is
refused in one error, without the sampler's warning saying the same before it; a loss
whose proxies supply the negatives trains, and the warning is given."""

import warnings

import pytest

from dmlkit.config import Config
from dmlkit.data import split_dataset
from dmlkit.training import Trainer
from dmlkit.training.build import resolve_config


def _trainer(loss: dict) -> Trainer:
    cfg = Config.from_dict({
        "name": "one_class",
        "data": {"name": "digits", "max_per_class": 20},
        "model": {"name": "mlp", "dim": 8, "hidden": [16]},
        "loss": loss,
        "sampler": {"name": "m_per_class", "m": 8, "batch_size": 8},
        "training": {"epochs": 1, "seed": 0, "progress": False},
    })  # fmt: skip
    train, _ = split_dataset(cfg.data)
    return Trainer(resolve_config(cfg, train.x[0], 10), train, log=None)


def test_a_refused_run_says_it_once_as_an_error():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="puts one class in every batch"):
            _trainer({"name": "triplet_margin", "margin": 0.2})
    assert not [w for w in seen if "every batch holds one class" in str(w.message)]


def test_a_run_that_goes_on_keeps_the_samplers_warning():
    with pytest.warns(UserWarning, match="every batch holds one class"):
        trainer = _trainer({"name": "proxy_anchor"})
    assert trainer.sampler.classes_per_batch == 1
