"""Settings and inputs a training run refuses or warns about before it starts: settings
that could never have an effect, and training images outside the range the model takes."""

from __future__ import annotations

from torch import Tensor

from dmlkit.config.schema import Config


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


def check_patience(config: Config) -> None:
    """Refuse ``training.patience`` in a run that validates on nothing (neither
    ``training.val_classes`` nor ``training.val_fraction``): early stopping watches the
    validation MAP@R, so it could never stop the run."""
    tc = config.training
    if tc.patience is not None and tc.val_classes is None and not tc.val_fraction > 0:
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


__all__ = ["check_model_settings", "check_patience", "check_training_inputs"]
