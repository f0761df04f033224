"""Before any epoch the trainer checks each part's output in turn (the model's
embeddings, the miner's tuples, the loss's value) and names the part at fault; data it
cannot batch from (a DataLoader, validation data without inputs and labels) is refused
when it is built, and a TensorDataset's second tensor serves as the labels."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dmlkit.config import Config
from dmlkit.data.load import split_dataset
from dmlkit.functional import Triplets
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.miners.base import BaseMiner
from dmlkit.training import Trainer
from dmlkit.training.build import resolve_config


def setup(sampler=None):
    cfg = Config.from_dict({
        "name": "pre", "data": {"name": "digits", "max_per_class": 20},
        "model": {"name": "mlp", "dim": 16, "hidden": [32]},
        "loss": {"name": "triplet_margin"},
        "sampler": sampler or {"name": "m_per_class", "m": 8, "batch_size": 80},
        "training": {"epochs": 1, "seed": 0, "progress": False},
    })  # fmt: skip
    train, _ = split_dataset(cfg.data)
    return resolve_config(cfg, train.x[0], 10), train


class Model(nn.Module):
    """64 -> 16, whose output is broken as ``kind`` says."""

    def __init__(self, kind: str = "ok") -> None:
        super().__init__()
        self.kind, self.lin, self.dim = kind, nn.Linear(64, 16), 16

    def forward(self, x):
        e = self.lin(x.flatten(1).float())  # (n, 16)
        return {"1d": lambda: e.sum(1), "nan": lambda: e * float("nan"),
                "tuple": lambda: (e, e), "int": lambda: (e > 0).long(),
                "ok": lambda: e}[self.kind]()


@pytest.mark.parametrize(("kind", "message"), [
    ("1d", r"^model 'Model' returns shape \(32,\) for a batch of 32 inputs: its forward "
           r"must return \(n, dim\) embeddings"),
    ("nan", r"^model 'Model' returns NaN or infinite embeddings"),
    ("tuple", r"^model 'Model' returns a tuple, not a tensor"),
    ("int", r"^model 'Model' returns torch.int64 embeddings: they must be floating point"),
])
def test_a_broken_model_output_names_the_model(kind, message):
    cfg, train = setup()
    with pytest.raises((ValueError, TypeError), match=message) as info:
        Trainer(cfg, train, model=Model(kind), log=None)
    assert "miner" not in str(info.value) and "loss" not in str(info.value)


class OutOfRange(BaseMiner):
    def mine(self, e, labels, ref, ref_labels, same_set):
        n = len(labels)
        return Triplets(torch.tensor([0]), torch.tensor([n + 5]), torch.tensor([1]))


class ListMiner(BaseMiner):
    def mine(self, e, labels, ref, ref_labels, same_set):
        return [torch.tensor([0]), torch.tensor([1])]


class NoneMiner(BaseMiner):
    def mine(self, e, labels, ref, ref_labels, same_set):
        return None


@pytest.mark.parametrize(("miner", "message"), [
    (OutOfRange, r"^miner 'OutOfRange' returned invalid tuples \(Triplets\) for a first "
                 r"batch of 32 embeddings: indices\[1\] holds 37, outside \[0, 31\]"),
    (ListMiner, r"^miner 'ListMiner' returned invalid tuples \(a list of 2\)"),
    (NoneMiner, r"^miner 'NoneMiner' returned None for a first batch: a miner must return "
                r"its tuples"),
])
def test_a_broken_miner_output_names_the_miner_not_the_loss(miner, message):
    cfg, train = setup()
    with pytest.raises((ValueError, TypeError), match=message) as info:
        Trainer(cfg, train, miner=miner(), log=None)
    assert "remove the miner" not in str(info.value)


class GrowingMiner(BaseMiner):
    """Valid on batches of up to 32 items (the check's), off by one beyond."""

    def mine(self, e, labels, ref, ref_labels, same_set):
        n = len(labels)
        return Triplets(torch.tensor([0]), torch.tensor([n if n > 32 else 1]),
                        torch.tensor([2]))


def test_a_miner_output_is_checked_in_training_too():
    cfg, train = setup()
    trainer = Trainer(cfg, train, miner=GrowingMiner(), log=None)
    with pytest.raises(ValueError, match=r"^miner 'GrowingMiner' returned invalid tuples "
                                         r"\(Triplets\) for a training batch of 80"):
        trainer.fit()


class VectorLoss(BaseMetricLoss):
    def compute_loss(self, e, labels, indices, ref, ref_labels):
        return e.pow(2).sum(1)  # (n,): no reduction


class FloatLoss(BaseMetricLoss):
    def compute_loss(self, e, labels, indices, ref, ref_labels):
        return 1.0


@pytest.mark.parametrize(("loss", "message"), [
    (VectorLoss, r"^loss 'VectorLoss' returns a tensor of shape \(32,\), not a scalar: "
                 r"reduce it"),
    (FloatLoss, r"^loss 'FloatLoss' returns a float, not a tensor"),
])
def test_a_loss_that_returns_no_scalar_tensor_is_named(loss, message):
    cfg, train = setup()
    with pytest.raises((ValueError, TypeError), match=message):
        Trainer(cfg, train, loss=loss(), log=None)


# -- the data a Trainer is given --------------------------------------------------------
def test_a_tensor_dataset_second_tensor_is_its_labels():
    cfg, train = setup()
    data = TensorDataset(train.x, train.labels)
    trainer = Trainer(cfg, data, val_data=TensorDataset(train.x[:60], train.labels[:60]),
                      log=None)
    first = train.labels[torch.as_tensor(next(iter(trainer.sampler)))]  # (80,)
    assert torch.unique(first, return_counts=True)[1].tolist() == [8] * 10  # by its labels
    history = trainer.fit()
    assert len(history) == 1 and "val_map_at_r" in history[0]


def test_a_dataloader_is_refused_when_the_trainer_is_built():
    cfg, train = setup()
    with pytest.raises(TypeError, match=r"^train_data is a DataLoader; pass its dataset"):
        Trainer(cfg, DataLoader(train, batch_size=10), log=None)


def test_validation_data_without_inputs_and_labels_is_refused_when_the_trainer_is_built():
    cfg, train = setup()
    with pytest.raises(TypeError, match=r"^val_data must hold inputs \.x and their labels "
                                        r"\.labels .* got a list"):
        Trainer(cfg, train, val_data=[train[0], train[1]], log=None)


def test_a_sampler_needing_labels_says_where_they_come_from():
    cfg, train = setup()
    data = TensorDataset(train.x)  # (inputs alone: no labels)
    with pytest.raises(ValueError, match=r"needs labels; the training data has none \(no "
                                         r"`labels` attribute.*ArrayDataset\(x, labels\)"):
        Trainer(cfg, data, log=None)
    floats = TensorDataset(train.x, train.labels.float())  # labels, but not class ids
    with pytest.raises(TypeError, match="labels must be integer class ids"):
        Trainer(cfg, floats, log=None)
