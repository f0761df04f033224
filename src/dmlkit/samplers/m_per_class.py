"""Class-balanced batches: ``m`` samples from each of ``batch_size // m`` classes."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from dmlkit.registry import register_sampler
from dmlkit.samplers._params import ONE_CLASS_BATCHES, check_int


@register_sampler("m_per_class")
class MPerClassSampler(Sampler[list[int]]):
    """Batch sampler yielding index lists with ``m`` items of each of ``batch_size // m`` classes.

    Classes come from a shuffled cycle: each batch takes the next ``batch_size // m``
    classes of a random permutation of the classes, and a fresh permutation is drawn when
    fewer than that remain (the remaining ones are skipped). With at least
    ``2 * (batch_size // m)`` classes, every class then appears about equally often in an
    epoch; with fewer, each batch is an independent uniform draw of ``batch_size // m``
    distinct classes, so classes are balanced only in expectation and their counts in
    one epoch can differ widely. Within a class, items are drawn without
    replacement while enough remain (with replacement for classes smaller than ``m``,
    which a warning names at construction).
    Deterministic given ``seed`` and the epoch set by :meth:`set_epoch`. Use as
    ``DataLoader(ds, batch_sampler=sampler)``.

    Parameters
    ----------
    labels : sequence of int, array or tensor of shape (n,)
        Class label of each dataset item.
    m : int
        Items per class in a batch (>= 2 so every anchor has a positive).
    batch_size : int
        Items per batch; a multiple of ``m``, and at least ``2 * m`` for pair, triplet
        and tuple losses: with ``batch_size == m`` every batch holds one class and no
        negative pair (a warning; training refuses such a loss before its first epoch).
    num_batches : int, optional
        Batches per epoch; default ``len(labels) // batch_size`` (at least 1).
    seed : int
        Seed of the sampler's own generator (no global random state is touched).
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        m: int = 4,
        batch_size: int = 64,
        num_batches: int | None = None,
        seed: int = 0,
    ) -> None:
        labels_np = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if labels_np.ndim == 2 and labels_np.dtype == bool:
            raise ValueError(
                f"m_per_class balances classes of (n,) labels, got multi-labels of shape "
                f"{labels_np.shape}, which define no classes to draw m items of")
        if labels_np.ndim == 2:
            raise ValueError(
                f"m_per_class takes (n,) class labels, got hierarchical labels of shape "
                f"{labels_np.shape}; use the 'hierarchical' sampler (HierarchicalSampler: "
                "super-classes x classes x m samples) for (n, L) labels")
        if labels_np.ndim != 1:
            raise ValueError(f"labels must be 1-D, got shape {labels_np.shape}")
        m, batch_size = check_int("m", m, 1), check_int("batch_size", batch_size, 1)
        if num_batches is not None:
            num_batches = check_int("num_batches", num_batches, 1)
        seed = check_int("seed", seed, 0)
        if m == 1:
            warnings.warn("m_per_class with m=1: batches hold no two items of a class, so "
                          "pair, triplet and tuple losses have nothing to learn from (only "
                          "classifier / proxy losses do); use m >= 2", UserWarning,
                          stacklevel=2)
        if batch_size < m or batch_size % m:
            raise ValueError(f"batch_size ({batch_size}) must be a positive multiple of m ({m})")
        self.classes, inverse = np.unique(labels_np, return_inverse=True)
        #: classes in every batch (1: no negative pair in any batch)
        self.classes_per_batch = batch_size // m
        if self.classes_per_batch > len(self.classes):
            raise ValueError(
                f"batch_size // m = {self.classes_per_batch} classes per batch, but the data "
                f"has only {len(self.classes)} classes; lower batch_size or raise m"
            )
        if self.classes_per_batch == 1:
            warnings.warn(f"m_per_class with batch_size {batch_size} = m: every batch holds "
                          f"one class, {ONE_CLASS_BATCHES} (batch_size >= 2 * m)",
                          UserWarning, stacklevel=2)
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse, minlength=len(self.classes)))[:-1]
        self._members = np.split(order, bounds)  # one index array per class
        _warn_small_classes(self.classes, [len(idx) for idx in self._members], m)
        self.m = m
        self.batch_size = batch_size
        self.num_batches = (
            num_batches if num_batches is not None else max(1, len(labels_np) // batch_size)
        )
        if self.num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {self.num_batches}")
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration draw the batches of ``epoch`` (deterministically)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        n_classes = len(self.classes)
        pools = [rng.permutation(idx) for idx in self._members]
        cursors = [0] * n_classes
        class_cycle = rng.permutation(n_classes)
        pos = 0
        for _ in range(self.num_batches):
            if pos + self.classes_per_batch > n_classes:
                class_cycle = rng.permutation(n_classes)
                pos = 0
            chosen = class_cycle[pos : pos + self.classes_per_batch]
            pos += self.classes_per_batch
            batch: list[int] = []
            for c in chosen:
                pool = pools[c]
                if len(pool) < self.m:
                    batch.extend(rng.choice(pool, size=self.m, replace=True).tolist())
                    continue
                if cursors[c] + self.m > len(pool):
                    pools[c] = pool = rng.permutation(pool)
                    cursors[c] = 0
                batch.extend(pool[cursors[c] : cursors[c] + self.m].tolist())
                cursors[c] += self.m
            yield batch


def _warn_small_classes(classes: np.ndarray, sizes: Sequence[int], m: int) -> None:
    """Warn, once, when classes hold fewer than ``m`` items: their ``m`` places in a batch
    are filled by independent draws with replacement, so a batch holds some of their items
    twice or more, and a class of one item holds ``m`` copies of it (no positive pair)."""
    counts = np.asarray(sizes)
    small = np.flatnonzero(counts < m)
    if not len(small):
        return
    least = int(small[np.argmin(counts[small])])
    cls = classes[least].item() if hasattr(classes[least], "item") else classes[least]
    copies = ("a class of one item fills its places with copies of that item: no positive "
              "pair" if counts[least] == 1 else
              "pairs of an item with itself are positive pairs at distance 0")
    warnings.warn(
        f"m_per_class with m={m}: {len(small)} of {len(counts)} classes have fewer than "
        f"{m} items (the smallest: class {cls!r}, {int(counts[least])} item"
        f"{'s' if counts[least] != 1 else ''}); their {m} places in a batch are drawn with "
        f"replacement, so items repeat ({copies}); give each class at least {m} items, "
        "or lower sampler.m (to at most the smallest class's size, and at least 2)",
        UserWarning, stacklevel=3)
