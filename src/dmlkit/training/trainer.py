"""The training loop: sampler -> model -> miner -> loss -> optimizer, with exact resume."""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from dmlkit.config.schema import Config
from dmlkit.functional.tuples import IndexTuple, as_index_tuple
from dmlkit.training.batches import fetch_items
from dmlkit.training.best_epoch import early_stop_line
from dmlkit.training.build import (
    build_loss,
    build_miner,
    build_model,
    embedding_dim,
    loss_shape_params,
)
from dmlkit.training.checkpoint import atomic_save, load_checkpoint
from dmlkit.training.checks import (
    check_finite_weights,
    check_loss_value,
    finite_embeddings,
    given_model_width,
    trainer_data,
)
from dmlkit.training.class_rows import CLASS_IDS_KEY, as_class_ids, as_rows, resumed_class_ids
from dmlkit.training.data_fingerprint import Fingerprint, check_same_data, fingerprint_value
from dmlkit.training.device import check_device, resolve_device
from dmlkit.training.grad_cache import cached_embeddings, check_grad_cache
from dmlkit.training.interrupts import stop_line
from dmlkit.training.optim import build_optimizer, build_scheduler, restore_rates
from dmlkit.training.preflight import check_mined, check_trainable, checked_sampler
from dmlkit.training.regularizers import regularization
from dmlkit.training.rng import get_rng_state, rng_scope, set_rng_state
from dmlkit.training.run_dir import append_log_line, check_trained_config, epoch_line, restore_log
from dmlkit.training.sampler_batches import checked_batches

CHECKPOINT = "checkpoint.pt"
LOG = "train.log"
Callback = Callable[["Trainer", dict[str, Any]], None]
#: set (``dmlkit train --progress``): the progress bar also where stderr is no terminal (a
#: log file), refreshed there every ``PROGRESS_LOG_SECONDS`` (else only on terminals)
FORCE_PROGRESS: ContextVar[bool] = ContextVar("force_progress", default=False)
PROGRESS_LOG_SECONDS = 20.0


class Trainer:
    """Trains an embedding model on a dataset as a :class:`~dmlkit.config.Config` says.

    Every epoch: batches from the sampler (``set_epoch(epoch)``), a loss per batch
    (:meth:`batch_loss`), an optimizer and scheduler step, optional validation MAP@R on
    ``val_data`` with early stopping, and (with ``out_dir``) an atomically written
    checkpoint plus one line of ``train.log``. ``fit(resume=True)`` continues from the
    checkpoint with the same weights, optimizer, scheduler, RNG states and epoch, so an
    interrupted run ends bit-identical to an uninterrupted one.

    Parameters
    ----------
    config : Config
        Model and loss sections resolved (see :func:`~dmlkit.training.resolve_config`).
    train_data : Dataset
        Items ``(input, label)``; datasets with ``get_batch(indices)`` are fetched in one
        indexing call, others through ``collate_fn``. Batches are ``(inputs, labels)`` or
        ``(inputs, labels_or_None, indices)`` with ``indices`` Pairs/Triplets over the batch.
        Samplers read the items' labels from ``.labels`` (a ``TensorDataset(x, labels)``:
        its second tensor). Not a ``DataLoader``: the trainer batches the dataset itself.
    val_data : Dataset with ``.x`` and ``.labels`` (or a ``TensorDataset(x, labels)``), optional
        Validation items (leave-one-out retrieval metrics each epoch).
    out_dir : path, optional
        Where checkpoints and ``train.log`` go; without it nothing is written.
    model, loss, miner, sampler : optional
        Ready-made components instead of the configured ones.
    model_rng : dict, optional
        With ``model`` built as configured (:func:`~dmlkit.training.frozen_features.seeded_model`):
        the random state its building left; the trainer goes on from it, as if it built it.
    collate_fn : callable, optional
        Turns a list of items into a batch (default ``torch.utils.data.default_collate``).
    callbacks : sequence of callable, optional
        ``callback(trainer, record)`` after each epoch's checkpoint.
    log : callable, optional
        Receives human-readable messages (default: ``print``).
    data_fingerprint : dict or callable, optional
        Checksums of the data the run trains on
        (:func:`~dmlkit.training.data_fingerprint.data_fingerprint`), kept in checkpoints;
        a resume whose checkpoint holds others is refused. A function returning them (a
        :class:`~dmlkit.training.data_fingerprint.LazyFingerprint`) is called only when
        they are needed: at the first checkpoint saved, or to compare on a resume.
    class_ids : Tensor, optional
        The sorted distinct ``(n,)`` class labels of the training items: the miner and the
        loss get each label's position among them, its row
        (:mod:`~dmlkit.training.class_rows`), so a loss with one row per class is sized by
        the number of classes, however they are numbered. Kept in checkpoints; a resume
        goes on with the checkpoint's (none: the labels as they are). Default: the labels
        as they are.

    Notes
    -----
    A ready-made ``loss``, ``miner`` or ``sampler`` replaces the configured one; the
    config's other sections (optimizer, schedule, training) still apply. What the trainer
    asks of each:

    **loss** -- an ``nn.Module``: it is moved with ``.to(device)``, put in ``.train()``
    mode every epoch, its ``parameters()`` (proxies, class weights) are trained in a second
    optimizer group at ``optimizer.loss_lr`` (default ``optimizer.lr``) and clipped with
    the model's under ``training.grad_clip``, and its ``state_dict()`` is saved in
    checkpoints, restored on resume and kept for the best validation epoch. Each batch it
    is called as ``loss(embeddings, labels, indices=indices)``: ``embeddings`` a float32
    ``(B, dim)`` tensor (under ``training.amp`` too), ``labels`` the batch's labels (rows,
    with ``class_ids``) on the device or None, and ``indices`` always passed, by keyword:
    None, the miner's output (unchanged), or the batch's own tuples as
    :class:`~dmlkit.functional.tuples.Pairs` / ``Triplets`` / ``Quadruplets`` (a plain
    tuple or list of 3 is read as triplets, of 4 as pairs). ``ref_embeddings`` and
    ``ref_labels`` are never passed. It returns a scalar tensor to backpropagate; a NaN or
    infinite value stops training with ``FloatingPointError``. The
    ``training.anchor_weight`` / ``uniformity_weight`` regularizers are added to it.
    (:class:`~dmlkit.training.distributed.DistributedTrainer` makes the same call on the
    batch gathered from every process, labels required.)

    **miner** -- called as ``miner(embeddings, labels)`` (no ``ref_*``) only for batches
    that have labels and no tuples of their own; it is not moved to the device, and it needs
    ``state_dict()`` and ``load_state_dict()`` (an ``nn.Module``'s): its state goes into
    checkpoints.

    **sampler** -- an iterable of batches, each a non-empty list of integer positions into
    ``train_data`` (fetched with ``train_data.get_batch(positions)`` when the dataset has it,
    else ``collate_fn([train_data[i] for i in positions])``); an empty batch or an epoch of
    none is refused. It needs ``__len__`` (> 0), the batches an epoch yields (the schedule
    and progress bar are sized by it). Optional: ``set_epoch(epoch)``, called with the
    0-based epoch before each epoch and with the saved epoch on resume; ``epoch`` (saved in
    checkpoints, else the trainer's epoch is); ``state_dict()`` / ``load_state_dict(state)``,
    saved and restored (when not empty) for exact resumes. Epochs run with torch's, numpy's
    and ``random``'s global generators seeded from ``training.seed + 1`` and saved in
    checkpoints, so a sampler drawing from them is reproducible too.
    """

    def __init__(
        self,
        config: Config,
        train_data: Dataset,
        *,
        val_data: Any = None,
        out_dir: str | Path | None = None,
        model: nn.Module | None = None,
        loss: nn.Module | None = None,
        miner: nn.Module | None = None,
        sampler: Any = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        callbacks: Sequence[Callback] = (),
        log: Callable[[str], None] | None = print,
        data_fingerprint: Fingerprint | None = None,
        model_rng: dict[str, Any] | None = None,
        class_ids: Tensor | None = None,
    ) -> None:
        labels, val_data = trainer_data(train_data, val_data)  # (before anything is built)
        self.class_ids = as_class_ids(class_ids)
        rows = as_rows(labels, self.class_ids)  # (n,) what the loss and the miner see
        self.config = config
        self.data_fingerprint = data_fingerprint
        self.train_data = train_data
        self.val_data = val_data
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.device = check_device(resolve_device(config.training.device), "training.device")
        with rng_scope(config.training.seed):  # deterministic initial weights
            self.model = (model if model is not None else build_model(config)).to(self.device)
            if model_rng is not None:  # (the loss's draws follow the model's, as built here)
                set_rng_state(model_rng)
            dim = (given_model_width(self.model, train_data) if model is not None
                   else getattr(self.model, "dim", None))
            if loss is None and isinstance(dim, int) and (
                    model is not None or embedding_dim(config.model) is None):
                # a model given ready-made, or one whose width only its weights know (a
                # pretrained text encoder): the loss's embedding size comes from the model
                config = copy.copy(config)
                config.loss = loss_shape_params(config.loss, None, dim)
                self.config = config
            self.loss = (loss if loss is not None else build_loss(config)).to(self.device)
        self.miner = miner if miner is not None else build_miner(config)
        # the model as it starts, for training.anchor_weight: frozen, in eval mode
        self.anchor_model: nn.Module | None = None
        if config.training.anchor_weight > 0:
            self.anchor_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.collate_fn = collate_fn or default_collate  # (the check below fetches a batch)
        check_trainable(self, rows, given={"model": model if model_rng is None else None,
                                           "miner": miner, "loss": loss})
        check_grad_cache(self.model, config.training.grad_cache_chunk)
        self.sampler = checked_sampler(self, sampler, labels, rows, loss)
        self.callbacks = list(callbacks)
        self.log = log or (lambda _msg: None)
        self.optimizer = build_optimizer(config.optimizer, self.model, self.loss)
        #: False when neither the model nor the loss has a parameter to train (a frozen
        #: backbone with ``head_type: none``): epochs then only validate
        self.trainable = any(p.requires_grad for p in self.model.parameters()) or any(
            p.requires_grad for p in self.loss.parameters())
        if not self.trainable:
            self.log("nothing to train: the model has no trainable parameters (e.g. "
                     "head_type: none); it is evaluated as it is")
        self.scheduler = build_scheduler(config.schedule, self.optimizer, len(self.sampler),
                                         config.training.epochs)
        self.amp_dtype = torch.bfloat16 if self.device.type == "cpu" else torch.float16
        use_scaler = config.training.amp and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.epoch = 0  # completed epochs
        self.saved_epoch = 0  # the epoch of the last checkpoint written (or loaded)
        self.best_metric = -math.inf
        self.best_epoch = 0
        self.best_state: dict[str, Any] | None = None
        self.bad_epochs = 0
        self.stopped = False  # stopped early: a resume has nothing left to train
        self.history: list[dict[str, Any]] = []

    # -- one batch ---------------------------------------------------------------------
    def fetch(self, indices: list[int]) -> Any:
        """The batch of the items at ``indices``."""
        return fetch_items(self.train_data, indices, self.collate_fn)

    def unpack(self, batch: Any) -> tuple[Any, Tensor | None, IndexTuple | None]:
        """``(inputs, labels)`` or ``(inputs, labels_or_None, indices)`` -> a 3-tuple, the
        labels as the miner and the loss take them (their rows, with ``class_ids``)."""
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise TypeError("a batch must be (inputs, labels) or (inputs, labels_or_None, indices)")
        labels = as_rows(batch[1], self.class_ids)
        if len(batch) == 2:
            return batch[0], labels, None
        indices = tuple(batch[2]) if isinstance(batch[2], list) else batch[2]
        return batch[0], labels, None if indices is None else as_index_tuple(indices)

    def batch_loss(self, batch: Any) -> Tensor:
        """The loss of one batch: embed, mine (when labels and no given indices), score."""
        inputs, labels, indices = self.unpack(batch)
        if isinstance(inputs, Tensor):  # (other inputs, e.g. a list of texts: the model's own)
            inputs = inputs.to(self.device, non_blocking=True)
        if labels is not None:
            labels = labels.to(self.device)
        if indices is not None:
            indices = type(indices)(*(t.to(self.device) for t in indices))
        embeddings = self.embed_batch(inputs)  # (B, dim)
        mined = indices is None and self.miner is not None and labels is not None
        indices = self.miner(embeddings, labels) if mined else indices
        if mined and indices is None:  # (the loss would take all tuples, silently)
            check_mined(indices, self.miner, len(embeddings), "a training batch")
        try:
            loss = self.loss(embeddings, labels, indices=indices)
        except (TypeError, ValueError, IndexError):
            if mined:  # the miner's tuples checked when refused: the miner is named
                check_mined(indices, self.miner, len(embeddings), "a training batch")
            raise
        tc = self.config.training
        return loss + regularization(embeddings, self.reference_embeddings(inputs),
                                     tc.anchor_weight, tc.uniformity_weight)  # fmt: skip

    def reference_embeddings(self, inputs: Any) -> Tensor | None:
        """The starting model's embeddings of ``inputs`` (``training.anchor_weight``), or
        None without an anchor."""
        if self.anchor_model is None:
            return None
        with torch.no_grad():
            return self.anchor_model(inputs)  # (B, dim)

    def embed_batch(self, inputs: Any) -> Tensor:
        """The model's embeddings of a batch; with ``training.grad_cache_chunk`` the batch (a
        tensor, a list of texts, ...) is embedded in chunks whose activations are
        recomputed in the backward pass (:mod:`~dmlkit.training.grad_cache`): memory grows
        with the chunk, not the batch, and the gradients equal the plain step's (batch
        norm sees per-chunk statistics)."""
        tc = self.config.training
        # mixed precision for the model only: the embeddings come back float32, so that
        # distances, miners and losses (cancellation in |x|^2 + |y|^2 - 2 x.y) stay exact
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=tc.amp):
            if tc.grad_cache_chunk is None:
                return self.model(inputs).float()
            return cached_embeddings(self.model, inputs, tc.grad_cache_chunk).float()

    # -- epochs ------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict[str, Any]:
        from tqdm.auto import tqdm

        tc = self.config.training
        self.model.train()
        self.loss.train()
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        total, count, start = 0.0, 0, time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]  # the rate of the epoch's first step
        tty = sys.stderr.isatty()  # a live bar on terminals; logs and pipes get the
        bar = tqdm(  # per-epoch lines, and a bar every PROGRESS_LOG_SECONDS if FORCE_PROGRESS
            total=len(self.sampler), desc=f"epoch {epoch + 1}/{tc.epochs}", leave=not tty,
            disable=not tc.progress or not (tty or FORCE_PROGRESS.get()), dynamic_ncols=True,
            mininterval=0.1 if tty else PROGRESS_LOG_SECONDS,
            maxinterval=10.0 if tty else PROGRESS_LOG_SECONDS,
        )  # fmt: skip
        try:
            for step, indices in enumerate(checked_batches(self.sampler, epoch, self.trainable)):
                batch = self.fetch(indices)
                with finite_embeddings(epoch, step):  # (diverged weights: NaN embeddings)
                    loss = self.batch_loss(batch)  # (mixed precision: the model, in embed_batch)
                value = float(loss.detach())  # the step's one host sync (on accelerators)
                check_loss_value(value, epoch, step)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if tc.grad_clip is not None:
                    self.scaler.unscale_(self.optimizer)
                    params = list(self.model.parameters()) + list(self.loss.parameters())
                    nn.utils.clip_grad_norm_(params, tc.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.scheduler.step()
                total += value
                count += 1
                bar.update(1)
                bar.set_postfix(loss=f"{total / count:.4f}", refresh=tty)  # (logs: throttled)
        finally:
            bar.close()
        return {
            "epoch": epoch + 1,
            # (nothing trainable: no batch trained, no loss, no rate either)
            **({"loss": total / count} if count else {}),
            **({"lr": lr} if self.trainable else {}),
            "seconds": time.perf_counter() - start,
        }

    def validate(self) -> dict[str, float]:
        """Leave-one-out retrieval metrics of the validation items."""
        from dmlkit.evaluation import retrieval_metrics
        from dmlkit.training.run import embed

        emb, labels = embed(self.model, self.val_data, batch_size=512, device=self.device)
        m = retrieval_metrics(emb, labels)
        return {f"val_{k}": m[k] for k in ("precision_at_1", "r_precision", "map_at_r")}

    def fit(self, resume: bool = False, *,
            checkpoint: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Train for ``training.epochs`` epochs (from the checkpoint when ``resume``; one
        the caller loaded already is passed as ``checkpoint``, see :meth:`load`)."""
        tc = self.config.training
        with rng_scope(tc.seed + 1):
            if resume:
                self.load(self.checkpoint_path, checkpoint=checkpoint)
                from dmlkit.training.distributed import is_main_process

                if is_main_process():  # (rank 0 writes the log)
                    restore_log(self.out_dir / LOG, self.history)  # (a line lost to a kill)
                self.log(f"resumed from {self.checkpoint_path} after epoch {self.epoch}"
                         + (" (it had stopped early: nothing left to train)"
                            if self.stopped else ""))
            trained = None  # the epoch trained and not yet through _after_epoch
            try:
                while self.epoch < tc.epochs and not self.stopped:
                    record = self.train_epoch(self.epoch)
                    trained = record["epoch"]
                    stop = self._after_epoch(record)
                    trained = None
                    if stop:
                        self.log(early_stop_line(tc.patience, self.best_epoch, self.best_metric))
                        break
            except BaseException as err:
                self.log(stop_line(self, err, trained))
                raise
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state["model"])
            self.loss.load_state_dict(self.best_state["loss"])
        return self.history

    def run_epoch(self) -> tuple[dict[str, Any], bool]:
        """Train, validate and record the next epoch: ``(record, stop)``.

        For callers that drive several trainers in turn (class-disjoint folds); they own
        the random state, which :meth:`fit` otherwise scopes to ``training.seed + 1``.
        """
        record = self.train_epoch(self.epoch)
        return record, self._after_epoch(record)

    def _after_epoch(self, record: dict[str, Any]) -> bool:
        tc = self.config.training
        stop = False
        check_finite_weights((self.model, self.loss), record["epoch"])  # (not checkpointed)
        if self.val_data is not None:
            with finite_embeddings(record["epoch"] - 1):
                record.update(self.validate())
            score = record["val_map_at_r"]
            if math.isnan(score):  # nothing to score (no class with two items): no verdict
                pass
            elif score > self.best_metric:
                self.best_metric, self.best_epoch, self.bad_epochs = score, record["epoch"], 0
                self.best_state = {
                    "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                    "loss": {k: v.detach().clone() for k, v in self.loss.state_dict().items()},
                }
            else:
                self.bad_epochs += 1
                stop = tc.patience is not None and self.bad_epochs >= tc.patience
        self.epoch = record["epoch"]
        self.stopped = stop  # in the checkpoint written below
        self.history.append(record)
        line = epoch_line(record)
        if self.out_dir is not None:  # (a line a kill loses here, resume writes again)
            self.save(self.checkpoint_path)
            append_log_line(self.out_dir / LOG, line)
        self.log(line)
        for callback in self.callbacks:
            callback(self, record)
        return stop

    # -- checkpoints -------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        if self.out_dir is None:
            raise ValueError("this trainer has no out_dir, so no checkpoint")
        return self.out_dir / CHECKPOINT

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "loss": self.loss.state_dict(),
            "miner": self.miner.state_dict() if self.miner is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "bad_epochs": self.bad_epochs,
            "stopped": self.stopped,
            "history": self.history,
            "rng": get_rng_state(),
            "sampler_epoch": getattr(self.sampler, "epoch", self.epoch),
            "sampler": self.sampler.state_dict() if hasattr(self.sampler, "state_dict") else {},
            "anchor": self.anchor_model.state_dict() if self.anchor_model is not None else {},
            "data": self._fingerprint(),
            CLASS_IDS_KEY: self.class_ids,
        }

    def _fingerprint(self) -> dict[str, str] | None:
        """The data fingerprint, computed now if it was deferred (and kept)."""
        self.data_fingerprint = fingerprint_value(self.data_fingerprint)
        return self.data_fingerprint

    def save(self, path: str | Path) -> None:
        atomic_save(self.state_dict(), path)
        self.saved_epoch = self.epoch

    def load(self, path: str | Path, *, checkpoint: dict[str, Any] | None = None) -> None:
        """Restore everything :meth:`state_dict` holds (the caller keeps its config) from
        the checkpoint at ``path``, refused when its data fingerprint differs or the
        trainer's config differs from the one it trained with (in a setting a resume keeps,
        :func:`~dmlkit.training.run_dir.check_trained_config`).

        ``checkpoint``: that checkpoint as the caller loaded it already, on the trainer's
        device (:func:`~dmlkit.training.run_dir.check_resume`), its data checked
        (:func:`~dmlkit.training.data_fingerprint.check_resume_data`): restored instead
        of reading ``path``, and emptied, so that no second copy of it stays alive.
        """
        if checkpoint is None:
            state = load_checkpoint(path, map_location=self.device)
            check_trained_config(self.config, state, Path(path).parent)
            check_same_data(state.get("data"), self.data_fingerprint, Path(path).parent)
        else:
            state = dict(checkpoint)
            checkpoint.clear()
        saved = state.get("data")  # (none in older checkpoints: the current one is kept,
        if isinstance(saved, dict) and saved:  # so the next checkpoint records it)
            self.data_fingerprint = saved
        self.class_ids = resumed_class_ids(self.class_ids, state, path)  # (its loss's rows)
        self.model.load_state_dict(state["model"])
        self.loss.load_state_dict(state["loss"])
        if self.anchor_model is not None and state.get("anchor"):  # the run's starting model
            self.anchor_model.load_state_dict(state["anchor"])
        if self.miner is not None and state.get("miner"):  # (its RNG: exact resume)
            self.miner.load_state_dict(state["miner"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rates(self.scheduler)  # (the schedule as configured now, at the step reached)
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = self.saved_epoch = int(state["epoch"])
        self.best_metric = float(state["best_metric"])
        self.best_epoch = int(state["best_epoch"])
        self.best_state = state["best_state"]
        self.bad_epochs = int(state["bad_epochs"])
        self.stopped = bool(state.get("stopped", False))
        self.history = list(state["history"])
        if state.get("sampler") and hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(state["sampler"])  # (e.g. triplets mined earlier)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(int(state["sampler_epoch"]))
        set_rng_state(state["rng"])


__all__ = ["Trainer", "regularization", "resolve_device", "CHECKPOINT", "FORCE_PROGRESS", "LOG"]
