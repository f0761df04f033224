"""What the :class:`~dmlkit.training.Trainer` asks of the batches a sampler gives: at
least one batch an epoch, none of them empty. A sampler of one's own that gives no batch
(e.g. a ``batch_size`` larger than the data, with the last incomplete batch dropped) or
only empty ones would otherwise end a run that never took a training step, its metrics
those of the untrained model."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: what a sampler must give, for the messages below
_NEEDS = ("a sampler yields lists of positions into the training data, at least one batch "
          "an epoch and at least one position a batch")


def sampler_name(sampler: Any, name: Any = None) -> str:
    """``name`` (the config's) when given, else the sampler's registry name or class."""
    if isinstance(name, str) and name:
        return name
    return getattr(type(sampler), "registry_name", None) or type(sampler).__name__


def check_sampler_length(sampler: Any, name: Any = None) -> None:
    """Refuse, before any epoch, a sampler whose ``len()`` (the batches an epoch yields)
    is 0 (``name``: its config name, else its registry name or class names it). A sampler
    without ``len()`` or with an invalid one is left to the schedule, which sizes itself
    by it and says so."""
    try:
        size = len(sampler)
    except Exception:  # (refused where the schedule is sized by it)
        return
    if size == 0:
        raise ValueError(
            f"sampler {sampler_name(sampler, name)!r} gives no batches (its len() is 0), "
            "so training would take no step: give it fewer items per batch than the "
            "training data holds (e.g. a smaller batch_size) or more data; " + _NEEDS)


def checked_batches(sampler: Any, epoch: int, trainable: bool = True) -> Iterator[Any]:
    """The batches ``sampler`` yields in (0-based) ``epoch``, refusing an empty batch
    when it is drawn and an epoch that ends without a batch, naming the sampler (its
    registry name, else its class). Nothing when not ``trainable`` (a model with
    nothing to train: its epochs only validate)."""
    if not trainable:
        return
    count = 0
    for batch in sampler:
        size = len(batch) if hasattr(batch, "__len__") else None
        if size == 0:
            raise ValueError(
                f"sampler {sampler_name(sampler)!r} gave an empty batch (batch "
                f"{count + 1} of epoch {epoch + 1}), a step with nothing to train on: "
                f"{_NEEDS}")
        count += 1
        yield batch
    if count == 0:
        try:
            size = f"its len() is {len(sampler)}"
        except Exception:
            size = "it has no len()"
        raise ValueError(
            f"sampler {sampler_name(sampler)!r} gave no batches in epoch {epoch + 1} "
            f"({size}), so the epoch took no training step: give it fewer items per batch "
            f"than the training data holds (e.g. a smaller batch_size) or more data; {_NEEDS}")


__all__ = ["check_sampler_length", "checked_batches", "sampler_name"]
