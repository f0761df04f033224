"""Build a run's batch sampler from its config (:func:`build_sampler`): labels, seed,
dataset and model come from the training data, never from the config."""

from __future__ import annotations

import inspect
from typing import Any

from torch import Tensor, nn
from torch.utils.data import Sampler

from dmlkit.config.field_rules import check_sampler_supplied
from dmlkit.config.schema import Config
from dmlkit.registry import DISTANCES, SAMPLERS, build_from_config
from dmlkit.training.batches import RandomBatchSampler


def _params(registry: Any, name: str) -> set[str]:
    return set(inspect.signature(registry.get(name).__init__).parameters) - {"self"}


def build_sampler(
    config: Config,
    labels: Tensor | None,
    n: int,
    dataset: Any = None,
    model: nn.Module | None = None,
) -> Sampler:
    """The configured batch sampler over ``n`` items (labels, seed and, for samplers that
    mine with the model being trained, ``dataset`` and ``model`` filled in; a nested
    ``distance`` config is built). ``labels``, ``dataset`` and ``model`` always come from
    the caller (a sampler config that sets them is refused); a sampler that takes labels
    or declares ``needs_labels`` is refused for data without labels (``labels`` None).

    Without a ``sampler`` section: :class:`RandomBatchSampler` of ``training.batch_size``.
    """
    seed = config.training.seed
    if config.sampler is None:
        return RandomBatchSampler(n, config.training.batch_size, seed=seed)
    spec = dict(config.sampler)
    check_sampler_supplied(spec)  # (labels, dataset, model: never a config's own)
    params = _params(SAMPLERS, spec["name"])
    needs_labels = getattr(SAMPLERS.get(spec["name"]), "needs_labels", False)
    if ("labels" in params or needs_labels) and labels is None:
        raise ValueError(
            f"sampler {spec['name']!r} needs labels; the training data has none (no "
            "`labels` attribute: a dataset of your own gives its items' class ids as "
            ".labels, a (n,) tensor, as dmlkit.data.ArrayDataset(x, labels) does)")
    if "labels" in params:
        spec["labels"] = labels
    if "seed" in params and "seed" not in spec:
        spec["seed"] = seed
    for key, value in (("dataset", dataset), ("model", model)):
        if key in params:
            if value is None:
                raise ValueError(f"sampler {spec['name']!r} needs the training {key}")
            spec[key] = value
    if isinstance(spec.get("distance"), (dict, str)):
        spec["distance"] = build_from_config(DISTANCES, spec["distance"])
    name = spec.pop("name")
    try:
        return SAMPLERS.build(name, **spec)
    except ValueError as e:  # (a range error says which section: "m must be >= 1")
        if type(e) is not ValueError or str(e).startswith("sampler "):
            raise
        raise ValueError(f"sampler {name!r}: {e}") from e


__all__ = ["build_sampler"]
