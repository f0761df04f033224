"""Build a run's components (model, loss, miner, sampler) from its config and its data.

Shape parameters the data determines are filled in when the config leaves them out:
``in_features`` / ``in_channels`` / ``image_size`` of the model, ``num_classes`` /
``embedding_size`` of proxy and classifier losses, also where they are nested in composite
losses (:func:`loss_shape_params`). :func:`resolve_config` writes them into the config, so
a saved run rebuilds its model without its data.

A model setting added after runs were saved without it (the pretrained backbone's
``antialias``) is written into every new run's config with its default
(:func:`new_run_params`), and a saved run whose config lacks it gets the value its model
had before the setting existed (:func:`saved_run_params`), so it embeds as it trained.

A loss's embedding size is always the width of the embeddings the model gives, never the
model config's ``dim`` alone: a pretrained embedder with ``head_type: none`` or
``residual`` gives its backbone's features, whatever ``dim`` says, and a text encoder's
width is in its folder's config. A model class declares that width from its config
(``dim_from_config``, :func:`declared_model_dim`), so the model is not built (nor its
weights loaded) once more to learn it; only a model whose class declares none is built
and asked (:func:`built_model_dim`).
"""

from __future__ import annotations

import copy
import inspect
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dmlkit._checks import is_int
from dmlkit.config.schema import Config
from dmlkit.models.modes import eval_mode
from dmlkit.registry import (
    LOSSES,
    MINERS,
    MODELS,
    NESTED_PARTS,
    SAMPLERS,
    build_from_config,
)
from dmlkit.training.rng import rng_scope
from dmlkit.training.sampler_build import _params, build_sampler

#: data settings that name files, relative to the working directory when not absolute
DATA_PATH_KEYS = ("path", "tuples", "features")


#: channel counts of an image: grey, RGB, RGBA
IMAGE_CHANNELS = (1, 3, 4)


def channel_last_problem(shape: tuple[int, ...]) -> str | None:
    """Why images of per-item ``shape`` look channel-last, ``(H, W, C)`` where dmlkit
    takes ``(C, H, W)``, in words that say what to do; ``None`` when they do not.

    They do when the last of three axes is a channel count (1, 3 or 4) and the first is
    not. This is the one layout rule of training (:func:`model_shape_params`) and of the
    inputs given to a trained run (:func:`dmlkit.runs.queries.check_input_shape`), so a
    file refused by one is refused by the other, grey ``(H, W, 1)`` images included.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or shape[0] in IMAGE_CHANNELS or shape[-1] not in IMAGE_CHANNELS:
        return None
    return (f"the images look channel-last: each is {shape} (H, W, C), but dmlkit takes "
            "(n, C, H, W) images; transpose them, e.g. x.transpose(0, 3, 1, 2)")


def model_shape_params(spec: dict[str, Any], example: Tensor) -> dict[str, Any]:
    """Model parameters that ``example`` (one input, no batch dim) implies and ``spec`` lacks.

    ``image_size`` is the side of square images and ``[height, width]`` of others (every
    model that takes ``image_size`` takes both forms).
    """
    params = _params(MODELS, spec["name"])
    problem = channel_last_problem(tuple(example.shape)) if "in_channels" in params else None
    if problem is not None:
        raise ValueError(problem)
    _check_given_shape(spec, params, example)
    filled: dict[str, Any] = {}
    if "in_features" in params and "in_features" not in spec:
        filled["in_features"] = int(example.numel())
    if "in_channels" in params and "in_channels" not in spec:
        filled["in_channels"] = int(example.shape[0]) if example.dim() == 3 else 1
    if "image_size" in params and "image_size" not in spec and example.dim() >= 2:
        height, width = (int(v) for v in example.shape[-2:])
        # a side for square images (as configs write it), [height, width] otherwise
        filled["image_size"] = height if height == width else [height, width]
    return filled


def _check_given_shape(spec: dict[str, Any], params: set[str], example: Tensor) -> None:
    """Shape settings written in the config must match the data (else a model that adapts
    to any size trains, and its export takes the wrong input)."""
    actual: dict[str, Any] = {}
    if "in_features" in params and "in_features" in spec:
        actual["in_features"] = int(example.numel())
    if "in_channels" in params and "in_channels" in spec and example.dim() == 3:
        actual["in_channels"] = int(example.shape[0])
    if "image_size" in params and spec.get("image_size") is not None and example.dim() >= 2:
        actual["image_size"] = tuple(int(v) for v in example.shape[-2:])
    for key, have in actual.items():
        given = spec[key]
        if key == "image_size":  # a side, or (height, width)
            given = tuple(given) if isinstance(given, (list, tuple)) else (given, given)
        if given != have:
            fit = (have[0] if have[0] == have[1] else f"[{have[0]},{have[1]}]"
                   ) if key == "image_size" else have  # fmt: skip
            raise ValueError(
                f"model.{key} is {spec[key]}, but the data's items have {have} (each item "
                f"{tuple(example.shape)}); set it to the data's (--set model.{key}={fit}), "
                "or remove it from the config to take it from the data")


def _saved_run_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """The model class's ``saved_run_defaults``: settings added after runs were saved
    without them, with the values those runs' models had."""
    defaults = getattr(MODELS.get(spec["name"]), "saved_run_defaults", None)
    return dict(defaults) if isinstance(defaults, dict) else {}


def new_run_params(spec: dict[str, Any]) -> dict[str, Any]:
    """The settings of ``spec``'s model class that runs saved before them lack and
    ``spec`` leaves out, with the constructor's defaults: what a new run's config records,
    so that loading it never mistakes it for an older run."""
    cls = MODELS.get(spec["name"])
    params = inspect.signature(cls.__init__).parameters
    return {key: params[key].default for key in _saved_run_defaults(spec)
            if key not in spec and key in params
            and params[key].default is not inspect.Parameter.empty}


def saved_run_params(spec: dict[str, Any]) -> dict[str, Any]:
    """The settings a saved run's model config ``spec`` lacks because the run was saved
    before they existed, with the values its model had then (e.g. ``antialias: False``
    of the pretrained backbone: the run embeds as it trained, and as its indexes hold)."""
    return {key: value for key, value in _saved_run_defaults(spec).items() if key not in spec}


def embedding_dim(model_spec: dict[str, Any]) -> int | None:
    """The embedding dimension a model config names (``dim``), else the class default
    (None for a model without a ``dim`` parameter).

    This is what the config says, not always what the model gives (see
    :func:`declared_model_dim` and :func:`model_output_dim`, which :func:`resolve_config`
    uses for the loss).
    """
    if "dim" in model_spec:
        return int(model_spec["dim"])
    param = inspect.signature(MODELS.get(model_spec["name"]).__init__).parameters.get("dim")
    return None if param is None or param.default is inspect.Parameter.empty else int(param.default)


def model_output_dim(model: nn.Module, example: Any = None) -> int | None:
    """The width of the embeddings ``model`` gives.

    Its ``dim`` attribute when that is an int (every dmlkit model keeps its output width
    there), else the width of its output for ``example`` (one input, no batch dimension)
    run through it in eval mode without gradients (every submodule's mode kept), else
    None.
    """
    dim = getattr(model, "dim", None)
    if isinstance(dim, int) and not isinstance(dim, bool):
        return dim
    if not isinstance(example, Tensor):
        return None
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(example[None])  # (1, dim)
    except Exception:  # (an input it cannot take: the trainer reports it)
        return None
    return int(out.shape[-1]) if isinstance(out, Tensor) and out.dim() == 2 else None


def declared_model_dim(model_spec: dict[str, Any]) -> int | None:
    """The width of the embeddings the model ``model_spec`` configures gives, as its class
    declares it, without building the model; None when it cannot be told so.

    A model class declares its width with a classmethod ``dim_from_config(params)``, which
    takes the constructor's keyword arguments (defaults filled in) and returns the width
    (an int >= 1), or None when it cannot tell. Parameters the constructor would refuse
    (unknown or missing ones, a width that is no int >= 1) give None: building the model
    then reports them.
    """
    cls = MODELS.get(model_spec["name"])
    declare = getattr(cls, "dim_from_config", None)
    if not callable(declare):
        return None
    try:
        bound = inspect.signature(cls).bind(
            **{key: value for key, value in model_spec.items() if key != "name"})
    except TypeError:  # an unknown or missing parameter: the build says which
        return None
    bound.apply_defaults()
    dim = declare(dict(bound.arguments))
    return int(dim) if is_int(dim) and dim >= 1 else None


def built_model_dim(config: Config, example: Any = None) -> int | None:
    """:func:`model_output_dim` of the model ``config.model`` builds (on the CPU; the
    random draws of its initialization are undone, so the run's own draws stay as they
    were)."""
    with rng_scope(config.training.seed):
        model = build_model(config)
    return model_output_dim(model, example)


#: loss parameters that take the embedding dimension (the model's ``dim``; ``l``: the
#: manifold loss's name for it)
_DIM_KEYS = ("embedding_size", "embedding_dim", "descriptors_dim", "l")
#: loss parameters whose values are loss configs (wrappers and composite losses)
_NESTED_LOSS_KEYS = ("loss", "losses")


def loss_shape_params(
    spec: dict[str, Any] | str, num_classes: int | None, dim: int | None
) -> dict[str, Any] | str:
    """``spec`` with ``num_classes`` and the embedding dimension filled in where its loss
    takes them and leaves them out, in the losses it nests too.

    Composite and wrapping losses (``weighted_sum``, ``multiple_losses``,
    ``cross_batch_memory``, ``self_supervised``) hold loss configs under ``loss`` / ``losses``
    (a config, or a list or dict of configs); those are filled in the same way, at any depth.

    Parameters
    ----------
    spec : dict or str
        A loss config ``{"name": ..., **params}``, or a loss name.
    num_classes : int or None
        Number of classes of the training data (None: data without classes, pairs or
        triplets; left out, so a loss whose ``num_classes`` is optional, ``margin``, keeps
        one global parameter).
    dim : int or None
        Embedding dimension of the model (None: unknown, left out).

    Returns
    -------
    dict or str
        A new config (``spec`` is not changed); a name stays a name when nothing is filled.
    """
    if isinstance(spec, str):
        filled = loss_shape_params({"name": spec}, num_classes, dim)
        return spec if filled == {"name": spec} else filled
    if not isinstance(spec, dict) or "name" not in spec:
        return spec  # not a config: the registry reports it when building
    spec = dict(spec)
    params = _params(LOSSES, spec["name"])
    if "num_classes" in params and "num_classes" not in spec and num_classes is not None:
        spec["num_classes"] = int(num_classes)
    for key in _DIM_KEYS:
        if key in params and key not in spec and dim is not None:
            spec[key] = dim
    for key in _NESTED_LOSS_KEYS:
        value = spec.get(key)
        if key not in params or value is None:
            continue
        if isinstance(value, (list, tuple)):
            spec[key] = [loss_shape_params(v, num_classes, dim) for v in value]
        elif isinstance(value, dict) and "name" not in value:  # {loss name: config}
            spec[key] = {k: loss_shape_params(v, num_classes, dim) for k, v in value.items()}
        else:
            spec[key] = loss_shape_params(value, num_classes, dim)
    return spec


def absolute_path(value: Any) -> Any:
    """A relative data path that exists from the working directory, made absolute (so a
    run or a best.yaml read from another directory reads the same file); else ``value``."""
    if isinstance(value, str) and value and not Path(value).is_absolute() and Path(
            value).exists():
        return str(Path(value).resolve())
    return value


def check_idle_model_settings(spec: dict[str, Any]) -> None:
    """Refuse settings of a new run's model config ``spec`` that could have no effect, as
    its class declares them: a classmethod ``refuse_idle_settings(spec)`` raising a
    ``ValueError`` that names the setting and what to do (the pretrained backbone's
    ``dim`` with a residual head). Only new runs are checked: saved runs load as ever."""
    try:
        refuse = getattr(MODELS.get(spec["name"]), "refuse_idle_settings", None)
    except ValueError:  # an unknown model: building it says so
        return
    if callable(refuse):
        refuse(dict(spec))


def absolute_model_paths(spec: dict[str, Any]) -> dict[str, Any]:
    """The file and folder settings of ``spec``'s model that ``spec`` gives as relative
    paths, made absolute against the working directory (a run resumed, evaluated or
    embedded from another directory reads the same weights and feature cache; a folder
    that does not exist yet, a cache to create, too); paths under ``~`` are kept as given.

    A model class lists its path-valued settings in ``path_settings`` (a tuple of
    parameter names, e.g. ``("weights", "cache_dir")``); a class without it has none."""
    try:
        keys = getattr(MODELS.get(spec["name"]), "path_settings", ())
    except ValueError:  # an unknown model: building it says so
        return {}
    out: dict[str, Any] = {}
    for key in keys if isinstance(keys, (tuple, list)) else ():
        value = spec.get(key)
        if (isinstance(value, str) and value and not value.startswith("~")
                and not Path(value).is_absolute()):
            out[key] = str(Path(value).resolve())
    return out


def check_sample_rate(config: Config) -> None:
    """Match the model to the sample rate its audio data is read at (``data.sample_rate``).

    A model that takes a ``sample_rate`` parameter gets the data's rate where the config
    leaves it out (its filters are built for it); a model class that takes one fixed rate
    declares it as ``input_sample_rate`` (pretrained encoders). A rate that differs from
    the data's is refused: the model would embed audio at the wrong speed, silently.
    """
    rate, name = config.data.sample_rate, config.model["name"]
    if "sample_rate" in _params(MODELS, name):
        given = config.model.setdefault("sample_rate", rate)
        if given != rate:
            raise ValueError(f"model.sample_rate is {given} but data.sample_rate is "
                             f"{rate}; remove model.sample_rate")
        return
    fixed = getattr(MODELS.get(name), "input_sample_rate", None)
    if is_int(fixed) and fixed != rate:
        raise ValueError(f"model {name!r} takes {fixed} Hz audio, but data.sample_rate is "
                         f"{rate}; set data.sample_rate: {fixed} (WAV files of any rate are "
                         "resampled to it)")


def resolve_config(config: Config, example: Tensor, num_classes: int | None,
                   new_run: bool = True) -> Config:
    """A copy of ``config`` with the data-dependent model and loss parameters filled in
    (``num_classes`` None: data without class labels, whose losses get none), relative
    data paths (``data.path``, ``tuples``, ``features``) that exist made absolute, and
    the model's relative file and folder settings too (:func:`absolute_model_paths`), so
    that a run resumed or re-read from another directory reads the same files.

    ``new_run`` False (a resumed run's saved config): model settings that have no effect
    are not refused (:func:`check_idle_model_settings`), as a run saved before that rule
    may hold them and must still resume."""
    config = copy.deepcopy(config)
    if new_run:
        check_idle_model_settings(config.model)
    for key in DATA_PATH_KEYS:  # a run records which files it read, wherever it resumes
        setattr(config.data, key, absolute_path(getattr(config.data, key)))
    config.model.update(absolute_model_paths(config.model))  # (its weights, its cache)
    config.model.update(model_shape_params(config.model, example))
    config.model.update(new_run_params(config.model))  # (told apart from older runs)
    if config.data.name == "audio_folder":
        check_sample_rate(config)
    dim = None
    # (a loss that takes the embedding width and leaves it out: the width the model class
    # declares, else ask the built model; the two probes differ exactly where a width
    # would be filled in)
    if loss_shape_params(config.loss, None, 1) != loss_shape_params(config.loss, None, 2):
        dim = declared_model_dim(config.model)
        if dim is None:
            dim = built_model_dim(config, example)
        if dim is None:  # (no dim attribute, and the example did not go through it)
            dim = embedding_dim(config.model)
    loss = loss_shape_params(config.loss, num_classes, dim)
    config.loss = loss if isinstance(loss, dict) else {"name": loss}
    config.check()
    if not config.imports:  # the run records where its own parts come from
        config.imports = part_modules(config)
    return config


def part_modules(config: Config) -> list[str]:
    """The modules outside dmlkit whose registered classes ``config`` names (its model,
    loss, miner, sampler and the components they nest), in order: what a saved run must
    import to build them again. Classes of ``__main__`` (a script's own) are left out:
    no other process can import them by that name."""
    found: list[str] = []

    def walk(registry: Any, spec: Any) -> None:
        if isinstance(spec, list):
            for item in spec:
                walk(registry, item)
            return
        if isinstance(spec, dict) and "name" not in spec:  # {key: config} by name
            for item in spec.values():
                walk(registry, item)
            return
        name = spec.get("name") if isinstance(spec, dict) else spec
        if not isinstance(name, str) or name not in registry:
            return
        module = registry.get(name).__module__
        if module.partition(".")[0] not in ("dmlkit", "__main__") and module not in found:
            found.append(module)
        for key, value in (spec.items() if isinstance(spec, dict) else ()):
            if key in NESTED_PARTS:
                walk(NESTED_PARTS[key], value)

    for section, registry in (("model", MODELS), ("loss", LOSSES), ("miner", MINERS),
                              ("sampler", SAMPLERS)):
        walk(registry, getattr(config, section))
    return found


def build_model(config: Config) -> nn.Module:
    """The configured model; one too large to build (a huge ``dim``) is a ValueError."""
    try:
        return build_from_config(MODELS, config.model)
    except (RuntimeError, MemoryError, OverflowError, TypeError) as err:
        text = str(err).strip()  # (torch's C++ frames after its first line: dropped)
        if isinstance(err, (RuntimeError, TypeError)) and not re.search(
                r"allocat|out of memory|overflow", text, re.I):
            raise  # (a bug, a parameter the model lacks: its own message)
        sizes = {k: v for k, v in dict(config.model).items() if is_int(v)}  # (a dict)
        found = re.search(r"allocate (\d+) bytes", text)
        why = (f"can't allocate {found[1]} bytes" if found else "sizes overflow 64-bit"
               if "overflow" in text.lower() else (text.splitlines() or ["no memory"])[0])
        settings = ", ".join(f"{k}={v}" for k, v in sizes.items())
        raise ValueError(f"model {config.model.get('name')!r} with {settings} cannot be built: "
                         f"{why}; lower model.{max(sizes, key=sizes.get, default='dim')}") from None


def build_loss(config: Config) -> nn.Module:
    return build_from_config(LOSSES, config.loss)


def build_miner(config: Config) -> nn.Module | None:
    return None if config.miner is None else build_from_config(MINERS, config.miner)


__all__ = [
    "IMAGE_CHANNELS",
    "channel_last_problem",
    "resolve_config",
    "absolute_model_paths",
    "check_idle_model_settings",
    "check_sample_rate",
    "model_shape_params",
    "new_run_params",
    "saved_run_params",
    "loss_shape_params",
    "embedding_dim",
    "model_output_dim",
    "declared_model_dim",
    "built_model_dim",
    "build_model",
    "build_loss",
    "build_miner",
    "build_sampler",
    "part_modules",
]
