"""Cross-batch memory (Wang, Zhang, Huang & Scott, XBM, CVPR 2020)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from dmlkit._checks import check_int
from dmlkit.functional.distances import check_embeddings
from dmlkit.functional.labels import check_labels, same_label
from dmlkit.functional.tuples import IndexTuple, Pairs, as_index_tuple, check_indices
from dmlkit.losses._rows import chunk_bounds
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.losses.fast_ap import FastAPLoss
from dmlkit.losses.nca import NCALoss
from dmlkit.losses.quadruplet import QuadrupletLoss
from dmlkit.losses.weight_classifier import WeightClassifierLoss
from dmlkit.registry import register_loss

#: tuple losses that cannot learn from the memory's pairs, and why
_NOT_FROM_MEMORY_PAIRS: dict[type, str] = {
    FastAPLoss: "takes its positives from the labels (the tuples only weight the anchors), "
    "so each anchor would count its own memory slot as a positive",
    NCALoss: "takes its positives from the labels (the tuples only weight the anchors), "
    "so each anchor would count its own memory slot as a positive",
    QuadrupletLoss: "would get pairs from the memory and train its triplet term only "
    "(its second term needs quadruplets)",
}
#: losses that learn from the memory's pairs, for messages
_MEMORY_LOSSES = "contrastive, triplet_margin, multi_similarity, ntxent, supcon, circle"


@register_loss("cross_batch_memory")
class CrossBatchMemory(BaseMetricLoss):
    """A FIFO memory of past embeddings used as the reference set of an inner loss.

    Each call first enqueues the batch (detached) into a ring buffer of ``memory_size``
    embeddings and labels, then computes ``loss(embeddings, labels, indices=tuples,
    ref_embeddings=memory, ref_labels=memory_labels)``: anchors come from the batch,
    positives and negatives from the memory. The tuples are every (anchor, memory) pair
    except each anchor with its own memory slot, or a ``miner``'s tuples against the
    memory (self-comparisons removed too). This is pytorch-metric-learning's
    ``CrossBatchMemory``: the same values and gradients for calls without ``indices``
    (with its own ``miner`` or without, and with ``enqueue_mask``). Explicit ``indices``
    differ: pytorch-metric-learning adds them to the memory's tuples, dmlkit uses them
    in their place (see Notes), so a miner of the batch alone (training's top-level
    ``miner``, refused with this loss) would leave the memory unused; give the miner to
    this loss (``miner``) to mine the batch against the memory.

    Parameters
    ----------
    loss : BaseMetricLoss
        A tuple loss that accepts ``indices`` and ``ref_embeddings`` and learns from
        those tuples (e.g. contrastive, triplet_margin, multi_similarity, ntxent,
        supcon). Refused (``ValueError``), also nested in another loss: classifier and
        proxy losses; ``FastAPLoss`` and ``NCALoss``, which take positives from the
        labels and would count each anchor's own memory slot as a positive; and
        ``QuadrupletLoss``, whose second term needs quadruplets the memory does not form.
    embedding_size : int
        ``dim`` of the embeddings.
    memory_size : int
        Number of stored embeddings. A batch larger than the memory keeps its last
        ``memory_size`` items.
    miner : BaseMiner, optional
        Mines tuples between the batch and the memory.
    detach_batch : bool
        True (default): the batch's own memory slots are detached like the rest of the
        memory, as in XBM and pytorch-metric-learning. False: gradients also flow
        through the batch's slots (the loss is then an ordinary function of the batch
        when the memory holds only the batch).

    Notes
    -----
    ``forward(embeddings, labels, *, indices=None, enqueue_mask=None)``. ``indices``
    are tuples within the current batch; they replace the memory's tuples (mapped to the
    batch's memory slots, so only the batch's own slots are compared with: the rest of
    the memory is not used). ``enqueue_mask`` (bool ``(n,)``) enqueues the masked items
    without using them as anchors, and the rest are anchors only (then no
    self-comparison exists). A call with no anchors (``enqueue_mask`` all True) or an
    empty memory (nothing enqueued yet) still enqueues and returns a zero loss that
    backpropagates. :meth:`reset` empties the memory. Wang et al.,
    "Cross-Batch Memory for Embedding Learning", CVPR 2020.
    """

    #: the memory stores each embedding's label: batches without labels cannot fill it
    requires_labels = True

    def __init__(
        self,
        loss: BaseMetricLoss,
        embedding_size: int,
        memory_size: int = 1024,
        miner: Any = None,
        detach_batch: bool = True,
    ) -> None:
        super().__init__(distance=None)
        # (classifier and proxy losses take mined tuples as sample weights, but have no
        # reference-set form)
        if (
            not isinstance(loss, BaseMetricLoss)
            or not loss.accepts_indices
            or isinstance(loss, WeightClassifierLoss)
        ):
            raise ValueError(
                f"CrossBatchMemory needs a tuple loss that takes indices and reference "
                f"embeddings, got {type(loss).__name__}"
            )
        _check_learns_from_pairs(loss)
        check_int("embedding_size", embedding_size)
        check_int("memory_size", memory_size)
        self.distance = loss.distance  # the inner loss measures
        self.loss = loss
        self.embedding_size = int(embedding_size)
        self.memory_size = int(memory_size)
        self.miner = miner
        self.detach_batch = detach_batch
        self.register_buffer("embedding_memory", torch.zeros(self.memory_size, self.embedding_size))
        self.register_buffer("label_memory", torch.zeros(self.memory_size, dtype=torch.long))
        self.queue_idx = 0
        self.has_been_filled = False

    def reset(self) -> None:
        """Empty the memory."""
        self.embedding_memory.zero_()
        self.label_memory.zero_()
        self.queue_idx = 0
        self.has_been_filled = False

    def get_extra_state(self) -> dict[str, Any]:
        return {"queue_idx": self.queue_idx, "has_been_filled": self.has_been_filled}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.queue_idx = int(state["queue_idx"])
        self.has_been_filled = bool(state["has_been_filled"])

    def forward(  # type: ignore[override]
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        *,
        indices: Any = None,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
        enqueue_mask: Tensor | None = None,
    ) -> Tensor:
        check_embeddings(embeddings)
        if labels is None:
            raise ValueError("CrossBatchMemory needs labels (they are stored with the embeddings)")
        labels = check_labels(labels, embeddings.shape[0])
        if labels.dim() != 1:
            raise ValueError(
                f"CrossBatchMemory stores (n,) class labels, got shape {tuple(labels.shape)}"
            )
        if ref_embeddings is not None or ref_labels is not None:
            raise ValueError(
                "CrossBatchMemory provides the reference set itself; pass no ref_embeddings"
            )
        if embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"embeddings have dim {embeddings.shape[1]}, "
                f"memory has embedding_size {self.embedding_size}"
            )
        if indices is not None and enqueue_mask is not None:
            raise ValueError("indices and enqueue_mask are mutually exclusive")
        n = embeddings.shape[0]
        if indices is not None:
            indices = as_index_tuple(indices)
            check_indices(indices, n, n)
        if enqueue_mask is not None:
            if enqueue_mask.dtype != torch.bool or enqueue_mask.shape != (n,):
                raise ValueError(f"enqueue_mask must be a bool tensor of shape ({n},)")
            queued, queries = enqueue_mask, ~enqueue_mask
        else:
            queued = queries = torch.ones(n, dtype=torch.bool, device=embeddings.device)
        if n == 0:
            return self.zero_loss(embeddings)
        slot = self._enqueue(embeddings, labels, queued)  # (n,) memory slot or -1
        filled = self.memory_size if self.has_been_filled else self.queue_idx
        if filled == 0 or not bool(queries.any()):  # nothing to compare: no anchors or memory
            return self.zero_loss(embeddings)
        mem = self.embedding_memory[:filled]  # (M, d)
        mem_labels = self.label_memory[:filled]  # (M,)
        if not self.detach_batch:  # live embeddings in the batch's own slots
            live = slot >= 0
            mem = mem.index_copy(0, slot[live], embeddings[live].to(mem.dtype))
        q_emb, q_labels, q_slot = embeddings[queries], labels[queries], slot[queries]
        if enqueue_mask is not None:
            q_slot = torch.full_like(q_slot, -1)  # queries are not in the memory
        tuples = self._tuples(q_emb, q_labels, mem, mem_labels, q_slot, indices, slot)
        return self.loss(q_emb, q_labels, indices=tuples, ref_embeddings=mem, ref_labels=mem_labels)

    def _enqueue(self, embeddings: Tensor, labels: Tensor, queued: Tensor) -> Tensor:
        items = torch.nonzero(queued).squeeze(1)  # (q,)
        q = items.numel()
        slot = torch.full((embeddings.shape[0],), -1, dtype=torch.long, device=embeddings.device)
        if q == 0:
            return slot
        if q > self.memory_size:  # only the last memory_size items fit
            skip = q - self.memory_size
            self.queue_idx = (self.queue_idx + skip) % self.memory_size
            items, q = items[skip:], self.memory_size
            self.has_been_filled = True
        slots = (self.queue_idx + torch.arange(q, device=embeddings.device)) % self.memory_size
        self.embedding_memory = self.embedding_memory.to(embeddings.device, embeddings.dtype)
        self.label_memory = self.label_memory.to(embeddings.device)
        with torch.no_grad():
            self.embedding_memory[slots] = embeddings[items].detach()
            self.label_memory[slots] = labels[items]
        slot[items] = slots
        prev = self.queue_idx
        self.queue_idx = (self.queue_idx + q) % self.memory_size
        if self.queue_idx <= prev:
            self.has_been_filled = True
        return slot

    def _tuples(
        self,
        emb: Tensor,
        labels: Tensor,
        mem: Tensor,
        mem_labels: Tensor,
        q_slot: Tensor,
        indices: IndexTuple | None,
        batch_slot: Tensor,
    ) -> IndexTuple:
        if indices is not None:  # batch tuples -> memory slots of their members
            if isinstance(indices, Pairs):
                a1, p, a2, n = indices
                p_s, n_s = batch_slot[p], batch_slot[n]
                pos_keep = (p_s >= 0) & (p_s != q_slot[a1])
                neg_keep = n_s >= 0
                return Pairs(a1[pos_keep], p_s[pos_keep], a2[neg_keep], n_s[neg_keep])
            a, rest = indices[0], [batch_slot[t] for t in indices[1:]]
            keep = rest[0] != q_slot[a]
            for t in rest:
                keep &= t >= 0
            return type(indices)(a[keep], *(t[keep] for t in rest))
        if self.miner is not None:
            mined = self.miner(emb, labels, mem.detach(), mem_labels)
            a, p = mined[0], mined[1]
            keep = p != q_slot[a]  # drop anchor vs its own slot
            if isinstance(mined, Pairs):
                return Pairs(a[keep], p[keep], mined.a2, mined.n)
            return type(mined)(*(t[keep] for t in mined))
        return _all_pairs_but_self(labels, mem_labels, q_slot)


def _check_learns_from_pairs(loss: BaseMetricLoss) -> None:
    """Refuse ``loss`` (or a loss nested in it) that cannot learn from the memory's pairs."""
    for module in loss.modules():
        for cls, why in _NOT_FROM_MEMORY_PAIRS.items():
            if isinstance(module, cls):
                name = type(module).__name__
                key = getattr(type(module), "registry_name", None)
                raise ValueError(
                    f"CrossBatchMemory cannot wrap {name}{f' ({key!r})' if key else ''}: it "
                    f"{why}; wrap a pair or triplet loss instead (e.g. {_MEMORY_LOSSES})"
                )


def _all_pairs_but_self(labels: Tensor, mem_labels: Tensor, q_slot: Tensor) -> Pairs:
    """Every (query, memory) pair except each query with its own slot, row chunked."""
    a1, p, a2, n = [], [], [], []
    m = mem_labels.shape[0]
    _, bounds = chunk_bounds(labels.shape[0], m)
    for start, stop in bounds:
        same = same_label(labels[start:stop], mem_labels)  # (c, m)
        own = q_slot[start:stop, None] == torch.arange(m, device=labels.device)  # (c, m)
        i, j = torch.where(same & ~own)
        a1.append(i + start)
        p.append(j)
        i, j = torch.where(~same)
        a2.append(i + start)
        n.append(j)
    if not a1:  # no query rows
        empty = torch.empty(0, dtype=torch.long, device=labels.device)
        return Pairs(empty, empty, empty, empty)
    return Pairs(torch.cat(a1), torch.cat(p), torch.cat(a2), torch.cat(n))
