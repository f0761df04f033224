"""A dataset of one's own whose ``.labels`` are not a tensor: integer ids (a list, a numpy
array) go through the first-batch checks like a tensor's; names are refused at once,
saying how to map them to ids; a loss that cannot take multi-labels suggests losses
that do."""

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from dmlkit.config import Config
from dmlkit.training import Trainer
from dmlkit.training.checks import trainer_data


class Named(Dataset):
    def __init__(self, x, labels):
        self.x, self.labels = x, labels

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.labels[i]


def _config(loss="triplet_margin", sampler=True):
    return Config.from_dict({
        "name": "own", "model": {"name": "mlp", "dim": 4, "hidden": [8], "in_features": 6},
        "loss": {"name": loss} if isinstance(loss, str) else loss,
        **({"sampler": {"name": "m_per_class", "m": 2, "batch_size": 8}} if sampler else {}),
        "training": {"epochs": 1, "progress": False},
    })  # fmt: skip


def test_list_and_numpy_labels_become_a_tensor_for_the_checks():
    x = torch.randn(12, 6)
    for given in ([0, 1, 2, 3] * 3, np.array([0, 1, 2, 3] * 3, dtype=np.int32)):
        labels, _ = trainer_data(Named(x, given), None)
        assert isinstance(labels, torch.Tensor) and labels.dtype == torch.int64
        assert labels.tolist() == [0, 1, 2, 3] * 3


def test_names_as_labels_are_refused_before_training_saying_how_to_map_them():
    x = torch.randn(12, 6)
    with pytest.raises(TypeError, match=r"integer class ids.*'c0'.*numpy.unique"):
        Trainer(_config(), Named(x, ["c0", "c1", "c2", "c3"] * 3), log=None)


def test_integer_list_labels_train():
    x = torch.randn(16, 6)
    trainer = Trainer(_config(), Named(x, [0, 1, 2, 3] * 4), log=None)
    trainer.fit()
    assert trainer.epoch == 1


def test_a_loss_refusing_multi_labels_suggests_losses_that_take_them():
    x = torch.randn(16, 6)
    y = torch.nn.functional.one_hot(torch.arange(16) % 4).bool()
    with pytest.raises(ValueError) as err:
        Trainer(_config("hierarchical_triplet", sampler=False), TensorDataset(x, y), log=None)
    text = str(err.value)
    assert "multi_similarity, contrastive, triplet_margin" in text
    assert "e.g. multi_similarity, hierarchical_triplet" not in text


class SixWide(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(6, 6)

    def forward(self, x):
        return self.linear(x)


def test_a_ready_made_models_width_fills_a_left_out_embedding_size():
    x, y = torch.randn(16, 6), torch.arange(16) % 4
    loss = {"name": "proxy_anchor", "num_classes": 4}
    trainer = Trainer(_config(loss), TensorDataset(x, y), model=SixWide(), log=None)
    assert trainer.loss.embedding_size == 6
    with pytest.raises(ValueError, match="set embedding_size to 6, or leave it out"):
        Trainer(_config({**loss, "embedding_size": 8}), TensorDataset(x, y), model=SixWide(),
                log=None)
