"""Offline hard-negative mining: between epochs, embed the whole training set and find
each item's hardest negatives with an exact chunked k-nearest-neighbour search.

In-batch miners only see the negatives a random batch happens to hold; mining over the
dataset finds the globally hardest ones (as in FaceNet's offline variant, Schroff et al.
2015, and hard-negative mining for retrieval generally). Three levels of use:

* :func:`hardest_negatives` / :func:`mine_hard_triplets`: pure functions on embeddings;
* :class:`OfflineHardNegativeSampler`: a batch sampler whose ``set_epoch`` (called by
  the :class:`~dmlkit.training.Trainer` at the start of every epoch) re-embeds the data
  with the current model, mines triplets, and yields batches that hold each triplet's
  anchor, positive and hard negative together, so any miner and loss sees them;
* ``sampler.tuple_dataset()``: the mined triplets as a weak-supervision
  :class:`~dmlkit.data.tuples.TupleDataset` (batches with explicit ``Triplets``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Sampler

from dmlkit._checks import check_int
from dmlkit.data.tuples import LabelGroups, TupleDataset
from dmlkit.distances.base import BaseDistance
from dmlkit.distances.euclidean import EuclideanDistance
from dmlkit.functional.chunking import chunk_size_for, row_chunks
from dmlkit.functional.distances import pairwise_squared_euclidean
from dmlkit.functional.labels import check_labels, pos_neg_masks, same_label
from dmlkit.functional.tuples import Triplets
from dmlkit.registry import register_sampler

PositiveRule = Literal["random", "hardest"]


@torch.no_grad()
def hardest_negatives(
    embeddings: Tensor,
    labels: Tensor,
    k: int,
    distance: BaseDistance | None = None,
    budget: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The ``k`` closest items of another class for every item (exact, chunked).

    Parameters
    ----------
    embeddings : Tensor (n, dim)
    labels : Tensor (n,) or (n, L) or (n, C) bool
        Any label kind :func:`~dmlkit.functional.same_label` understands.
    k : int
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.EuclideanDistance` on normalized embeddings.
    budget : int, optional
        Elements of the ``(chunk, n)`` distance block (default 16M).

    Returns
    -------
    values : Tensor (n, k) float
        Distances (or similarities), closest first; ``inf`` (``-inf``) where padded.
    indices : Tensor (n, k) int64
        Item ids of the negatives; ``-1`` where an item has fewer than ``k`` negatives.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    labels = check_labels(labels, embeddings.shape[0], allow_empty_rows=False)
    distance = distance if distance is not None else EuclideanDistance()
    x = distance.maybe_normalize(embeddings.detach().float())
    n = x.shape[0]
    sign = -1.0 if distance.is_similarity else 1.0
    # Euclidean: rank by the squared distance (same order), take roots of the k kept only
    root = isinstance(distance, EuclideanDistance) and not distance.squared
    kk = min(k, n)
    values = x.new_full((n, k), float("inf"))
    indices = torch.full((n, k), -1, dtype=torch.long, device=x.device)
    chunk = chunk_size_for(n, 4 * n) if budget is None else chunk_size_for(n, n, budget)
    for a, b in row_chunks(n, chunk):
        if root:
            e = pairwise_squared_euclidean(x[a:b], x)  # (c, n)
        else:
            e = sign * distance.compute_matrix(x[a:b], x)  # (c, n), smaller = closer
        same = same_label(labels[a:b], labels)  # (c, n)
        v, i = e.masked_fill_(same, float("inf")).topk(kk, dim=1, largest=False)  # (c, kk)
        values[a:b, :kk] = v.sqrt() if root else v
        indices[a:b, :kk] = torch.where(torch.isinf(v), torch.full_like(i, -1), i)
    return sign * values, indices


@torch.no_grad()
def mine_hard_triplets(
    embeddings: Tensor,
    labels: Tensor,
    k: int = 10,
    triplets_per_anchor: int = 1,
    positive: PositiveRule = "random",
    distance: BaseDistance | None = None,
    seed: int = 0,
) -> Triplets:
    """Triplets ``(a, p, n)`` over a whole dataset with ``n`` among ``a``'s ``k`` hardest negatives.

    Each anchor with a positive and a negative gets ``triplets_per_anchor`` triplets;
    negatives are drawn uniformly (with replacement) from its ``k`` hardest (sampling
    from the top ``k`` instead of always the hardest tempers label noise), positives
    uniformly among its class (``"random"``) or its farthest positive (``"hardest"``).

    Parameters
    ----------
    embeddings : Tensor (n, dim)
    labels : Tensor (n,) int
        Class labels.
    k, triplets_per_anchor : int
    positive : {"random", "hardest"}
    distance : BaseDistance, optional
    seed : int
        Seed of the draws (no global random state is used).

    Returns
    -------
    Triplets
        Item ids, each ``(T,)`` int64, grouped by anchor.
    """
    if labels.dim() != 1:
        raise ValueError(
            f"offline mining needs class labels of shape (n,), got {tuple(labels.shape)}"
        )
    if positive not in ("random", "hardest"):
        raise ValueError(f"positive must be 'random' or 'hardest', got {positive!r}")
    if triplets_per_anchor < 1:
        raise ValueError(f"triplets_per_anchor must be >= 1, got {triplets_per_anchor}")
    distance = distance if distance is not None else EuclideanDistance()
    _, neg_idx = hardest_negatives(embeddings, labels, k, distance)  # (n, k)
    labels = labels.to(neg_idx.device)
    g = torch.Generator().manual_seed(seed)
    n_valid = (neg_idx >= 0).sum(dim=1)  # (n,)
    groups = LabelGroups(labels)
    anchors = torch.where((n_valid > 0) & (groups.class_size >= 2))[0]  # (r,)
    t = triplets_per_anchor
    a = anchors.repeat_interleave(t)  # (r * t,)
    pick = (torch.rand(a.shape, generator=g).to(a.device) * n_valid[a]).long()  # (r * t,)
    negatives = neg_idx[a, pick.clamp_max(n_valid[a] - 1)]
    if positive == "hardest":
        positives = _farthest_positive(embeddings, labels, distance)[a]
    else:
        positives = groups.positives(a, g)
    return Triplets(a, positives, negatives)


def _fit_triplets(rows: np.ndarray, items: list[int], cap: int, multiple: int) -> list[int]:
    """The distinct members of the most leading ``rows (t, 3)`` whose count, rounded up to
    ``multiple``, is at most ``cap``; a prefix of ``items`` (their first-appearance order).
    The first triplet always fits (``cap >= 3`` is a multiple of ``multiple``: see the
    sampler's ``batch_multiple``), so no triplet is ever cut."""
    seen: set[int] = set()
    keep = 0  # distinct items of the whole triplets kept so far
    for row in rows.tolist():
        seen.update(row)
        if len(seen) + (-len(seen) % multiple) > cap:
            break
        keep = len(seen)
    if not keep:  # (unreachable while the sampler's check holds)
        raise ValueError(f"no whole triplet fits in {cap} items")
    return items[:keep]


def _farthest_positive(embeddings: Tensor, labels: Tensor, distance: BaseDistance) -> Tensor:
    """``(n,)`` id of each item's farthest same-class item (itself when it has none)."""
    x = distance.maybe_normalize(embeddings.detach().float())
    n = x.shape[0]
    sign = -1.0 if distance.is_similarity else 1.0
    out = torch.arange(n, device=x.device)
    for a, b in row_chunks(n, chunk_size_for(n, 2 * n)):
        e = sign * distance.compute_matrix(x[a:b], x)  # (c, n)
        pos, _ = pos_neg_masks(labels[a:b], labels, exclude_self=True, row_offset=a)
        v, i = e.masked_fill(~pos, -float("inf")).max(dim=1)  # (c,)
        out[a:b] = torch.where(torch.isinf(v), out[a:b], i)
    return out


def _no_triplet_reason(labels: Tensor) -> str | None:
    """Why no triplet can be mined from ``(n,)`` class ``labels`` (a triplet needs two
    classes, and a class of two items), or None when both hold."""
    classes, counts = torch.unique(labels.reshape(-1), return_counts=True)
    start = "sampler offline_hard_negative cannot mine a triplet: "
    if len(classes) == 1:
        return (f"{start}the data has one class (label {classes[0].item()}, "
                f"{counts[0].item()} items); a triplet needs a negative of another class: "
                "give data with at least two classes")
    if len(classes) and int(counts.max()) < 2:
        return (f"{start}each of the {len(classes)} classes has one item; a triplet needs "
                "an anchor and a positive of one class: give data where at least one class "
                "has two items")
    return None


@register_sampler("offline_hard_negative")
class OfflineHardNegativeSampler(Sampler[list[int]]):
    """Batches built around hard triplets mined over the whole dataset each epoch.

    ``set_epoch(epoch)`` (the trainer calls it before every epoch) embeds the dataset
    with ``model`` in eval mode, mines triplets with :func:`mine_hard_triplets`
    (re-mining every ``every`` epochs), and shuffles them; iteration yields lists of
    dataset indices, each the union of ``batch_size // 3`` triplets (so a batch holds
    every mined anchor together with its positive and its hard negative), topped up to a
    multiple of ``batch_multiple`` items; where that would pass ``batch_size``, the last
    triplets of the batch are left out first. Deterministic
    given ``seed``, the epoch and the model's weights; :meth:`state_dict` holds the mined
    triplets, so a resumed run (re-mining only every ``every`` epochs) batches exactly as
    an uninterrupted one. From a config (``sampler: {name: offline_hard_negative, ...}``)
    the trainer supplies ``dataset`` and ``model``.

    Parameters
    ----------
    dataset : ArrayDataset-like
        Has ``x`` (inputs) and ``labels`` (n,) attributes.
    model : nn.Module
        The model being trained (the same object the trainer updates).
    batch_size : int
        At most this many items per batch (>= 3, and >= ``batch_multiple``).
    k, triplets_per_anchor, positive, distance :
        See :func:`mine_hard_triplets` (``k`` and ``triplets_per_anchor`` integers >= 1).
    num_batches : int, optional
        Batches per epoch (an integer >= 1); default (None)
        ``len(dataset) * triplets_per_anchor // (batch_size // 3)``.
    every : int
        Re-mine every ``every`` epochs.
    embed_batch_size : int
    seed : int
    batch_multiple : int
        Every batch's size is a multiple of this and at most ``batch_size``: a batch of
        distinct triplet members (whose count varies with shared items) is topped up with
        other items of the dataset, drawn with the batch's seeded generator; when the
        top-up would pass ``batch_size``, whole triplets are dropped from the batch's end
        (and, should even one triplet not fit, its last members). The multi-process
        trainer sets it to the number of processes, which must split each batch evenly.
    """

    #: mines by the class labels of ``dataset``: tuple data (no labels) cannot use it
    needs_labels = True

    def __init__(
        self,
        dataset,  # noqa: ANN001 - any dataset with .x and .labels
        model: nn.Module,
        batch_size: int = 96,
        k: int = 10,
        triplets_per_anchor: int = 1,
        positive: PositiveRule = "random",
        distance: BaseDistance | None = None,
        num_batches: int | None = None,
        every: int = 1,
        embed_batch_size: int = 512,
        seed: int = 0,
        batch_multiple: int = 1,
    ) -> None:
        batch_size = check_int("batch_size", batch_size, 3)
        k = check_int("k", k, 1)
        triplets_per_anchor = check_int("triplets_per_anchor", triplets_per_anchor, 1)
        if positive not in ("random", "hardest"):
            raise ValueError(f"positive must be 'random' or 'hardest', got {positive!r}")
        if num_batches is not None:  # (None: the default; 0 is refused, not replaced)
            num_batches = check_int("num_batches", num_batches, 1)
        every = check_int("every", every, 1)
        embed_batch_size = check_int("embed_batch_size", embed_batch_size, 1)
        seed = check_int("seed", seed, 0)
        labels = getattr(dataset, "labels", None)
        if isinstance(labels, Tensor) and labels.dim() != 1:
            raise ValueError(
                "sampler offline_hard_negative mines by (n,) class ids; with hierarchical "
                f"(n, L) labels (these are {tuple(labels.shape)}) use sampler: hierarchical "
                "(with loss hierarchical_triplet, or a miner such as batch_hard)")
        if isinstance(labels, Tensor):
            missing = _no_triplet_reason(labels)
            if missing:
                raise ValueError(missing)
        self.dataset = dataset
        self.model = model
        self.batch_size = batch_size
        self.k = k
        self.triplets_per_anchor = triplets_per_anchor
        self.positive = positive
        self.distance = distance
        per_batch = batch_size // 3
        self.num_batches = (num_batches if num_batches is not None
                            else max(1, len(dataset) * triplets_per_anchor // per_batch))
        self.every = every
        self.embed_batch_size = embed_batch_size
        self.seed = seed
        self.batch_multiple = batch_multiple  # (checked by the property)
        self.epoch = 0
        self.triplets: Triplets | None = None
        self._mined_epoch: int | None = None

    @property
    def batch_multiple(self) -> int:
        return self._batch_multiple

    @batch_multiple.setter
    def batch_multiple(self, value: int) -> None:
        """Checked whenever set (the distributed trainer sets it to the process count):
        every batch must hold at least one whole triplet in a multiple of ``value``."""
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"batch_multiple must be an integer >= 1, got {value!r}")
        if self.batch_size - self.batch_size % value < 3:
            raise ValueError(
                f"batch_size {self.batch_size} holds no whole triplet (3 items) in a multiple "
                f"of {value} items (batch_multiple, e.g. the number of processes): raise "
                f"batch_size to at least {max(3, value) + (-max(3, value)) % value}")
        self._batch_multiple = value

    def set_epoch(self, epoch: int) -> None:
        """Select ``epoch``; mine with the current model when it is a mining epoch."""
        self.epoch = int(epoch)
        mining_epoch = self.epoch - self.epoch % self.every
        if self._mined_epoch != mining_epoch or self.triplets is None:
            self.triplets = self.mine(seed=self.seed + mining_epoch)
            self._mined_epoch = mining_epoch

    def state_dict(self) -> dict[str, Any]:
        """The epoch and the triplets mined for it (what a resumed run needs)."""
        trip = None if self.triplets is None else torch.stack(list(self.triplets), 1).cpu()
        return {"epoch": self.epoch, "mined_epoch": self._mined_epoch, "triplets": trip}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        mined, trip = state["mined_epoch"], state["triplets"]
        self._mined_epoch = None if mined is None else int(mined)
        self.triplets = None if trip is None else Triplets(*trip.long().unbind(1))

    def mine(self, seed: int | None = None) -> Triplets:
        """Embed the dataset with the current model and mine its hard triplets."""
        from dmlkit.training.run import embed

        device = next(self.model.parameters()).device
        emb, labels = embed(self.model, self.dataset, self.embed_batch_size, device)
        return mine_hard_triplets(
            emb,
            labels,
            self.k,
            self.triplets_per_anchor,
            self.positive,
            self.distance,
            self.seed if seed is None else seed,
        )

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        if self.triplets is None:
            self.set_epoch(self.epoch)
        trip = torch.stack(list(self.triplets), dim=1).cpu().numpy()  # (T, 3)
        if len(trip) == 0:
            labels = getattr(self.dataset, "labels", None)
            raise ValueError(
                (_no_triplet_reason(labels) if isinstance(labels, Tensor) else None)
                or "sampler offline_hard_negative mined no triplet: no item has both another "
                "item of its class and a negative among its k nearest items of other classes "
                "(e.g. NaN embeddings); check the model's embeddings of the training data")
        rng = np.random.default_rng([self.seed, self.epoch])
        per_batch = self.batch_size // 3
        need = self.num_batches * per_batch
        order = np.concatenate([rng.permutation(len(trip)) for _ in range(-(-need // len(trip)))])
        n = len(self.dataset)
        m = self.batch_multiple
        cap = self.batch_size - self.batch_size % m  # the largest multiple of m that fits
        for i in range(self.num_batches):
            rows = trip[order[i * per_batch : (i + 1) * per_batch]]  # (per_batch, 3)
            _, first = np.unique(rows.ravel(), return_index=True)
            items = rows.ravel()[np.sort(first)].tolist()  # distinct items, in triplet order
            if len(items) + (-len(items) % m) > cap:  # the top-up would pass batch_size
                items = _fit_triplets(rows, items, cap, m)
            extra = -len(items) % m
            if extra > n - len(items):
                raise ValueError(
                    f"a batch of {len(items)} items cannot be topped up to a multiple of "
                    f"{self.batch_multiple} from a dataset of {n} items")
            taken = set(items)
            while extra:  # other items of the dataset, seeded: every process draws the same
                item = int(rng.integers(n))
                if item not in taken:
                    taken.add(item)
                    items.append(item)
                    extra -= 1
            yield items

    def tuple_dataset(self) -> TupleDataset:
        """The current mined triplets as a :class:`~dmlkit.data.tuples.TupleDataset`."""
        if self.triplets is None:
            self.set_epoch(self.epoch)
        return TupleDataset(torch.stack(list(self.triplets), dim=1).cpu(), self.dataset.x)


__all__ = ["hardest_negatives", "mine_hard_triplets", "OfflineHardNegativeSampler"]
