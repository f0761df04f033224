"""Hierarchy-aware batches: super-classes, then classes within them, then samples per class."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from dmlkit._checks import first_few
from dmlkit.registry import register_sampler
from dmlkit.samplers._params import ONE_CLASS_BATCHES, check_int


def _groups(ids: np.ndarray, count: int) -> list[np.ndarray]:
    """Positions of each id ``0..count-1`` in ``ids``, one sorted array per id."""
    order = np.argsort(ids, kind="stable")
    bounds = np.cumsum(np.bincount(ids, minlength=count))[:-1]
    return np.split(order, bounds)


class _Cycle:
    """Draws ``k`` distinct items at a time from a reshuffled cycle over unique ``items``
    (fewer than ``k`` items: each of them once, then repeats)."""

    def __init__(self, items: np.ndarray, rng: np.random.Generator) -> None:
        self.items = items
        self.rng = rng
        self.pool = rng.permutation(items)
        self.cursor = 0

    def take(self, k: int) -> np.ndarray:
        if len(self.items) < k:  # too few: each item once, the rest with replacement
            extra = self.rng.choice(self.items, size=k - len(self.items), replace=True)
            return np.concatenate([self.rng.permutation(self.items), extra])
        if self.cursor + k > len(self.pool):
            # unvisited items lead the next cycle, so none is starved
            rest = self.pool[self.cursor :]
            others = self.rng.permutation(np.setdiff1d(self.items, rest))
            self.pool = np.concatenate([rest, others])
            self.cursor = 0
        out = self.pool[self.cursor : self.cursor + k]
        self.cursor += k
        return out


@register_sampler("hierarchical")
class HierarchicalSampler(Sampler[list[int]]):
    """Batches of ``S`` super-classes x ``classes_per_super`` classes x ``m`` samples.

    Every batch holds hard negatives at each level: sibling classes (same super-class)
    and other super-classes, as a hierarchical loss needs. With ``(n, L)`` labels a
    *class* is a full label row (the leaf) and a *super-class* is its prefix up to
    ``super_level`` (0 = coarsest). ``S = batch_size // (m * classes_per_super)``.

    Super-classes are visited in a reshuffled cycle (distinct within a batch); within a
    super-class, classes cycle the same way, and within a class, samples are drawn
    without replacement while enough remain. A super-class with fewer than
    ``classes_per_super`` classes gives each of its classes once and the rest again
    (drawn with replacement), and a class with fewer than ``m`` samples gives each sample
    once and the rest again, so every batch has exactly ``batch_size`` indices; a batch
    then holds fewer distinct classes than asked, down to :attr:`min_classes_per_batch`
    (a warning says so, and training refuses a loss that needs negatives in the batch
    when that is 1). Deterministic given ``seed`` and the epoch set by
    :meth:`set_epoch`; use as ``DataLoader(ds, batch_sampler=sampler)``.

    Parameters
    ----------
    labels : array or tensor of shape (n, L)
        Hierarchical labels, coarsest level first, ``L >= 2``.
    batch_size : int
        Indices per batch, a multiple of ``m * classes_per_super``.
    m : int
        Samples per class in a batch.
    classes_per_super : int
        Classes drawn from each chosen super-class.
    super_level : int
        Level that defines super-classes, in ``[0, L - 2]``.
    num_batches : int, optional
        Batches per epoch; default ``n // batch_size`` (at least 1).
    seed : int
        Seed of the sampler's own generator (no global random state is touched).
    """

    def __init__(
        self,
        labels: Sequence[Sequence[int]] | np.ndarray | torch.Tensor,
        batch_size: int = 64,
        m: int = 4,
        classes_per_super: int = 2,
        super_level: int = 0,
        num_batches: int | None = None,
        seed: int = 0,
    ) -> None:
        labels_np = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if labels_np.ndim != 2 or labels_np.shape[1] < 2:
            raise ValueError(
                f"labels must have shape (n, L) with L >= 2, got {labels_np.shape}; "
                "use MPerClassSampler for flat labels"
            )
        if not np.issubdtype(labels_np.dtype, np.integer):
            raise TypeError(f"labels must be integers, got dtype {labels_np.dtype}")
        batch_size, m = check_int("batch_size", batch_size, 1), check_int("m", m, 1)
        classes_per_super = check_int("classes_per_super", classes_per_super, 1)
        super_level = check_int("super_level", super_level, 0)
        if num_batches is not None:
            num_batches = check_int("num_batches", num_batches, 1)
        seed = check_int("seed", seed, 0)
        levels = labels_np.shape[1]
        if not 0 <= super_level <= levels - 2:
            raise ValueError(f"super_level must be in [0, {levels - 2}], got {super_level}")
        group = m * classes_per_super
        if batch_size < group or batch_size % group:
            raise ValueError(
                f"batch_size ({batch_size}) must be a positive multiple of "
                f"m * classes_per_super ({group})"
            )
        leaves, leaf_of_item = np.unique(labels_np, axis=0, return_inverse=True)
        supers, super_of_leaf = np.unique(
            leaves[:, : super_level + 1], axis=0, return_inverse=True
        )
        self.supers_per_batch = batch_size // group
        self.classes_per_super = classes_per_super
        if self.supers_per_batch > len(supers):
            raise ValueError(
                f"batch_size // (m * classes_per_super) = {self.supers_per_batch} super-classes "
                f"per batch, but level {super_level} has only {len(supers)}"
            )
        self._items_of_leaf = _groups(leaf_of_item.reshape(-1), len(leaves))
        self._leaves_of_super = _groups(super_of_leaf.reshape(-1), len(supers))
        # distinct classes each super-class gives a batch, fewest first
        given = sorted(min(len(g), classes_per_super) for g in self._leaves_of_super)
        #: the fewest distinct classes (leaves) a batch can hold: the classes asked
        #: (:attr:`classes_per_batch`) unless some super-classes have fewer than
        #: ``classes_per_super`` classes (1: some batches hold no negative pair)
        self.min_classes_per_batch = int(sum(given[: self.supers_per_batch]))
        few = [tuple(int(v) for v in supers[i]) if len(supers[i]) > 1 else int(supers[i][0])
               for i, g in enumerate(self._leaves_of_super) if len(g) < classes_per_super]
        if self.classes_per_batch == 1:
            warnings.warn(
                f"hierarchical sampler with batch_size {batch_size} = m * classes_per_super "
                f"and classes_per_super 1: every batch holds one class, {ONE_CLASS_BATCHES} "
                "(classes_per_super >= 2, or batch_size >= 2 * m * classes_per_super)",
                UserWarning, stacklevel=2)
        elif self.min_classes_per_batch == 1:
            alone = (f"hierarchical sampler with one super-class per batch (batch_size "
                     f"{batch_size} = m * classes_per_super): level-{super_level} "
                     f"super-classes {first_few(few)} hold a single class and fill a batch "
                     "alone")
            fix = "batch_size >= 2 * m * classes_per_super: two super-classes a batch"
            warnings.warn(
                f"{alone}: every batch holds one class, {ONE_CLASS_BATCHES} ({fix})"
                if len(few) == len(supers) else
                f"{alone}: those batches hold one class and no negative pair, from which "
                f"pair, triplet and tuple losses learn nothing; put two classes in every "
                f"batch ({fix})",
                UserWarning, stacklevel=2)
        elif self.min_classes_per_batch < self.classes_per_batch:
            fewest = min(len(g) for g in self._leaves_of_super)
            warnings.warn(
                f"hierarchical sampler: level-{super_level} super-classes {first_few(few)} "
                f"hold fewer than classes_per_super={classes_per_super} classes, so some "
                f"batches hold as few as {self.min_classes_per_batch} distinct classes of the "
                f"{self.classes_per_batch} asked (their classes are drawn again to fill the "
                f"batch); classes_per_super <= {fewest} (the fewest classes of a super-class) "
                "has every batch hold the classes asked",
                UserWarning, stacklevel=2)
        self.labels = labels
        self.batch_size = batch_size
        self.m = m
        self.super_level = super_level
        default = max(1, len(labels_np) // batch_size)
        self.num_batches = num_batches if num_batches is not None else default
        if self.num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {self.num_batches}")
        self.seed = seed
        self.epoch = 0

    @property
    def classes_per_batch(self) -> int:
        """Classes (leaves) asked of every batch (1: no negative pair in any batch); a batch
        holds at least :attr:`min_classes_per_batch` distinct ones."""
        return self.supers_per_batch * self.classes_per_super

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration draw the batches of ``epoch`` (deterministically)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        super_cycle = _Cycle(np.arange(len(self._leaves_of_super)), rng)
        leaf_cycles = [_Cycle(leaves, rng) for leaves in self._leaves_of_super]
        item_cycles = [_Cycle(items, rng) for items in self._items_of_leaf]
        for _ in range(self.num_batches):
            batch: list[int] = []
            for s in super_cycle.take(self.supers_per_batch):
                for leaf in leaf_cycles[s].take(self.classes_per_super):
                    batch.extend(item_cycles[leaf].take(self.m).tolist())
            yield batch
