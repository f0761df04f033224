"""The default batch sampler when a config names none (seeded shuffled batches), and
how a batch of items is fetched from a dataset."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from torch.utils.data import Sampler


class RandomBatchSampler(Sampler[list[int]]):
    """Shuffled batches of ``batch_size`` indices of ``range(n)``, deterministic per epoch.

    The last incomplete batch is dropped when ``drop_last`` (default), so batch-norm and
    tuple losses never see a batch of one.

    Parameters
    ----------
    n : int
        Number of items.
    batch_size : int
    seed : int
    drop_last : bool
    """

    def __init__(
        self, n: int, batch_size: int = 128, seed: int = 0, drop_last: bool = True
    ) -> None:
        if n < 1 or batch_size < 1:
            raise ValueError(f"n and batch_size must be >= 1, got {n}, {batch_size}")
        self.n = n
        self.requested_batch_size = batch_size
        self.batch_size = min(batch_size, n)  # one batch of every item when n is smaller
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[list[int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        for i in range(len(self)):
            yield order[i * self.batch_size : (i + 1) * self.batch_size].tolist()


def fetch_items(data: Any, indices: list[int], collate_fn: Callable[[list[Any]], Any]) -> Any:
    """The batch of ``data``'s items at ``indices``: its own ``get_batch`` when it has one,
    else its items through ``collate_fn``."""
    get_batch = getattr(data, "get_batch", None)
    if get_batch is not None:
        return get_batch(indices)
    return collate_fn([data[i] for i in indices])


__all__ = ["RandomBatchSampler", "fetch_items"]
