"""The preflight of tuple data (weak supervision: batches of pairs / triplets without class
labels): the checks :func:`~dmlkit.training.preflight.check_trainable` makes on a first
labelled batch, made on a first batch of tuples."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from dmlkit.models.modes import eval_mode
from dmlkit.training.batches import fetch_items
from dmlkit.training.rng import rng_scope

#: tuples in the first batch checked
FIRST_TUPLES = 8


def view_losses(loss: Any) -> list[str]:
    """The names of the self-supervised view wrappers in ``loss`` (itself or nested): they
    pair two views of each item, so they cannot take a batch's own tuples."""
    from dmlkit.losses.self_supervised import SelfSupervisedLoss

    modules = loss.modules() if isinstance(loss, nn.Module) else [loss]
    return [getattr(type(m), "registry_name", type(m).__name__) for m in modules
            if isinstance(m, SelfSupervisedLoss)]


def check_tuple_batch(trainer: Any, names: dict[str, Any]) -> None:
    """Refuse, before any epoch, a model or loss that cannot train on ``trainer``'s tuple
    data: a self-supervised view wrapper (it reads a batch as two halves of views and
    ignores its tuples), a model that cannot take the items or returns NaN / infinite
    embeddings for them (e.g. NaN in the features), an embedding size the loss does not
    match, or a loss that fails on the first batch's tuples (e.g. ``margin`` with
    ``num_classes``: per-class parameters need class labels). ``names``: each part's
    name, as :func:`~dmlkit.training.preflight.check_trainable` gives them.

    The first tuples go through the model in eval mode without gradients, then through
    a copy of the loss with their ``indices``; the random states are restored after."""
    from dmlkit.training.preflight import check_loss_sizes, check_loss_value, checked_embeddings

    kind = getattr(trainer.train_data, "kind", "tuples")
    loss_name = names["loss"] or type(trainer.loss).__name__
    wrappers = view_losses(trainer.loss)
    if wrappers:
        where = (f"loss {loss_name!r}" if wrappers[0] == loss_name else
                 f"the {wrappers[0]!r} loss in loss {loss_name!r}")
        raise ValueError(
            f"{where} cannot train from {kind} without class labels: it takes no tuples "
            "(it pairs two augmented views of each item); pairs / triplets train tuple "
            "losses (contrastive, triplet_margin, multi_similarity, ...)")
    try:
        n = min(len(trainer.train_data), FIRST_TUPLES)
        with rng_scope(trainer.config.training.seed):
            batch = fetch_items(trainer.train_data, list(range(n)), trainer.collate_fn)
        inputs, _, indices = trainer.unpack(batch)
    except Exception:  # a data error surfaces in training, where it is reported
        return
    if indices is None or not isinstance(inputs, Tensor):
        return
    inputs = inputs.to(trainer.device)
    try:
        with torch.no_grad(), eval_mode(trainer.model):
            output = trainer.model(inputs)
    except (ValueError, TypeError) as err:
        raise ValueError(f"model {names['model']!r} cannot take this data's inputs "
                         f"({tuple(inputs.shape)}): {err}") from err
    except Exception:  # the model's own error surfaces in training, as before
        return
    embeddings = checked_embeddings(output, names["model"], len(inputs))
    check_loss_sizes(trainer.loss, names, int(embeddings.shape[1]),
                     torch.zeros(0, dtype=torch.long))
    try:
        with torch.no_grad():
            value = copy.deepcopy(trainer.loss)(embeddings, None, indices=indices)
    except (ValueError, TypeError) as err:
        raise ValueError(f"loss {loss_name!r} cannot train from {kind} without class labels: "
                         f"{err}; settings per class (such as num_classes) need class "
                         "labels: remove them, or see the loss's documentation") from err
    check_loss_value(value, loss_name)


__all__ = ["FIRST_TUPLES", "check_tuple_batch", "view_losses"]
