"""Checks a :class:`~dmlkit.training.Trainer` makes when it is built, before any epoch:
that its model, miner and loss can train on the data at all."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from dmlkit.config.field_rules import label_free_miner, memory_with_miner
from dmlkit.functional.tuples import as_index_tuple, check_indices
from dmlkit.models.modes import eval_mode
from dmlkit.training.batches import fetch_items
from dmlkit.training.preflight_sizes import check_batch_of_one, check_loss_sizes
from dmlkit.training.rng import rng_scope
from dmlkit.training.sampler_batches import check_sampler_length


def check_trainable(trainer: Any, labels: Any, given: dict[str, Any] | None = None) -> None:
    """Refuse, when ``trainer`` is built, before any epoch starts (and before a run
    directory holds more than its config), a model, miner or loss that cannot train on
    this data (its ``labels``; ``given``: the parts passed ready-made): e.g. a loss that
    takes no mined tuples given a miner's, a classifier or proxy loss given ``(n, L)``
    hierarchical labels, an embedding size or number of classes (proxies) that the model
    or the data does not match, a text or
    audio model given images, a label-free miner given class labels. Otherwise the
    run would stop at its first batch. Tuple data (no class labels, batches that bring
    their own pairs / triplets) gets the same checks on its first tuples
    (:func:`~dmlkit.training.preflight_tuples.check_tuple_batch`).

    A small batch of the training items (up to 8 classes x 4) goes through the model
    in eval mode without gradients (no batch-norm statistic changes, every
    submodule's mode kept), then through copies of the miner and the loss as a
    training batch does (a memory bank or a queue is not filled); the random states
    are restored after (augmentation draws)."""
    names = _names(trainer, given or {}, ("model", "miner", "loss"))
    _check_memory_miner(trainer, names)
    if not isinstance(labels, Tensor) or labels.dim() not in (1, 2) or not len(labels):
        from dmlkit.data.tuples import TupleDataset

        # (tuple data: weak supervision has no class labels; only dmlkit's own tuple
        # datasets: a dataset with its own collate_fn is not fetched ahead of training)
        if labels is None and isinstance(trainer.train_data, TupleDataset):
            from dmlkit.training.preflight_tuples import check_tuple_batch

            try:
                check_tuple_batch(trainer, names)
            except torch.OutOfMemoryError:
                raise
            except (RuntimeError, IndexError) as err:  # (from its loss's run: its model's
                # and data's errors are kept for training, its own refusals are one line)
                raise ValueError(f"loss {names['loss'] or type(trainer.loss).__name__!r} "
                                 f"failed on the first tuples of this data: {err}") from err
            check_tuple_gradient(trainer, names)
        return
    if trainer.miner is not None and not getattr(trainer.miner, "takes_labels", True):
        raise ValueError(label_free_miner(names["miner"]))
    _, group = torch.unique(labels, dim=0, return_inverse=True)  # by class id or label row
    picks = [torch.nonzero(group == g).flatten()[:4]
             for g in range(min(int(group.max()) + 1, 8))]
    take = torch.cat(picks).tolist()
    kind = ("multi-labels (n, C)" if labels.dtype == torch.bool else
            "hierarchical labels (n, L)" if labels.dim() == 2 else "class labels")
    try:
        with rng_scope(trainer.config.training.seed):  # (draws of augmentation: undone)
            # (the plain fetch: a distributed trainer's own takes a process's share)
            batch = fetch_items(trainer.train_data, take, trainer.collate_fn)
        inputs, batch_labels, tuples = trainer.unpack(batch)
    except Exception:  # a data error surfaces in training, where it is reported
        return
    if tuples is not None or batch_labels is None:
        return
    if isinstance(inputs, Tensor):
        inputs = inputs.to(trainer.device)
    try:
        with torch.no_grad(), eval_mode(trainer.model):
            output = trainer.model(inputs)
    except (ValueError, TypeError) as err:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"model {names['model']!r} cannot take this data's inputs "
                         f"({shape}): {err}") from err
    except Exception:  # the model's own error surfaces in training, as before
        return
    # each part's output checked before the next part takes it: the error names the
    # part at fault (model -> miner -> loss)
    embeddings = checked_embeddings(output, names["model"], len(batch_labels))
    batch_labels = batch_labels.to(trainer.device)
    check_loss_sizes(trainer.loss, names, int(embeddings.shape[1]), labels)
    indices = None  # as a training batch: the miner's tuples go to the loss
    for part, module in (("miner", trainer.miner), ("loss", trainer.loss)):
        if module is None:
            continue
        check_distances(module, part, names[part], embeddings)
        try:
            if part == "miner":
                with torch.no_grad():
                    indices = copy.deepcopy(module)(embeddings, batch_labels)
            else:  # with gradients: a value without one cannot train (checked below)
                with torch.enable_grad(), warnings.catch_warnings():
                    # (float(loss) in a loss: refused below, without torch's warning)
                    warnings.filterwarnings("ignore", "Converting a tensor with requires_grad")
                    value = copy.deepcopy(module)(embeddings.detach().requires_grad_(True),
                                                  batch_labels, indices=indices)
        except torch.OutOfMemoryError:
            raise
        except _PART_ERRORS as err:  # (RuntimeError, IndexError: e.g. a shape a part's
            # own code did not expect, from a part of one's own)
            blame = labels.dim() == 2 and _refuses_label_kind(
                part, module, embeddings, batch_labels, indices, int(labels.max()) + 1)
            raise ValueError(_failure(part, names[part], module, kind, blame, indices, err)
                             ) from err
        if part == "miner":
            check_mined(indices, names["miner"], len(embeddings))
        else:
            check_loss_value(value, names["loss"])
            check_loss_gradient(value, names["loss"])


def _check_memory_miner(trainer: Any, names: dict[str, Any]) -> None:
    """Refuse a miner with a cross-batch memory loss (also one nested in another loss):
    the miner's in-batch tuples would reach the memory as ``indices`` and replace the
    tuples it forms with its memory (the memory's own ``miner`` mines against it)."""
    from dmlkit.losses.cross_batch_memory import CrossBatchMemory

    if trainer.miner is None or not isinstance(trainer.loss, nn.Module):
        return
    for module in trainer.loss.modules():
        if isinstance(module, CrossBatchMemory):
            memory = getattr(type(module), "registry_name", type(module).__name__)
            loss = names["loss"] or type(trainer.loss).__name__
            miner = getattr(type(trainer.miner), "registry_name", names["miner"])
            raise ValueError(memory_with_miner(
                miner or type(trainer.miner).__name__,
                loss if module is trainer.loss else memory, loss))


def checked_embeddings(output: Any, name: Any, n: int) -> Tensor:
    """The model's ``output`` for a batch of ``n`` inputs as float embeddings, refused
    unless it is one finite floating-point ``(n, dim)`` tensor, naming the model."""
    if not isinstance(output, Tensor):
        raise TypeError(
            f"model {name!r} returns a {type(output).__name__}, not a tensor: its forward "
            "must return the embeddings alone, one (n, dim) float tensor")
    if output.dim() != 2 or output.shape[0] != n:
        raise ValueError(
            f"model {name!r} returns shape {tuple(output.shape)} for a batch of {n} "
            "inputs: its forward must return (n, dim) embeddings, one row of dim values "
            "per input")
    if not output.is_floating_point():
        raise TypeError(
            f"model {name!r} returns {output.dtype} embeddings: they must be floating "
            "point (and differentiable: no argmax, rounding or thresholding in forward)")
    if not bool(torch.isfinite(output).all()):
        raise ValueError(
            f"model {name!r} returns NaN or infinite embeddings for a first batch of the "
            "training data, before any training step: check its forward (e.g. a log or "
            "a division of values out of its range) and the data's values")
    return output.float()


def check_mined(indices: Any, miner: Any, n: int, batch: str = "a first batch") -> None:
    """Refuse a miner's output on ``batch`` of ``n`` embeddings unless it is
    :class:`~dmlkit.functional.tuples.Pairs` / ``Triplets`` / ``Quadruplets`` (or a plain
    3- / 4-tuple) of int64 indices into the batch, naming the miner (``miner``: its name,
    or the miner, named by its registry name or class)."""
    name = miner if isinstance(miner, str) else getattr(
        type(miner), "registry_name", type(miner).__name__)
    what = ("Pairs(a1, p, a2, n), Triplets(anchor, positive, negative) or Quadruplets of "
            f"int64 indices into the batch (0 to {n - 1}), empty ones when it finds none")
    if indices is None:
        raise TypeError(f"miner {name!r} returned None for {batch}: a miner must return "
                        f"its tuples, {what}")
    try:
        check_indices(as_index_tuple(indices), n, n)
    except (TypeError, ValueError) as err:
        got = (f"a {type(indices).__name__} of {len(indices)}" if isinstance(
            indices, (list, tuple)) and not hasattr(indices, "_fields")
            else type(indices).__name__)
        raise ValueError(f"miner {name!r} returned invalid tuples ({got}) for {batch} of "
                         f"{n} embeddings: {err}; a miner returns {what}") from err


def check_loss_value(value: Any, name: Any) -> None:
    """Refuse a loss's value unless it is a floating-point scalar tensor, naming the loss
    (a NaN value stops training at its first batch, with the settings to check)."""
    if not isinstance(value, Tensor):
        raise TypeError(
            f"loss {name!r} returns a {type(value).__name__}, not a tensor: it must return "
            "a scalar tensor computed from the embeddings (training backpropagates it)")
    if value.numel() != 1:
        raise ValueError(
            f"loss {name!r} returns a tensor of shape {tuple(value.shape)}, not a scalar: "
            "reduce it to one value (e.g. .mean() over the batch)")
    if not (value.is_floating_point() or value.is_complex()):
        raise TypeError(_NO_GRADIENT.format(name=name, got=f"a {value.dtype} tensor"))


#: a loss value that training cannot backpropagate
_NO_GRADIENT = (
    "loss {name!r} returned a value with no gradient (detached or integer): {got}, so "
    "training cannot backpropagate it; compute it from the embeddings with differentiable "
    "float operations (no .detach(), .item(), torch.tensor(...) of a computed number, "
    "torch.no_grad() or integer casts)")

#: errors of a part of one's own on a first batch that preflight names the part for
_PART_ERRORS = (ValueError, TypeError, RuntimeError, IndexError)


def check_loss_gradient(value: Tensor, name: Any) -> None:
    """Refuse a loss's scalar ``value``, computed with gradients enabled from embeddings
    that require them, when it carries no gradient (it was detached, or cast to an
    integer), naming the loss: backpropagating it would fail at the first step."""
    if not value.requires_grad:
        raise TypeError(_NO_GRADIENT.format(
            name=name, got=f"a {value.dtype} tensor with requires_grad=False"))


def check_distances(module: Any, part: str, name: Any, embeddings: Tensor) -> None:
    """Refuse a distance in ``module`` (the miner or the loss, ``part`` named ``name``,
    its own or a nested one) whose matrix of ``embeddings`` is not ``(n, n)`` or whose
    row-wise distances are not ``(n,)``, naming it and the part it serves. A distance
    that fails on them is left to the part, whose run names it."""
    from dmlkit.distances.base import BaseDistance

    if not isinstance(module, nn.Module):
        return
    n = len(embeddings)
    for distance in module.modules():
        if not isinstance(distance, BaseDistance):
            continue
        try:
            with torch.no_grad():
                got = (distance(embeddings), distance.pairwise(embeddings, embeddings))
        except Exception:  # (the part's own run reports it)
            continue
        for value, want, what in ((got[0], (n, n), "d(x), the matrix of all pairs,"),
                                  (got[1], (n,), "d.pairwise(x, y), row-wise,")):
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            if shape != want:
                which = getattr(type(distance), "registry_name", type(distance).__name__)
                raise ValueError(
                    f"distance {which!r} of {part} {name!r} returns {shape} for {n} "
                    f"embeddings: {what} must be a tensor of shape {want}; check its "
                    "compute_matrix and compute_rowwise")


def check_tuple_gradient(trainer: Any, names: dict[str, Any]) -> None:
    """For tuple data (no class labels), :func:`check_loss_gradient` on the loss of the
    first tuples (:func:`~dmlkit.training.preflight_tuples.check_tuple_batch` checked
    the rest); random states restored after, model and loss as there."""
    from dmlkit.training.preflight_tuples import FIRST_TUPLES

    try:
        n = min(len(trainer.train_data), FIRST_TUPLES)
        with rng_scope(trainer.config.training.seed):
            batch = fetch_items(trainer.train_data, list(range(n)), trainer.collate_fn)
        inputs, _, indices = trainer.unpack(batch)
        if indices is None or not isinstance(inputs, Tensor):
            return
        with torch.no_grad(), eval_mode(trainer.model):
            embeddings = trainer.model(inputs.to(trainer.device)).float()
        with torch.enable_grad():
            value = copy.deepcopy(trainer.loss)(embeddings.detach().requires_grad_(True),
                                                None, indices=indices)
    except Exception:  # (checked already, or reported in training)
        return
    if isinstance(value, Tensor) and value.numel() == 1:
        check_loss_gradient(value, names["loss"] or type(trainer.loss).__name__)


def _refuses_label_kind(part: str, module: Any, embeddings: Tensor, labels: Tensor,
                        indices: Any, bound: int) -> bool:
    """Whether the miner or the loss (``part``: copies of ``module``), which failed on the
    first batch's ``(n, L)`` / ``(n, C)`` ``labels``, refuses their kind: it runs on one
    class id per item, and fails on the same ids as labels of that kind (one level, or
    one label per item), so its failure is not one of its settings (such as one margin
    per level). The ids: each distinct row of ``labels`` a class, modulo ``bound`` (the
    data's largest label + 1, which a loss's ``num_classes`` was filled with). Random
    states are restored after."""
    ids = torch.unique(labels, dim=0, return_inverse=True)[1].reshape(-1) % bound  # (n,)
    same_kind = (nn.functional.one_hot(ids).bool() if labels.dtype == torch.bool
                 else ids[:, None])  # (n, 1) or (n, C)

    def runs(given: Tensor) -> bool:
        try:
            with rng_scope(0), torch.enable_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if part == "miner":
                    copy.deepcopy(module)(embeddings, given)
                else:
                    copy.deepcopy(module)(embeddings.detach().requires_grad_(True), given,
                                          indices=indices)
        except Exception:  # (the part's own error on the labels is the one reported)
            return False
        return True

    return runs(ids) and not runs(same_kind)


def _failure(part: str, name: Any, module: Any, kind: str, blame_labels: bool,
             indices: Any, err: Exception) -> str:
    """What failed when the miner or the loss ran on the first batch, and the way out: the
    data's labels are blamed only where they are the problem (labels a part takes no
    labels, or ``(n, L)`` / ``(n, C)`` labels that a part needing one class per item
    cannot take: ``blame_labels``)."""
    if part == "loss" and indices is not None and "indices" in str(err):
        return (f"loss {name!r} cannot train on the miner's tuples: {err}; it takes no "
                "mined tuples: remove the miner (miner: null, or --set miner=null)")
    if blame_labels:
        takers = ("multi_similarity, contrastive, triplet_margin" if kind.startswith("multi")
                  else "multi_similarity, hierarchical_triplet")
        return (f"{part} {name!r} cannot train on this data's {kind}: {err}; pair and tuple "
                f"losses (e.g. {takers}) take them; classifier and proxy losses need one "
                "class per item")
    if not getattr(module, "takes_labels", True):
        return (f"{part} {name!r} cannot train on this data's {kind}: {err}; see its "
                "documentation for the data it needs")
    return (f"{part} {name!r} failed on a first batch of this data: {err}; see its "
            "documentation for the settings and data it needs")


def _names(trainer: Any, given: dict[str, Any], parts: tuple[str, ...]) -> dict[str, Any]:
    """Each part's name: its class for a part passed ready-made, else its config's name."""
    return {part: (type(given[part]).__name__ if given.get(part) is not None
                   else spec.get("name") if isinstance(spec, dict) else spec)
            for part in parts for spec in [getattr(trainer.config, part, None)]}


def check_batch_negatives(trainer: Any, labels: Any, given: dict[str, Any] | None = None
                          ) -> None:
    """Refuse, before any epoch, a sampler whose batches can hold one class
    (``classes_per_batch == 1``: every batch; ``min_classes_per_batch == 1``: some, e.g.
    a hierarchical sampler's batches of one super-class that has a single class; the
    sampler warned about both) with a loss that can only learn from negatives within a
    batch: pair, triplet and tuple losses then see no negative pair in those batches,
    and train nothing from them (or only pull items together).

    A loss learns from one-class batches when something other than the batch supplies
    the negatives: its own class weights or proxies (normalized_softmax, proxy_anchor,
    arcface, center, ...: their parameters get a gradient from a one-class batch) or a
    memory of earlier batches (cross_batch_memory). That is what is checked, on one
    class's items through the model (eval mode, no gradient), a copy of the miner and
    a copy of the loss, as in :func:`check_trainable`.

    Also checks the sampler's first batch against a loss that reads classes from the
    batch's layout (:func:`check_block_groups`), and refuses batches of one item for a
    model with batch norms that train
    (:func:`~dmlkit.training.preflight_sizes.check_batch_of_one`)."""
    from dmlkit.losses.cross_batch_memory import CrossBatchMemory

    check_batch_of_one(trainer, given_sampler=(given or {}).get("sampler") is not None)
    check_sampler_length(trainer.sampler)  # (named as the epochs name it)
    check_block_groups(trainer, labels, given)
    asked = getattr(trainer.sampler, "classes_per_batch", None)
    if getattr(trainer.sampler, "min_classes_per_batch", asked) != 1:
        return
    if not isinstance(labels, Tensor) or labels.dim() not in (1, 2) or not len(labels):
        return
    if any(isinstance(m, CrossBatchMemory) for m in trainer.loss.modules()):
        return  # its memory holds the classes of earlier batches
    learns = False
    if any(p.requires_grad for p in trainer.loss.parameters()):
        _, group = torch.unique(labels, dim=0, return_inverse=True)  # (n,)
        take = torch.nonzero(group.reshape(-1) == 0).flatten()[:4].tolist()  # one class
        try:
            with rng_scope(trainer.config.training.seed):
                inputs, batch_labels, _ = trainer.unpack(
                    fetch_items(trainer.train_data, take, trainer.collate_fn))
            if isinstance(inputs, Tensor):
                inputs = inputs.to(trainer.device)
            with torch.no_grad(), eval_mode(trainer.model):
                embeddings = trainer.model(inputs).float()
            batch_labels = batch_labels.to(trainer.device)
            loss = copy.deepcopy(trainer.loss)
            indices = None
            if trainer.miner is not None:
                indices = copy.deepcopy(trainer.miner)(embeddings, batch_labels)
            embeddings.requires_grad_(True)
            params = [p for p in loss.parameters() if p.requires_grad]
            grads = torch.autograd.grad(loss(embeddings, batch_labels, indices=indices),
                                        params, allow_unused=True)
        except Exception:  # (an error of the data, model or loss surfaces in training)
            return
        learns = any(g is not None and bool((g != 0).any()) for g in grads)
    if not learns:
        names = _names(trainer, given or {}, ("sampler", "loss"))
        sampler = names["sampler"] or type(trainer.sampler).__name__
        loss = names["loss"] or type(trainer.loss).__name__
        if asked == 1:
            raise ValueError(
                f"sampler {sampler!r} puts one class in every batch, so loss {loss!r} has "
                "no negative pair in any batch and would train nothing (or only pull items "
                "together): put at least two classes in a batch (m_per_class: batch_size >= "
                "2 * m; hierarchical: classes_per_super >= 2 or batch_size >= 2 * m * "
                "classes_per_super), or use a loss whose class weights or proxies supply "
                "the negatives (normalized_softmax, proxy_anchor, arcface, ...)")
        raise ValueError(
            f"sampler {sampler!r} makes batches of a single class (min_classes_per_batch 1 "
            f"of the {asked} classes asked: a super-class with a single class fills a "
            f"batch alone), so loss {loss!r} has no negative pair in those batches and "
            "would train nothing from them: put two super-classes in a batch "
            "(hierarchical: batch_size >= 2 * m * classes_per_super), or use a loss whose "
            "class weights or proxies supply the negatives (normalized_softmax, "
            "proxy_anchor, arcface, ...)")


@contextlib.contextmanager
def warnings_unless_refused() -> Iterator[None]:
    """Hold the warnings raised inside (a sampler's about its batches) and give them out
    when the block ends normally: a check in the block that refuses the run says the same
    thing once, as an error, without the warning before it."""
    with warnings.catch_warnings(record=True) as held:
        warnings.simplefilter("always")
        yield
    for w in held:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def checked_sampler(trainer: Any, sampler: Any, labels: Any, rows: Any, loss: Any) -> Any:
    """The trainer's batch sampler (``sampler``, else the config's, built), refused by
    :func:`check_batch_negatives` when its batches leave the loss nothing to learn; the
    sampler's own warning about such batches is given only when the run goes on."""
    from dmlkit.training.build import build_sampler

    with warnings_unless_refused():
        trainer.sampler = sampler if sampler is not None else build_sampler(
            trainer.config, labels, len(trainer.train_data), trainer.train_data, trainer.model)
        check_batch_negatives(trainer, rows, given={"sampler": sampler, "loss": loss})
    return trainer.sampler


def check_block_groups(trainer: Any, labels: Any, given: dict[str, Any] | None = None
                       ) -> None:
    """Refuse, before any epoch, a loss that groups a batch in consecutive blocks (Smooth-AP
    with ``grouping: blocks``, pytorch-metric-learning's layout, also nested in a wrapper)
    when the sampler's first batch is not such blocks: each run of ``U`` rows (``U`` the
    batch's number of classes) one class, each class one run. Otherwise the loss would
    train, silently, on rows that merely sit next to each other as positives.

    The first batch is drawn as the first epoch draws it (``training.seed + 1`` for
    samplers that use the global generators); a sampler that is itself an iterator is not
    drawn from."""
    if not isinstance(labels, Tensor) or labels.dim() != 1 or labels.dtype == torch.bool:
        return
    loss = trainer.loss
    blocked = [m for m in (loss.modules() if isinstance(loss, nn.Module) else [loss])
               if getattr(m, "grouping", None) == "blocks" and hasattr(m, "blocks_are_classes")]
    sampler = trainer.sampler
    if not blocked or sampler is None or iter(sampler) is sampler:
        return
    try:
        with rng_scope(trainer.config.training.seed + 1):
            first = torch.as_tensor(list(next(iter(sampler))), dtype=torch.long)
        batch_labels = labels[first]  # (B,)
    except Exception:  # (a sampler error surfaces in training, where it is reported)
        return
    for module in blocked:
        if module.blocks_are_classes(batch_labels):
            continue
        names = _names(trainer, given or {}, ("sampler", "loss"))
        which = f"loss {names['loss'] or type(loss).__name__!r}"
        if module is not loss:
            which = f"the {getattr(type(module), 'registry_name', 'smooth_ap')} loss in {which}"
        classes, counts = torch.unique(batch_labels, return_counts=True)
        shown = batch_labels[:24].tolist()
        raise ValueError(
            f"{which} uses grouping: blocks (pytorch-metric-learning's layout): it takes "
            f"each run of {classes.numel()} consecutive rows (the batch's number of classes) "
            f"as one class, but the first batch of sampler "
            f"{names['sampler'] or type(sampler).__name__!r} ({len(batch_labels)} rows, "
            f"class sizes {sorted(set(counts.tolist()))}, labels {shown}"
            f"{' ...' if len(batch_labels) > 24 else ''}) is not such blocks, so its "
            "positives would be rows that merely sit next to each other; set grouping: "
            "labels in its config"
            + (" (--set loss.grouping=labels)" if module is loss else "")
            + " to take each class's rows as its positives, or sample batches sorted by "
            "class with as many rows per class as classes")


__all__ = ["check_trainable", "check_batch_negatives", "checked_sampler",
           "warnings_unless_refused", "check_block_groups",
           "check_distances", "check_loss_gradient", "check_loss_sizes", "check_loss_value",
           "check_mined", "check_tuple_gradient", "checked_embeddings"]
