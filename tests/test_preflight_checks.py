"""Checks the trainer makes before any epoch: errors name what failed (the loss, the
miner, the embedding size, a class-count parameter) and blame the labels only where they
are the problem; a loss reading classes from the batch layout (Smooth-AP's blocks) is
refused when the sampler's batches are not that layout."""

from __future__ import annotations

import pytest
import torch

from dmlkit.config.schema import Config
from dmlkit.data.load import split_dataset
from dmlkit.miners.base import BaseMiner
from dmlkit.training import Trainer
from dmlkit.training.build import resolve_config


def trainer(loss, sampler=None, miner=None):
    """A Trainer of a small MLP on scikit-learn's digits (10 classes), built from a config
    resolved as a run resolves it; ``miner`` is a config, or a ready-made miner."""
    ready = None if isinstance(miner, (dict, type(None))) else miner
    cfg = Config.from_dict({
        "name": "pre", "data": {"name": "digits", "max_per_class": 20},
        "model": {"name": "mlp", "dim": 16, "hidden": [32]},
        "loss": loss, "miner": None if ready is not None else miner,
        "sampler": sampler or {"name": "m_per_class", "m": 8, "batch_size": 80},
        "training": {"epochs": 1, "seed": 0, "progress": False},
    })  # fmt: skip
    train, _ = split_dataset(cfg.data)
    return Trainer(resolve_config(cfg, train.x[0], int(train.labels.max()) + 1), train,
                   miner=ready, log=None)


# -- Smooth-AP's consecutive blocks ---------------------------------------------------------
def test_smooth_ap_blocks_on_batches_that_are_not_blocks_are_refused():
    """The default digits sampler gives runs of 8 rows per class while the blocks are
    runs of U = 10 rows: positives would be neighbours, so training is refused."""
    with pytest.raises(ValueError, match=r"loss 'smooth_ap' uses grouping: blocks.*"
                                         r"set grouping: labels.*--set loss.grouping=labels"):
        trainer({"name": "smooth_ap"})


def test_smooth_ap_nested_in_a_wrapper_is_checked_too():
    with pytest.raises(ValueError, match=r"the smooth_ap loss in loss 'weighted_sum'"):
        trainer({"name": "weighted_sum", "losses": ["contrastive", {"name": "smooth_ap"}]})


def test_smooth_ap_trains_by_labels_or_on_true_blocks():
    t = trainer({"name": "smooth_ap", "grouping": "labels"})
    t.fit()
    assert len(t.history) == 1
    # 4 classes x 4 rows, sorted by class: each run of U = 4 rows is one class
    t = trainer({"name": "smooth_ap"}, sampler={"name": "m_per_class", "m": 4, "batch_size": 16})
    first = t.train_data.labels[torch.as_tensor(next(iter(t.sampler)))]
    assert t.loss.blocks_are_classes(first)
    t.fit()
    assert len(t.history) == 1


def test_blocks_are_classes():
    from dmlkit.losses import SmoothAPLoss

    blocks = SmoothAPLoss()
    assert blocks.blocks_are_classes(torch.tensor([3, 3, 3, 1, 1, 1, 0, 0, 0]))
    assert not blocks.blocks_are_classes(torch.tensor([3, 3, 1, 1, 0, 0]))  # blocks of 3
    assert not blocks.blocks_are_classes(torch.tensor([3, 1, 0, 3, 1, 0, 3, 1, 0]))
    assert not blocks.blocks_are_classes(torch.tensor([3, 3, 1]))  # unequal classes
    assert SmoothAPLoss(grouping="labels").blocks_are_classes(torch.tensor([3, 1, 3, 1]))


# -- what failed, named ---------------------------------------------------------------------
def test_an_embedding_size_mismatch_is_named_as_such():
    with pytest.raises(ValueError, match=r"^embedding size mismatch: loss 'arcface' has "
                                         r"embedding_size=32, but model 'mlp' gives "
                                         r"embeddings of dim 16") as info:
        trainer({"name": "arcface", "embedding_size": 32})
    assert "labels" not in str(info.value)


def test_a_class_count_parameter_below_the_data_names_the_parameter():
    with pytest.raises(ValueError, match=r"loss 'manifold' has K=5 \(the number of "
                                         r"proxies, one per class\), but the data has 10 "
                                         r"classes") as info:
        trainer({"name": "manifold", "l": 16, "K": 5})
    assert "num_classes" not in str(info.value)
    with pytest.raises(ValueError, match=r"loss 'proxy_nca' has num_classes=4 .* the data "
                                         r"has 10 classes.*at least 10"):
        trainer({"name": "proxy_nca", "num_classes": 4})


class _FailingMiner(BaseMiner):
    def forward(self, embeddings, labels, ref_embeddings=None, ref_labels=None):
        raise ValueError("margin too wide for this distance")


def test_a_miner_failure_names_the_miner_not_the_labels():
    with pytest.raises(ValueError, match=r"^miner '_FailingMiner' failed on a first batch "
                                         r"of this data: margin too wide") as info:
        trainer({"name": "triplet_margin"}, miner=_FailingMiner())
    assert "labels" not in str(info.value)


def test_a_loss_failure_on_valid_labels_names_the_loss_not_the_labels():
    with pytest.raises(ValueError, match=r"^loss 'smooth_ap' failed on a first batch of this "
                                         r"data: SmoothAPLoss needs the same number") as info:
        _smooth_ap_on_unequal_classes()
    assert "class labels" not in str(info.value)


def _smooth_ap_on_unequal_classes():
    """A loss error that is about the batch, not the label kind: the check's own batch
    (up to 4 items of each class) holds unequal class sizes (class 0 has 2 items)."""
    cfg = Config.from_dict({
        "name": "pre", "data": {"name": "digits", "max_per_class": 20},
        "model": {"name": "mlp", "dim": 16, "hidden": [32]},
        "loss": {"name": "smooth_ap", "grouping": "labels"},
        "sampler": {"name": "m_per_class", "m": 2, "batch_size": 4},
        "training": {"epochs": 1, "seed": 0, "progress": False},
    })  # fmt: skip
    train, _ = split_dataset(cfg.data)
    keep = [i for i, c in enumerate(train.labels.tolist()) if c != 0][:60]
    keep += [i for i, c in enumerate(train.labels.tolist()) if c == 0][:2]
    small = train.subset(keep)
    return Trainer(resolve_config(cfg, small.x[0], 10), small, log=None)
