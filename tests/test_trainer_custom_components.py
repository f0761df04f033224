"""The contract the Trainer documents for a ready-made loss, miner and sampler."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from dmlkit.config import Config
from dmlkit.data import ArrayDataset
from dmlkit.functional import Pairs, Triplets
from dmlkit.training import Trainer, resolve_config


class RecordingLoss(nn.Module):
    """A plain module (not a dmlkit loss) with one parameter, recording its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.calls: list[dict[str, Any]] = []

    def forward(self, embeddings: Tensor, labels: Tensor | None = None, *,
                indices: Any = None) -> Tensor:
        self.calls.append({"dtype": embeddings.dtype, "shape": tuple(embeddings.shape),
                           "labels": labels, "indices": indices})
        return self.scale * embeddings.pow(2).mean() + (self.scale - 2.0) ** 2


class NoIndicesLoss(nn.Module):
    def forward(self, embeddings: Tensor, labels: Tensor | None = None) -> Tensor:
        return embeddings.pow(2).mean()


class ListSampler:
    """Only ``__iter__`` and ``__len__``; records ``set_epoch`` when asked to."""

    def __init__(self, batches: list[list[int]], with_set_epoch: bool = False) -> None:
        self.batches = batches
        self.epochs: list[int] = []
        if with_set_epoch:
            self.set_epoch = self.epochs.append

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class NoLenSampler:
    def __iter__(self) -> Iterator[list[int]]:
        return iter([[0, 1, 2, 3]])


class FirstPairMiner(nn.Module):
    def forward(self, embeddings: Tensor, labels: Tensor) -> Pairs:
        one = torch.tensor([0])
        return Pairs(one, torch.tensor([1]), one, torch.tensor([2]))


def setup(epochs: int = 2, miner: dict[str, Any] | None = None) -> tuple[Config, ArrayDataset]:
    g = torch.Generator().manual_seed(0)
    data = ArrayDataset(torch.randn(12, 5, generator=g), torch.arange(3).repeat(4))
    cfg = Config.from_dict({"model": {"name": "mlp", "dim": 4, "hidden": [8]},
                            "miner": miner, "training": {"epochs": epochs, "progress": False},
                            "optimizer": {"lr": 0.1}, "schedule": {"name": "none"}})
    return resolve_config(cfg, data.x[0], 3), data


def test_loss_is_called_with_indices_by_keyword_and_trained():
    cfg, data = setup()
    loss, miner = RecordingLoss(), FirstPairMiner()
    sampler = ListSampler([[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]], with_set_epoch=True)
    trainer = Trainer(cfg, data, loss=loss, miner=miner, sampler=sampler, log=None)
    assert len(trainer.optimizer.param_groups) == 2  # the loss's parameter: its own group
    trainer.fit()
    assert len(loss.calls) == 4 and sampler.epochs == [0, 1]
    for call in loss.calls:
        assert call["dtype"] == torch.float32 and call["shape"] == (6, 4)
        assert torch.equal(call["labels"], torch.tensor([0, 1, 2, 0, 1, 2]))
        assert isinstance(call["indices"], Pairs)  # the miner's output, unchanged
    assert float(loss.scale.detach()) != 1.0  # stepped by the optimizer
    assert torch.equal(trainer.state_dict()["loss"]["scale"], loss.scale.detach())


def test_without_tuples_indices_is_none_but_still_passed():
    cfg, data = setup(epochs=1)
    loss = RecordingLoss()
    Trainer(cfg, data, loss=loss, sampler=ListSampler([[0, 1, 2, 3]]), log=None).fit()
    assert [c["indices"] for c in loss.calls] == [None]
    # a loss must take the keyword: refused when the trainer is built, naming it
    with pytest.raises(ValueError, match="unexpected keyword argument 'indices'"):
        Trainer(cfg, data, loss=NoIndicesLoss(), sampler=ListSampler([[0, 1, 2, 3]]),
                log=None).fit()


class ItemsDataset(torch.utils.data.Dataset):
    """Items ``(input, label)`` without ``get_batch``: fetched through ``collate_fn``."""

    def __init__(self, data: ArrayDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.data.x[i], self.data.labels[i]


def test_tuple_batches_reach_the_loss_typed_and_the_miner_is_skipped():
    cfg, data = setup(epochs=1, miner={"name": "batch_hard"})
    triplets = [torch.tensor([0, 1]), torch.tensor([3, 4]), torch.tensor([1, 2])]
    seen: list[list[int]] = []

    def collate(items: list[Any]) -> tuple[Tensor, None, list[Tensor]]:
        seen.append([int(label) for _, label in items])
        return torch.stack([x for x, _ in items]), None, triplets

    loss = RecordingLoss()
    trainer = Trainer(cfg, ItemsDataset(data), loss=loss,
                      sampler=ListSampler([[5, 4, 3, 2, 1, 0]]), collate_fn=collate, log=None)
    trainer.fit()
    assert seen == [[2, 1, 0, 2, 1, 0]]  # the sampler's positions, in its order
    (call,) = loss.calls
    assert call["labels"] is None and isinstance(call["indices"], Triplets)
    assert all(torch.equal(a, b) for a, b in zip(call["indices"], triplets, strict=True))


def test_a_sampler_needs_len():
    cfg, data = setup()
    with pytest.raises(TypeError):
        Trainer(cfg, data, loss=RecordingLoss(), sampler=NoLenSampler(), log=None)


def test_the_check_before_training_fetches_through_collate_fn_and_names_given_parts():
    """A dataset without ``get_batch`` (items through ``collate_fn``) is checked too, and a
    ready-made loss is named by its class, not by the config's loss."""
    from dmlkit.losses import CenterLoss

    cfg, data = setup(miner={"name": "batch_hard"})
    items = ItemsDataset(data)
    items.labels = data.labels
    with pytest.raises(ValueError, match="loss 'CenterLoss' .*remove the miner"):
        Trainer(cfg, items, loss=CenterLoss(3, 4), sampler=ListSampler([[0, 1, 2, 3]]),
                log=None)
