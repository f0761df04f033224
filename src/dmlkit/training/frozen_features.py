"""Training a head on a frozen pretrained backbone: swap images for cached features.

A run whose model is a pretrained embedder in ``frozen`` mode trains on the backbone's
features of its training (and validation) images, computed once and cached on disk
(:mod:`dmlkit.models.pretrained.feature_cache`); the model takes those features in
place of images, and still takes images when the run is used afterwards.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

from dmlkit.config.schema import Config
from dmlkit.data.dataset import ArrayDataset


def is_frozen_backbone(model: nn.Module) -> bool:
    """Whether ``model`` is a pretrained embedder whose backbone never trains."""
    return getattr(model, "mode", None) == "frozen" and hasattr(model, "backbone_features")


def feature_dataset(
    model: nn.Module, data: ArrayDataset, log: Callable[[str], None] | None = None
) -> ArrayDataset:
    """A copy of ``data`` (same type, same other attributes) whose ``x`` are the model's
    cached backbone features ``(n, feature_dim)``."""
    from dmlkit.models.pretrained.feature_cache import cached_features

    out = copy.copy(data)
    out.x = cached_features(model, data.x, log=log)  # (n, feature_dim)
    return out


def check_frozen_config(config: Config) -> bool:
    """Whether ``config.model`` is a frozen pretrained embedder (trained on cached
    features), refusing augmentation, which cached features cannot have."""
    from dmlkit.registry import MODELS

    cls = MODELS.get(config.model["name"])
    if not hasattr(cls, "backbone_features") or config.model.get("mode", "frozen") != "frozen":
        return False
    if config.data.augment_shift or config.data.augment_hflip or config.data.augment:
        raise ValueError(
            "data augmentation has no effect on a frozen backbone's cached features: "
            "turn it off, or set model.mode: finetune"
        )
    return True


def frozen_feature_data(
    config: Config, train: ArrayDataset, val: Any, log: Callable[[str], None] | None = None
) -> tuple[ArrayDataset, Any]:
    """``(train, val)`` as cached backbone features when ``config.model`` is a frozen
    pretrained embedder, else unchanged.

    Raises
    ------
    ValueError
        Augmentation is configured: cached features cannot be augmented.
    """
    if not check_frozen_config(config):
        return train, val
    from dmlkit.training.build import build_model

    model = build_model(config)
    train = feature_dataset(model, train, log)
    if getattr(val, "x", None) is not None:
        val = feature_dataset(model, val, log)
    return train, val


__all__ = ["is_frozen_backbone", "feature_dataset", "frozen_feature_data", "check_frozen_config"]
