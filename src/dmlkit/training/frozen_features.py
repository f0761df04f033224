"""Training a head on a frozen pretrained backbone: swap images for cached features.

A run whose model is a pretrained embedder in ``frozen`` mode trains on the backbone's
features of its training (and validation) images, computed once and cached on disk
(:mod:`dmlkit.models.pretrained.feature_cache`); the model takes those features in
place of images, and still takes images when the run is used afterwards. The model built
to compute them is the one that trains (its weights are loaded once).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, NamedTuple

from torch import Tensor, nn

from dmlkit.config.schema import Config
from dmlkit.data.dataset import ArrayDataset
from dmlkit.training.build import build_model
from dmlkit.training.rng import get_rng_state, rng_scope


class FeatureData(NamedTuple):
    """What :func:`frozen_feature_data` gives: the ``train`` and ``val`` data to train on,
    and the ``model`` built to compute their features with ``model_rng``, the random state
    its building left (both ``None`` for a model that is not a frozen backbone): passed on
    as they are to :class:`~dmlkit.training.Trainer`, which then builds no second model."""

    train: ArrayDataset
    val: Any
    model: nn.Module | None = None
    model_rng: dict[str, Any] | None = None


def seeded_model(config: Config) -> tuple[nn.Module, dict[str, Any]]:
    """The configured model built as :class:`~dmlkit.training.Trainer` builds it (seeded by
    ``training.seed``), and the random state its building left: a trainer given both
    (``model``, ``model_rng``) trains exactly as one that builds its own."""
    with rng_scope(config.training.seed):
        return build_model(config), get_rng_state()


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


def backbone_inputs(model: nn.Module, x: Tensor,
                    log: Callable[[str], None] | None = None) -> Tensor:  # fmt: skip
    """What to embed ``x`` through ``model`` with: for a frozen backbone given images, their
    backbone features ``(n, feature_dim)`` for the whole set at once, through the cache a
    run's training wrote them to (keyed by the whole set, so a run's held-out set is read,
    not computed again); features of a set under ``CACHE_MIN_BATCH`` rows that are not
    cached yet are computed but not stored, and a damaged entry of any set is written
    again (:func:`~dmlkit.models.pretrained.feature_cache.cached_features`). Anything
    else: ``x`` as it is."""
    if not is_frozen_backbone(model) or x.shape[0] == 0:
        return x
    if x.dim() == 2 and x.shape[1] == model.feature_dim:
        return x  # features already
    from dmlkit.models.pretrained.efficientnet_lite0 import CACHE_MIN_BATCH
    from dmlkit.models.pretrained.feature_cache import cached_features

    return cached_features(model, x, log=log, store=x.shape[0] >= CACHE_MIN_BATCH)


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
) -> FeatureData:
    """``train`` and ``val`` as cached backbone features, with the model that computed them
    (:func:`seeded_model`), when ``config.model`` is a frozen pretrained embedder; else
    unchanged, and no model.

    Raises
    ------
    ValueError
        Augmentation is configured: cached features cannot be augmented.
    """
    if not check_frozen_config(config):
        return FeatureData(train, val)
    model, model_rng = seeded_model(config)
    train = feature_dataset(model, train, log)
    if getattr(val, "x", None) is not None:
        val = feature_dataset(model, val, log)
    return FeatureData(train, val, model, model_rng)


__all__ = ["FeatureData", "is_frozen_backbone", "feature_dataset", "backbone_inputs",
           "frozen_feature_data", "check_frozen_config", "seeded_model"]
