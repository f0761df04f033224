"""The shipped tune example tunes the recommended unseen-class recipe (no Optuna, no weights)."""

from __future__ import annotations

from pathlib import Path

from dmlkit.config import Config
from dmlkit.tuning import FixedTrial, trial_config
from dmlkit.tuning.space import check_space

CONFIGS = Path(__file__).parents[1] / "configs"


def _load(name: str) -> Config:
    return Config.from_yaml(str(CONFIGS / name))


def test_the_tune_example_starts_from_the_recipe():
    tune, recipe = _load("digits_unseen_tune.yaml"), _load("digits_unseen.yaml")
    assert tune.data == recipe.data  # the same classes: 0-4 train, 5-9 test
    assert tune.model == recipe.model  # frozen pretrained backbone, residual head
    for section in ("loss", "miner", "sampler", "optimizer", "schedule"):
        assert getattr(tune, section) == getattr(recipe, section), section
    for key in ("epochs", "anchor_weight", "uniformity_weight", "seed"):
        assert getattr(tune.training, key) == getattr(recipe.training, key), key


def test_the_tune_example_space_builds_and_can_choose_not_to_train():
    config = _load("digits_unseen_tune.yaml")
    check_space(config)  # every corner and every choice makes a valid config
    space = config.tune.space
    assert "none" in space["model.head_type"]["choices"]  # the untrained features
    assert 0.0 in space["training.anchor_weight"]["choices"]  # and no anchor at all
    untrained, chosen = trial_config(config, FixedTrial({"model.head_type": "none"}))
    assert chosen == {"model.head_type": "none"}  # nothing else is sampled for it
    assert untrained.model["head_type"] == "none"
    params = {
        "model.head_type": "residual", "loss": "triplet_margin", "loss.margin": 0.2,
        "miner": "batch_hard", "optimizer.lr": 3e-4, "training.epochs": 2,
        "training.anchor_weight": 0.0, "training.uniformity_weight": 0.5,
    }  # fmt: skip
    trained, chosen = trial_config(config, FixedTrial(params))
    assert chosen == params
    assert trained.loss == {"name": "triplet_margin", "margin": 0.2}
    assert trained.miner == {"name": "batch_hard"}
    assert trained.model == config.model and trained.training.anchor_weight == 0.0
