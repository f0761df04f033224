"""Parts of one's own that cannot train are named before or when they would have: a
sampler that gives no batch or an empty one, a loss whose value carries no gradient, a
distance whose matrix has the wrong shape and a part that fails with a RuntimeError.
Built-in samplers and tuple (weak) runs train as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmlkit.config import Config
from dmlkit.data.load import split_dataset
from dmlkit.data.tuples import TupleDataset
from dmlkit.distances.base import BaseDistance
from dmlkit.losses import TripletMarginLoss
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.miners import BatchHardMiner
from dmlkit.training import Trainer
from dmlkit.training.build import resolve_config


def setup(sampler=None, epochs=1):
    cfg = Config.from_dict({
        "name": "tr7", "data": {"name": "digits", "max_per_class": 20},
        "model": {"name": "mlp", "dim": 16, "hidden": [32]},
        "loss": {"name": "triplet_margin"},
        "sampler": sampler or {"name": "m_per_class", "m": 8, "batch_size": 80},
        "training": {"epochs": epochs, "seed": 0, "progress": False},
    })  # fmt: skip
    train, _ = split_dataset(cfg.data)
    return resolve_config(cfg, train.x[0], 10), train


class DropLastSampler(torch.utils.data.Sampler):
    """Shuffled batches of ``batch_size``, the last incomplete one dropped; ``empty``:
    every batch empty; ``lying``: says it has batches and yields none."""

    registry_name = "my_sampler"

    def __init__(self, n, batch_size=64, kind="ok"):
        self.n, self.batch_size, self.kind = n, batch_size, kind

    def __iter__(self):
        if self.kind == "lying":
            return
        perm = torch.randperm(self.n).tolist()
        for i in range(0, self.n - self.batch_size + 1, self.batch_size):
            yield [] if self.kind == "empty" else perm[i:i + self.batch_size]

    def __len__(self):
        return 2 if self.kind == "lying" else self.n // self.batch_size


# -- samplers ---------------------------------------------------------------------------
def test_a_sampler_of_no_batches_is_refused_before_any_epoch():
    cfg, train = setup()
    with pytest.raises(ValueError, match=r"^sampler 'my_sampler' gives no batches \(its "
                                         r"len\(\) is 0\), so training would take no step"):
        Trainer(cfg, train, sampler=DropLastSampler(len(train), 5000), log=None)


def test_an_epoch_without_batches_is_refused():
    cfg, train = setup()
    trainer = Trainer(cfg, train, sampler=DropLastSampler(len(train), 64, "lying"), log=None)
    with pytest.raises(ValueError, match=r"^sampler 'my_sampler' gave no batches in epoch 1 "
                                         r"\(its len\(\) is 2\)"):
        trainer.fit()
    assert trainer.history == []


def test_an_empty_batch_is_refused_when_drawn():
    cfg, train = setup()
    trainer = Trainer(cfg, train, sampler=DropLastSampler(len(train), 64, "empty"), log=None)
    with pytest.raises(ValueError, match=r"^sampler 'my_sampler' gave an empty batch "
                                         r"\(batch 1 of epoch 1\)"):
        trainer.fit()
    assert trainer.history == []


def test_a_sampler_of_ones_own_that_gives_batches_trains():
    cfg, train = setup(epochs=2)
    history = Trainer(cfg, train, sampler=DropLastSampler(len(train), 64), log=None).fit()
    assert [len(h) and "loss" in h for h in history] == [True, True]


@pytest.mark.parametrize("sampler", [
    {"name": "m_per_class", "m": 8, "batch_size": 80},
    {"name": "m_per_class", "m": 2, "batch_size": 20, "num_batches": 1},
    None,  # (the default: training.batch_size)
])
def test_built_in_samplers_train_every_epoch(sampler):
    cfg, train = setup(sampler, epochs=2)
    if sampler is None:
        cfg.sampler = None
    history = Trainer(cfg, train, log=None).fit()
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)


# -- loss values without a gradient -----------------------------------------------------
class Detached(BaseMetricLoss):
    def compute_loss(self, e, labels, indices, ref, ref_labels):
        return self.distance(e).mean().detach()


class Integer(BaseMetricLoss):
    def compute_loss(self, e, labels, indices, ref, ref_labels):
        return self.distance(e).mean().long()


@pytest.mark.parametrize(("loss", "got"), [(Detached, "torch.float32 tensor with "
                                                      "requires_grad=False"),
                                           (Integer, "torch.int64 tensor")])
def test_a_loss_value_without_gradient_is_named_before_training(loss, got):
    cfg, train = setup()
    with pytest.raises((TypeError, ValueError), match=(
            rf"^loss '{loss.__name__}' returned a value with no gradient \(detached or "
            rf"integer\): a {got}, so training cannot backpropagate it")):
        Trainer(cfg, train, loss=loss(), log=None)


def tuple_data():
    x = torch.rand(40, 64)
    return TupleDataset(np.array([[i, i + 1, i + 2] for i in range(30)]), x)


@pytest.mark.parametrize("loss", [Detached, Integer])
def test_a_tuple_run_names_a_loss_without_gradient(loss):
    cfg, _ = setup()
    cfg.sampler, cfg.miner = None, None
    with pytest.raises((TypeError, ValueError), match=rf"^loss '{loss.__name__}' returned a "
                                                      "value with no gradient"):
        Trainer(cfg, tuple_data(), loss=loss(), log=None)


def test_a_tuple_run_still_trains():
    cfg, _ = setup()
    cfg.sampler, cfg.miner = None, None
    cfg.training.batch_size = 8
    history = Trainer(cfg, tuple_data(), log=None).fit()
    assert len(history) == 1 and np.isfinite(history[0]["loss"])


# -- distances and runtime errors of parts of one's own ----------------------------------
class ShortL1(BaseDistance):
    """An L1 distance whose matrix drops its last column."""

    registry_name = "my_l1"

    def compute_matrix(self, x, y=None):
        y = x if y is None else y
        return torch.cdist(x, y, p=1)[:, :-1]

    def compute_rowwise(self, x, y):
        return (x - y).abs().sum(1)


@pytest.mark.parametrize(("part", "given"), [
    ("miner 'BatchHardMiner'", {"miner": BatchHardMiner(distance=ShortL1())}),
    ("loss 'TripletMarginLoss'", {"loss": TripletMarginLoss(distance=ShortL1())}),
])
def test_a_distance_of_the_wrong_shape_is_named_with_its_part(part, given):
    cfg, train = setup()
    with pytest.raises(ValueError, match=(
            rf"^distance 'my_l1' of {part} returns \(32, 31\) for 32 embeddings: d\(x\), the "
            r"matrix of all pairs, must be a tensor of shape \(32, 32\)")):
        Trainer(cfg, train, log=None, **given)


class Broken(BaseMetricLoss):
    def compute_loss(self, e, labels, indices, ref, ref_labels):
        return (e @ torch.ones(3)).mean()  # (a matmul of the wrong width: RuntimeError)


def test_a_runtime_error_of_a_part_is_one_line_naming_it():
    cfg, train = setup()
    with pytest.raises(ValueError, match=r"^loss 'Broken' failed on a first batch of this "
                                         r"data: .*size") as info:
        Trainer(cfg, train, loss=Broken(), log=None)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "\n" not in str(info.value)
