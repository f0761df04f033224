"""Multi-process training on PyTorch's distributed engine (``torchrun``, gloo or nccl).

``torchrun --nproc-per-node N -m dmlkit train CONFIG`` starts N processes; each embeds
its share of every batch, the embeddings and labels of all processes are gathered (with
gradients flowing back to their owners), and every process computes the miner and the
loss on the *global* batch, so negatives come from all processes. Gradients of the
model and the loss (proxies) are averaged across processes after each backward pass.
Since the gather's backward pass sums every process's gradient of the (identical)
global loss, the averaged gradients equal those of one process on the concatenated
batch: N processes train like one process with the same global batch.

All processes draw the same batches from the same seeded sampler and take interleaved
slices of each; checkpoints, logs and metrics are written by rank 0 only, and a
checkpoint resumes on any number of processes that divides its batch size (the batch
size is the checkpoint's; a resume on another count is refused with the counts that
work). Offline mining (``offline_hard_negative``) tops each batch up to a multiple of the
process count, so its runs differ slightly from one process. Batch norm uses each
process's own batch statistics (as DistributedDataParallel does by default).
"""

from __future__ import annotations

import atexit
import os
import re
import threading
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from dmlkit.training.grad_cache import training_batch_norms
from dmlkit.training.trainer import Trainer, regularization


def world_size_from_env() -> int:
    """``WORLD_SIZE`` set by torchrun (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA).

    Returns whether training is distributed (more than one process).
    """
    if world_size_from_env() <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        _join_group(backend)
        # kept for the life of the process: later runs in the same processes reuse it
        # (joining a new group over the launcher's store again can hang), and it is
        # released when the process exits
        atexit.register(_release_group)
    return dist.get_world_size() > 1


def _join_group(backend: str) -> None:
    """``dist.init_process_group(backend)``, waited for where signals still reach Python.

    Joining blocks until every process of the job has joined, in C++ code that never runs
    Python's signal handlers: a process waiting for another that failed before joining
    (its run directory refused) would ignore the launcher's SIGTERM, and the job would
    hang until the launcher kills it. The join runs in a helper thread; the main thread
    waits for it, and a SIGTERM or Ctrl-C there unwinds as it does during training.
    """
    failure: list[BaseException] = []

    def join() -> None:
        try:
            dist.init_process_group(backend)
        except BaseException as err:  # raised again in the main thread
            failure.append(err)

    helper = threading.Thread(target=join, name="dmlkit-join-process-group", daemon=True)
    helper.start()
    helper.join()  # (interrupted by a signal's KeyboardInterrupt: the helper is left)
    if failure:
        raise failure[0]


def lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is the distributed engine's error for a process of the job that is
    gone (killed, or ended by its own error) or unreachable: torch.distributed's errors
    (``DistBackendError``, a store's ``DistNetworkError``) and gloo's broken connections
    (``RuntimeError`` raised by its transport: "Connection reset by peer"). Only in a
    torchrun job (``WORLD_SIZE`` above 1); gloo's failed checks (``enforce fail``) are
    not: they are bugs."""
    if world_size_from_env() <= 1 or not isinstance(err, RuntimeError):
        return False
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    message = str(err)
    return "gloo/transport/" in message and "enforce fail" not in message


def lost_peer_reason(err: BaseException) -> str:
    """The gist of a :func:`lost_peer` error, for one line: its first sentence, without
    gloo's ``[file:line]`` prefix (``Read error [127.0.0.1]:41130: Connection reset by
    peer``)."""
    lines = str(err).strip().splitlines()
    first = re.sub(r"^\[[^\]]*\]\s*", "", lines[0]) if lines else ""
    first = first.split(". ")[0].rstrip(". ")
    return first or type(err).__name__


def _release_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def check_same_rows(x: Tensor) -> None:
    """Refuse, on every process alike, a gather of ``x`` whose shape differs between the
    processes (a collective of equal-sized parts would read past the smaller ones)."""
    shape = torch.tensor([x.dim(), *x.shape, *[0] * (8 - x.dim())][:9], device=x.device)
    shapes = [torch.empty_like(shape) for _ in range(dist.get_world_size())]
    dist.all_gather(shapes, shape)
    seen = [tuple(int(v) for v in s[1 : 1 + int(s[0])]) for s in shapes]
    if len(set(seen)) > 1:
        raise ValueError(f"every process must gather a tensor of the same shape, got "
                         f"{', '.join(f'{r}: {s}' for r, s in enumerate(seen))} "
                         "(process: shape); give each process as many rows")


def gather_with_grad(x: Tensor, *, check_rows: bool = True) -> Tensor:
    """``(world * n, ...)``: every process's ``x`` in rank order, differentiable.
    ``check_rows`` (one small collective) refuses shapes that differ between processes
    (:func:`check_same_rows`); a caller that already splits evenly turns it off."""
    import warnings

    from torch.distributed.nn.functional import all_gather

    if check_rows:
        check_same_rows(x)
    with warnings.catch_warnings():  # its backward sums every process's gradient, as needed
        warnings.simplefilter("ignore", FutureWarning)
        # the group named now: the function's default is bound to the first process group,
        # gone once a run has destroyed it (a second train_run in the same processes)
        return torch.cat(all_gather(x.contiguous(), group=dist.group.WORLD))


def gather(x: Tensor, *, check_rows: bool = True) -> Tensor:
    """``(world * n, ...)``: every process's ``x`` in rank order (no gradient);
    ``check_rows`` as in :func:`gather_with_grad`."""
    if check_rows:
        check_same_rows(x)
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def sampler_order(n: int, world: int) -> Tensor:
    """``(n,)`` positions that put a gathered batch back in the sampler's order.

    Process ``r`` embeds the interleaved share ``batch[r::world]`` (each share then mixes
    the batch's classes, as batch norm wants); the gather concatenates the shares in rank
    order, so item ``p`` of the batch sits at ``(p % world) * (n // world) + p // world``.
    Losses that depend on the order (a cross-batch memory that wraps inside a batch,
    smooth-AP's blocks) then see the batch as one process does.
    """
    p = torch.arange(n)
    return (p % world) * (n // world) + p // world


def global_batch_loss(loss: Any, miner: Any, embeddings: Tensor, labels: Tensor) -> Tensor:
    """The loss of the gathered global batch, in the sampler's order (the miner, if any,
    mines it)."""
    world = dist.get_world_size()
    order = sampler_order(embeddings.shape[0] * world, world).to(embeddings.device)
    # (the trainer splits every batch evenly: DistributedTrainer.fetch)
    all_emb = gather_with_grad(embeddings, check_rows=False)[order]  # (world * B, d)
    all_labels = gather(labels, check_rows=False)[order.to(labels.device)]  # (no-op: 1 device)
    indices = miner(all_emb, all_labels) if miner is not None else None
    return loss(all_emb, all_labels, indices=indices)


def global_regularization(
    embeddings: Tensor, reference: Tensor | None, anchor_weight: float,
    uniformity_weight: float,
) -> Tensor | float:
    """:func:`~dmlkit.training.trainer.regularization` (anchor and uniformity terms) of the
    gathered global batch, as one process computes them on the concatenated batch."""
    return regularization(gather_with_grad(embeddings, check_rows=False),
                          None if reference is None else gather(reference, check_rows=False),
                          anchor_weight, uniformity_weight)  # fmt: skip


def average_gradients(*modules: torch.nn.Module) -> None:
    """Average the ``.grad`` of every parameter across processes (in place)."""
    world = dist.get_world_size()
    for module in modules:
        for p in module.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(world)


class DistributedTrainer(Trainer):
    """:class:`~dmlkit.training.Trainer` for one process of a torchrun job."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        topped_up = hasattr(self.sampler, "batch_multiple")
        if topped_up:  # batches of varying size (offline mining) are topped up to split
            self.sampler.batch_multiple = self.world  # evenly
        else:  # a fixed batch size that cannot split: refused before any epoch starts
            self._check_split()
        self._check_share()
        for module in (self.model, self.loss):
            for p in module.parameters():
                if p.requires_grad:
                    p.register_post_accumulate_grad_hook(self._average)
        if self.rank != 0:
            self.log = lambda _msg: None
        if topped_up and self.world > 1:
            self.log(
                "offline mining: each batch is topped up with other items to a "
                f"multiple of the {self.world} processes, so this run differs slightly "
                "from one process"
            )

    def _check_split(self) -> None:
        """Refuse a fixed batch size that does not split evenly over the processes. A run
        with a checkpoint (a resume) keeps the batch size it trained with: the message then
        lists the process counts that split it."""
        size = getattr(self.sampler, "batch_size", None)
        if not isinstance(size, int) or not size % self.world:
            return
        asked = getattr(self.sampler, "requested_batch_size", size)
        capped = (
            f" (the {asked} asked for, capped at the {size} training items: a batch "
            "holds each item at most once)"
            if asked != size
            else ""
        )
        start = f"the batch size {size}{capped} does not split evenly over {self.world} processes"
        checkpoint = self.checkpoint_path if self.out_dir is not None else None
        if checkpoint is None or not checkpoint.is_file():
            raise ValueError(
                f"{start}: make it a multiple of {self.world} (sampler.batch_size or "
                "training.batch_size)"
                + (", at most the number of training items" if capped else "")
            )
        # each process needs 2 items when batch norms train (_check_share)
        least = 2 if training_batch_norms(self.model) else 1
        counts = [str(n) for n in range(1, size + 1) if not size % n and size // n >= least]
        counts = counts or ["1"]
        listed = ", ".join(counts[:-1]) + f" or {counts[-1]}" if len(counts) > 1 else counts[0]
        raise ValueError(
            f"{start}, and the run's checkpoint ({checkpoint}) fixes its batch size: resume "
            f"it on {listed} processes (a new run in another directory may take another "
            "batch size)"
        )

    def _check_share(self) -> None:
        """Refuse a fixed batch size that gives each process one item when the model has
        batch norms that train: each process normalizes its own share, and one item has
        no batch statistics (as :func:`~dmlkit.training.grad_cache.check_grad_cache`
        refuses chunks of one)."""
        size = getattr(self.sampler, "batch_size", None)
        if hasattr(self.sampler, "batch_multiple") or not isinstance(size, int):
            return
        if size // self.world != 1:
            return
        norms = training_batch_norms(self.model)
        if norms:
            raise ValueError(
                f"each of the {self.world} processes gets batch_size / processes = {size} / "
                f"{self.world} = 1 item, but the model has batch norm layers "
                f"({', '.join(norms[:3])}{', ...' if len(norms) > 3 else ''}), which cannot "
                "normalize a single item in training mode: make the batch size at least "
                f"{2 * self.world} (sampler.batch_size or training.batch_size), or run fewer "
                "processes")

    def _average(self, p: Tensor) -> None:
        dist.all_reduce(p.grad)
        p.grad.div_(self.world)

    def fetch(self, indices: list[int]) -> Any:
        if len(indices) % self.world:  # every process gathers equal shares
            raise ValueError(
                f"a batch of {len(indices)} items does not split evenly over {self.world} "
                f"processes: make the batch size a multiple of {self.world} (sampler."
                "batch_size or training.batch_size), with a sampler of fixed-size batches")
        share = list(indices)[self.rank :: self.world]
        if not share:
            raise ValueError(f"a batch of {len(indices)} items cannot feed {self.world} processes")
        return super().fetch(share)

    def batch_loss(self, batch: Any) -> Tensor:
        inputs, labels, indices = self.unpack(batch)
        if indices is not None or labels is None:
            raise ValueError("multi-process training needs class labels (tuple data is not "
                             "supported across processes yet)")
        inputs = inputs.to(self.device, non_blocking=True)
        embeddings = self.embed_batch(inputs)  # (B / world, d)
        loss = global_batch_loss(self.loss, self.miner, embeddings, labels.to(self.device))
        tc = self.config.training
        if self.anchor_model is None and tc.uniformity_weight <= 0:
            return loss
        reference = self.reference_embeddings(inputs)
        return loss + global_regularization(embeddings, reference, tc.anchor_weight,
                                            tc.uniformity_weight)  # fmt: skip

    def save(self, path: Any) -> None:
        if self.rank == 0:
            super().save(path)
        dist.barrier()

    def _after_epoch(self, record: dict[str, Any]) -> bool:
        # the same model everywhere: parameters agree (averaged gradients) but buffers such
        # as batch-norm statistics are each process's own; take rank 0's, so that every
        # process validates (and decides to stop on) the model rank 0 saves
        for module in (self.model, self.loss):
            for buffer in module.buffers():
                dist.broadcast(buffer, 0)
        if self.rank == 0:
            stop = super()._after_epoch(record)
        else:
            out, self.out_dir = self.out_dir, None  # only rank 0 writes log and checkpoint
            try:
                stop = super()._after_epoch(record)
            finally:
                self.out_dir = out
                if out is not None:
                    dist.barrier()  # matches rank 0's barrier in save()
        flag = torch.tensor([int(stop)], dtype=torch.long, device=self.device)
        dist.broadcast(flag, 0)  # one decision: a process that stops alone would hang
        return bool(flag.item())


__all__ = ["DistributedTrainer", "average_gradients", "check_same_rows", "gather",
           "gather_with_grad", "global_batch_loss", "global_regularization", "init_from_env",
           "is_main_process", "lost_peer", "lost_peer_reason", "sampler_order",
           "world_size_from_env"]
