"""Settings and inputs a training run refuses or warns about before it starts (settings
that could never have an effect, training images outside the range the model takes), and
a run that diverges while it trains (a non-finite loss, embeddings or weights)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from dmlkit.config.schema import Config

#: the end of :func:`~dmlkit.functional.distances.check_embeddings`'s message for
#: embeddings with NaN or infinite entries
NON_FINITE = "contains NaN or infinite values"
#: what a diverging run should change: in a new run, as a resume keeps the run's settings
_ADVICE = ("lower optimizer.lr in a new run (another --out, or this run removed: a resume "
           "keeps the run's settings), or check the data and the loss's settings")


def check_model_settings(config: Config) -> None:
    """Refuse model settings that can never have an effect in training (as a frozen
    backbone refuses augmentation): ``trainable_blocks`` of a pretrained backbone in
    ``frozen`` mode, whose blocks never train. Saved runs still load with them."""
    from dmlkit.registry import MODELS

    model = config.model
    try:
        cls = MODELS.get(model.get("name"))
    except ValueError:  # an unknown model: building it says so
        return
    if (hasattr(cls, "backbone_features") and model.get("trainable_blocks") is not None
            and model.get("mode", "frozen") == "frozen"):
        raise ValueError(
            f"model.trainable_blocks ({model['trainable_blocks']}) has no effect with "
            "model.mode: frozen (the backbone never trains): remove it, or set "
            "model.mode: finetune to train that many of the last blocks")


def idle_patience(training: Any) -> bool:
    """Whether ``training.patience`` is set in a run that validates on nothing (neither
    ``val_classes`` nor ``val_fraction``), where it could never stop the run."""
    return (training.patience is not None and training.val_classes is None
            and not training.val_fraction > 0)


def check_patience(config: Config) -> None:
    """Refuse ``training.patience`` in a run that validates on nothing (neither
    ``training.val_classes`` nor ``training.val_fraction``): early stopping watches the
    validation MAP@R, so it could never stop the run."""
    tc = config.training
    if idle_patience(tc):
        raise ValueError(
            f"training.patience ({tc.patience}) stops training when the validation MAP@R "
            "stops improving, but this run validates on nothing: set training.val_classes "
            "or training.val_fraction, or remove patience (all training.epochs then run)")


def check_training_inputs(config: Config, x: Tensor) -> None:
    """Warn when the training inputs ``x`` are far outside the values ``config.model``
    takes (its class's ``input_range``: ``efficientnet_lite0``'s images in ``[0, 1]``),
    naming the data (:func:`~dmlkit.data.checks.check_image_range`)."""
    from dmlkit.data.checks import check_image_range
    from dmlkit.registry import MODELS

    name, cfg = config.model.get("name"), config.data
    try:
        expected = getattr(MODELS.get(name), "input_range", None)
    except ValueError:  # an unknown model: building it says so
        return
    if expected is not None:
        source = (f"{cfg.path} (array {cfg.x_key!r})" if cfg.name == "npz"
                  else f"data {cfg.name}" + (f" ({cfg.path})" if cfg.path else ""))
        check_image_range(x, expected, source, str(name))


def trainer_data(train_data: Any, val_data: Any) -> tuple[Tensor | None, Any]:
    """``(labels, val_data)`` of the data a :class:`~dmlkit.training.Trainer` is given:
    the training items' labels (their ``.labels``; a ``TensorDataset(x, labels)``'s
    second tensor), and ``val_data`` as validation reads it (a ``TensorDataset(x,
    labels)`` as the pair ``(x, labels)``). Refuses a ``DataLoader`` (the trainer batches
    the dataset itself) and validation data without inputs and labels, before any
    epoch."""
    from torch.utils.data import DataLoader

    for what, data in (("train_data", train_data), ("val_data", val_data)):
        if isinstance(data, DataLoader):
            raise TypeError(
                f"{what} is a DataLoader; pass its dataset ({what}=loader.dataset): the "
                "trainer batches the dataset itself, with the configured sampler (or "
                "training.batch_size)")
    labels = getattr(train_data, "labels", None)
    if labels is None:
        labels = _tensor_dataset_labels(train_data, "train_data")
    elif not isinstance(labels, Tensor):
        labels = _label_tensor(labels)
    if val_data is not None and not (hasattr(val_data, "x") and hasattr(val_data, "labels")):
        val_labels = _tensor_dataset_labels(val_data, "val_data")
        if val_labels is None:
            raise TypeError(
                f"val_data must hold inputs .x and their labels .labels (as "
                f"dmlkit.data.ArrayDataset(x, labels) does), or be a TensorDataset(x, "
                f"labels); got a {type(val_data).__name__}")
        val_data = (val_data.tensors[0], val_labels)
    return labels, val_data


def given_model_width(model: Any, train_data: Any) -> int | None:
    """The embedding width of a model given to the trainer ready-made: its ``dim``, else
    its output's width on the first training item's input (None when neither tells)."""
    from dmlkit.training.build import model_output_dim

    try:
        item = train_data[0]
    except Exception:  # (a dataset that cannot be indexed: its batches will tell)
        item = None
    example = item[0] if isinstance(item, (tuple, list)) and item else None
    return model_output_dim(model, example if isinstance(example, Tensor) else None)


def _label_tensor(labels: Any) -> Any:
    """A dataset's ``.labels`` that are not a tensor (a list, a numpy array) as one, so
    that the checks before the first epoch see them; names instead of class ids are a
    ``TypeError`` saying how to map them (the batches' labels would not collate)."""
    import numpy as np

    try:
        arr = np.asarray(labels)
    except (TypeError, ValueError):  # (ragged rows: left for the dataset's own batches)
        return labels
    if arr.dtype.kind in "iub" and arr.ndim in (1, 2):
        return torch.as_tensor(arr.astype(np.int64) if arr.dtype.kind in "iu" else arr)
    if arr.dtype.kind in "USO" and arr.size:
        raise TypeError(
            f"train_data.labels must be integer class ids, got values such as "
            f"{arr.flat[0]!r}: map names to ids (names, ids = numpy.unique(labels, "
            "return_inverse=True)) and have the dataset give the ids, in .labels and in "
            "its items")
    return labels


def _tensor_dataset_labels(data: Any, what: str) -> Tensor | None:
    """The labels of a ``TensorDataset(x, labels)``: its second of two tensors, when
    they are integer (or bool) class ids, one row per item; else None. Floating-point
    (or complex) labels are a ``TypeError`` naming ``what`` (``"train_data"``): class
    ids are integers."""
    from torch.utils.data import TensorDataset

    if not isinstance(data, TensorDataset) or len(data.tensors) != 2:
        return None
    x, labels = data.tensors
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(
            f"the labels of {what} (the second tensor of its TensorDataset) are "
            f"{labels.dtype}, but labels must be integer class ids: pass them as "
            "int64 (TensorDataset(x, labels.long()), where they hold whole numbers)")
    if labels.dim() not in (1, 2) or len(labels) != len(x):
        return None
    return labels


def check_loss_value(value: float, epoch: int, step: int) -> None:
    """Raise ``FloatingPointError`` when a batch's loss ``value`` is NaN or infinite
    (``epoch`` and ``step`` 0-based)."""
    if not math.isfinite(value):
        raise FloatingPointError(
            f"loss is {value} at epoch {epoch + 1}, batch {step + 1}; {_ADVICE}")


@contextmanager
def finite_embeddings(epoch: int, step: int | None = None) -> Iterator[None]:
    """Report the embeddings check's error for NaN or infinite embeddings (weights that
    diverged) raised inside the block as a ``FloatingPointError`` naming the epoch and the
    batch (``step``; ``None``: validating after the epoch), as a non-finite loss is."""
    try:
        yield
    except ValueError as err:
        if not str(err).endswith(NON_FINITE):
            raise
        where = (f"at epoch {epoch + 1}, batch {step + 1}" if step is not None
                 else f"of the validation items after epoch {epoch + 1}")
        raise FloatingPointError(
            f"non-finite embeddings {where} (training diverged); {_ADVICE}") from None


def check_finite_weights(modules: Iterable[torch.nn.Module], epoch: int) -> None:
    """Raise ``FloatingPointError`` when a parameter of ``modules`` is NaN or infinite
    after ``epoch`` (1-based), before the epoch's checkpoint would keep it."""
    for module in modules:
        for name, p in module.named_parameters():
            if p.is_floating_point() and not bool(torch.isfinite(p).all()):
                raise FloatingPointError(
                    f"non-finite weights ({name}) after epoch {epoch} (training diverged); "
                    f"{_ADVICE}")


__all__ = ["check_finite_weights", "check_loss_value", "check_model_settings",
           "check_patience", "check_training_inputs", "finite_embeddings", "trainer_data"]
