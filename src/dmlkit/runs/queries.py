"""Search queries for a run's index: say what a query file holds, and shape raw inputs as
the run's model saw them in training.

A query is either an embedding (a row of width ``dim``) or a raw input that the run's
model embeds. The two are never told apart by width alone: an ``.npz`` names its array
(``embeddings`` or ``x``), and a bare ``.npy`` is accepted only when its shape fits one
reading (``kind="auto"``) or when the caller says which (``kind="embeddings"`` /
``"inputs"``). Raw inputs are brought to the training inputs' shape and scale: rows are
reshaped to the input shape, ``uint8`` / ``uint16`` arrays and images are scaled to
``[0, 1]`` as the loaders scale them, and values far outside the training inputs' range
raise a warning.

:func:`check_input_shape` is the one rule of which inputs a run's model takes, shared by
``dmlkit search``, ``embed``, ``evaluate``, ``index build`` and ``explain``: the
training inputs' shape, the same values reshaped where a reshape cannot reorder them
(flat rows, a size-1 axis added or dropped), or, for a model that resizes every image
itself (a pretrained backbone), images of any height and width. Channel-last images are
refused with the advice training gives (one rule:
:func:`~dmlkit.training.build.channel_last_problem`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

QUERY_KINDS = ("auto", "embeddings", "inputs")


@dataclass
class InputSpec:
    """Shape (without the batch axis), dtype and value range of a run's training inputs.

    ``any_size`` says the run's model resizes every image itself, so images of another
    height and width (same channels) are valid inputs too. ``origin`` says whose inputs
    these are, as messages name them: ``"training"`` (the run's training inputs, or its
    own split an index was built from, in their shape) or ``"index"`` (the other data
    an index was built from, ``--data``, which :meth:`from_info` reads: for a model
    that resizes any size, not the training inputs' size). It is not stored, nor
    compared. ``changed`` says, for messages, how the run's training data now differs
    from what its model was built for (``""`` where it does not).
    """

    shape: tuple[int, ...]
    dtype: str
    low: float
    high: float
    any_size: bool = False
    origin: str = field(default="training", compare=False)
    changed: str = field(default="", compare=False)

    @property
    def described(self) -> str:
        """Whose inputs the spec holds, for messages: ``"the run was trained on"`` or
        ``"the index was built from"``."""
        return ("the index was built from" if self.origin == "index"
                else "the run was trained on")

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))

    def to_dict(self) -> dict[str, Any]:
        return {"input_shape": list(self.shape), "input_dtype": self.dtype,
                "input_range": [self.low, self.high], "input_any_size": self.any_size}

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> InputSpec | None:
        """The spec stored in an index's ``info`` (``None`` for older indexes): of
        ``origin`` ``"index"`` where the index was built from other data than the run's
        own splits (its ``data``), else ``"training"``."""
        if "input_shape" not in info:
            return None
        from dmlkit.runs.data import SPLITS

        low, high = info.get("input_range", [float("nan"), float("nan")])
        own = str(info.get("data", SPLITS[0])) in SPLITS
        return cls(tuple(int(s) for s in info["input_shape"]), str(info.get("input_dtype")),
                   float(low), float(high), bool(info.get("input_any_size", False)),
                   origin="training" if own else "index")


def input_spec(x: Any, *, any_size: bool = False) -> InputSpec:
    """The :class:`InputSpec` of training inputs ``x`` of shape ``(n, ...)``."""
    import torch

    t = torch.as_tensor(x)
    dtype = str(t.dtype).replace("torch.", "")
    if t.numel() == 0:
        return InputSpec(tuple(t.shape[1:]), dtype, float("nan"), float("nan"), any_size)
    return InputSpec(tuple(t.shape[1:]), dtype, float(t.min()), float(t.max()), any_size)


def resizes_inputs(model: Any) -> bool:
    """Whether ``model`` resizes every image to a side of its own (``resolution``), as
    the pretrained backbones do, so that images of any height and width are valid."""
    return isinstance(getattr(model, "resolution", None), int) and callable(
        getattr(model, "prepare", None))


def run_input_spec(run: Any) -> InputSpec | None:
    """The input spec of a run's training inputs (loads the run's data).

    What the run recorded comes first: where its model's config records an input shape
    (``in_channels`` and ``image_size``, or ``in_features``) that the data as it is now
    does not have (an RGB image added to a grey folder), the spec is the recorded shape
    (a grey ``(1, H, W)`` for ``in_features`` of ``H * W``) with an unknown range, and its
    ``changed`` says the data changed since training.

    A run trained from a tuple file has no labelled split, and a run whose training data
    is gone (moved or deleted) has none to read: their spec is the shape their model's
    config records (``in_channels`` and ``image_size``, or ``in_features``), with an
    unknown range. A tuple run whose config records none has ``None`` (inputs taken as
    they are).

    Raises
    ------
    ValueError
        When the training data cannot be read and the config records no input shape,
        saying why the data is needed and what reading it said.
    """
    from dmlkit.training.run import build_splits

    any_size = resizes_inputs(run.model)
    recorded = recorded_input_spec(run.config.model, any_size)
    if run.config.data.tuples is not None:
        return recorded
    try:
        train, _ = build_splits(run.config)
    except (OSError, ValueError) as err:  # the data is gone: the config's shape will do
        if recorded is not None:
            return recorded
        reason = f"{err.filename}: {err.strerror}" if (
            isinstance(err, OSError) and err.filename is not None and err.strerror) else err
        raise ValueError(
            "the shape of the run's inputs is read from its training data, as its config "
            f"records none (model in_channels and image_size, or in_features), and the "
            f"data cannot be read: {reason}; restore the data where its config.yaml "
            "says") from err
    found = input_spec(train.x, any_size=any_size)
    if recorded is None or _agrees(recorded.shape, found.shape, any_size):
        return found
    shape = recorded.shape
    if len(shape) == 1 and len(found.shape) == 3:  # flat rows of images: which channels
        side = found.shape[1] * found.shape[2]
        shape = next(((c, *found.shape[1:]) for c in (1, 3) if c * side == shape[0]), shape)
    return InputSpec(shape, recorded.dtype, float("nan"), float("nan"), any_size,
                     changed=(f"the run's training data ({run.config.data.path}) now reads "
                              f"as inputs of shape {_shape_text(found.shape)}, not the "
                              f"{_shape_text(shape)} its model was built for: the data "
                              "changed since training"))


def _agrees(recorded: tuple[int, ...], found: tuple[int, ...], any_size: bool) -> bool:
    """Whether training inputs of shape ``found`` are what a model recording the input
    shape ``recorded`` was built for (its size, for flat rows)."""
    if len(recorded) == 1:
        return math.prod(found) == recorded[0]
    if any_size and len(found) == len(recorded) >= 3:
        return found[:-2] == recorded[:-2]
    return found == recorded


def recorded_input_spec(model: dict[str, Any], any_size: bool) -> InputSpec | None:
    """The input shape a model config records (range unknown), else ``None``."""
    size = model.get("image_size")
    if model.get("in_channels") is not None and size is not None:
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        shape: tuple[int, ...] = (int(model["in_channels"]), int(h), int(w))
    elif model.get("in_features") is not None:
        shape = (int(model["in_features"]),)
    else:
        return None
    return InputSpec(shape, "float32", float("nan"), float("nan"), any_size)


def input_fit(shape: tuple[int, ...], spec: InputSpec) -> tuple[int, ...] | None:
    """The shape that per-item inputs of ``shape`` take for the run's model, else ``None``.

    Inputs fit when they have the training inputs' shape; when ``spec.any_size``, the same
    channels at another height and width (kept as they are; a grey ``(H, W)`` image as
    ``(1, H, W)``); or when a reshape cannot reorder their values: flat rows of the
    training inputs' size, the same axes with size-1 axes added or dropped (``(H, W)``
    images for a ``(1, H, W)`` model), or items of the size of a model trained on flat
    rows (flattened). Images that look channel-last
    (:func:`~dmlkit.training.build.channel_last_problem`) never fit a model trained on
    images, grey ``(H, W, 1)`` ones included, as training refuses them: reshaping
    ``(H, W, 3)`` to ``(3, H, W)`` would scramble them.
    """
    shape = tuple(int(s) for s in shape)
    if shape == spec.shape:
        return shape
    if (spec.any_size and len(shape) == len(spec.shape) >= 3
            and shape[:-2] == spec.shape[:-2] and min(shape[-2:]) > 0):
        return shape
    if (spec.any_size and len(shape) == 2 and len(spec.shape) == 3 and spec.shape[0] == 1
            and min(shape) > 0 and _channel_last(shape, spec) is None):  # grey (H, W)
        return (1, *shape)
    if _channel_last(shape, spec) is not None or math.prod(shape) != spec.size:
        return None
    if len(shape) == 1 or len(spec.shape) == 1:  # flat rows, or items of a flat-row model
        return spec.shape
    if [s for s in shape if s != 1] == [s for s in spec.shape if s != 1]:  # size-1 axes
        return spec.shape
    return None


def _channel_last(shape: tuple[int, ...], spec: InputSpec) -> str | None:
    """Why inputs of per-item ``shape`` look channel-last to a model trained on images
    (``spec`` of more than one axis), else ``None``."""
    if len(spec.shape) < 2:
        return None
    from dmlkit.training.build import channel_last_problem

    return channel_last_problem(shape)


def check_input_shape(shape: tuple[int, ...], spec: InputSpec | None,
                      source: str) -> tuple[int, ...]:
    """The shape inputs of ``shape`` (per item) take for the run's model (see
    :func:`input_fit`); ``spec`` ``None`` (unknown) takes them as they are.

    Raises
    ------
    ValueError
        When they do not fit, naming ``source``, their shape and the training shape.
    """
    shape = tuple(int(s) for s in shape)
    if spec is None:
        return shape
    fitted = input_fit(shape, spec)
    problem = _channel_last(shape, spec) if fitted is None else None
    if problem is not None:
        raise ValueError(f"{source}: {problem}")
    if fitted is None:
        other = " (or images of any size with those channels)" if spec.any_size else ""
        raise ValueError(
            f"{source}: inputs of shape {shape} per item, but {spec.described} "
            f"inputs of shape {_shape_text(spec.shape)}{other}; bring them to that shape "
            "(its embeddings of other inputs are not meaningful)"
            + (f" ({spec.changed})" if spec.changed else ""))
    return fitted


def _shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def read_query_array(
    path: Path, dim: int, spec: InputSpec | None, kind: str = "auto"
) -> tuple[np.ndarray, str]:
    """``(array, kind)`` from a ``.npy`` / ``.npz`` query file; ``kind`` is
    ``"embeddings"`` or ``"inputs"``.

    Raises
    ------
    ValueError
        When the file's content is ambiguous (``.npy`` whose rows fit both the embedding
        width and the input size; ``.npz`` holding both ``embeddings`` and ``x`` with
        ``kind`` ``"auto"``) or fits neither, naming the file and the fix.
    """
    if kind not in QUERY_KINDS:
        raise ValueError(f"query kind must be one of {QUERY_KINDS}, got {kind!r}")
    from dmlkit.data.npz import read_arrays

    def checked(x: np.ndarray, what: str) -> tuple[np.ndarray, str]:
        """A row per query: ``(n, dim)`` embeddings, or inputs with a batch axis."""
        if what == "embeddings" and x.ndim == 2 and x.shape[1] == dim:
            return x, what
        if what == "inputs" and x.ndim >= 2:
            return x, what
        want = (f"embeddings (n, {dim})" if what == "embeddings" else "raw inputs (n, "
                f"{_shape_text(spec.shape) if spec is not None else '...'}), a row per query")
        raise ValueError(f"{path} has shape {x.shape}; expected {want}")

    arrays = read_arrays(path)
    if path.suffix.lower() == ".npz":
        if kind == "auto" and {"embeddings", "x"} <= set(arrays):  # the keys cannot tell
            raise ValueError(
                f"{path} holds both 'embeddings' and 'x': say which to search with --as "
                "embeddings (the vectors) or --as inputs (raw inputs 'x', embedded by the "
                "run's model)")
        if kind in ("auto", "embeddings") and "embeddings" in arrays:
            return checked(np.asarray(arrays["embeddings"]), "embeddings")
        if kind in ("auto", "inputs") and "x" in arrays:
            return checked(np.asarray(arrays["x"]), "inputs")
        want = {"auto": "'embeddings' or 'x'", "embeddings": "'embeddings'",
                "inputs": "'x'"}[kind]
        raise ValueError(f"{path} holds arrays {list(arrays)}; a query .npz needs {want} "
                         "('embeddings': vectors to search; 'x': raw inputs to embed)")
    x = np.asarray(arrays["x"])
    if kind != "auto":
        return checked(x, kind)
    is_emb = x.ndim == 2 and x.shape[1] == dim
    is_input = spec is not None and x.ndim >= 2 and input_fit(x.shape[1:], spec) is not None
    if is_emb and is_input:
        raise ValueError(
            f"{path} holds {x.shape[0]} rows of width {x.shape[1]}: that is both the "
            f"embedding dim ({dim}) and the size of the run's inputs "
            f"({_shape_text(spec.shape)} = {spec.size}); say which with --as embeddings "
            "or --as inputs (or save an .npz with key 'embeddings' or 'x')")
    if is_emb:
        return x, "embeddings"
    if is_input:
        return x, "inputs"
    if spec is not None and x.ndim >= 2:
        problem = _channel_last(tuple(x.shape[1:]), spec)
        if problem is not None:
            raise ValueError(f"{path}: {problem}")
    inputs = f" or raw inputs of shape (n, {_shape_text(spec.shape)})" if spec else ""
    raise ValueError(f"{path} has shape {x.shape}; expected embeddings (n, {dim}){inputs}")


def prepare_inputs(x: np.ndarray, spec: InputSpec | None, source: str) -> np.ndarray:
    """Raw inputs (queries, a support set, a gallery, ...) as float32 ``(n, *spec.shape)``,
    scaled as the loaders scale them.

    Integer arrays follow the loaders' rule (:func:`~dmlkit.data.npz.integer_inputs`):
    ``uint8`` becomes ``x / 255`` and ``uint16`` ``x / 65535`` (images), other integers
    float32 as they are; values beyond the training inputs' range (by more than half its
    width) warn (naming them after ``source``: queries, a support set, a gallery).
    """
    from dmlkit._checks import check_real_inputs
    from dmlkit.data.npz import integer_inputs

    x = np.asarray(x)
    if x.ndim < 2 and (spec is None or len(spec.shape) > 0):
        raise ValueError(f"{source}: raw inputs need a row per item, got shape {x.shape}")
    check_real_inputs(x, source, "raw inputs")
    x = integer_inputs(x, source) if x.dtype.kind in "iu" else x.astype(np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{source}: raw inputs contain NaN or infinite values")
    if spec is None:
        return x
    x = x.reshape(x.shape[0], *check_input_shape(x.shape[1:], spec, source))
    check_input_range(x, spec, source, "inputs")
    return x


def check_input_range(x: Any, spec: InputSpec | None, source: str,
                      what: str = "inputs") -> None:
    """Warn when inputs ``x`` (numpy or torch, any shape) range beyond the run's training
    inputs' range by more than half its width: the one range rule of ``dmlkit search``,
    ``embed``, ``evaluate`` and ``index build`` (a spec of unknown range never warns).
    ``what`` names the inputs in the message (``"inputs"``, ``"query inputs"``)."""
    if spec is None:
        return
    span = spec.high - spec.low
    count = x.numel() if callable(getattr(x, "numel", None)) else int(np.size(x))
    if not count or not math.isfinite(span):
        return
    lo, hi = float(x.min()), float(x.max())
    if lo < spec.low - 0.5 * span - 1e-6 or hi > spec.high + 0.5 * span + 1e-6:
        from dmlkit.data.checks import rescale_hint

        hint = rescale_hint(lo, hi, spec.low, spec.high)
        hint = f" ({hint})" if hint is not None else ""
        warnings.warn(
            f"{source}: {what} range over [{lo:.4g}, {hi:.4g}] but {spec.described} "
            f"inputs in [{spec.low:.4g}, {spec.high:.4g}]; scale them the "
            f"same way{hint} (neighbours of mis-scaled inputs are wrong)", UserWarning,
            stacklevel=3)


def run_color(run: Any, spec: InputSpec | None = None) -> str:
    """The colour mode image files are read in for ``run``: its ``data.color``, where
    ``"auto"`` is resolved to the channels its model was trained on (``in_channels``,
    else the training inputs' ``spec`` (read from the run's data when not given):
    1 ``"grayscale"``, 3 ``"rgb"``), so queries get the channels the model takes."""
    color = run.config.data.color
    if color != "auto":
        return color
    channels = run.config.model.get("in_channels")
    if channels is None:
        spec = spec or run_input_spec(run)
        channels = spec.shape[0] if spec is not None and len(spec.shape) == 3 else None
    return {1: "grayscale", 3: "rgb"}.get(channels, "auto")


def read_images(paths: list[Path], image_size: Any, color: str,
                spec: InputSpec | None = None) -> np.ndarray:
    """Image files as ``(n, C, H, W)`` float32 in ``[0, 1]``; a corrupt file is a
    ``ValueError`` naming it.

    With the run's ``spec``, each image is checked before stacking (:func:`input_fit`)
    and brought to the shape it takes, so a misfit names its file and the training
    shape. Images left at different sizes (a run whose model resizes any size) cannot
    share a batch: a ``ValueError`` names the odd ones (embed them one size at a time).
    """
    from collections import Counter

    from dmlkit.data.image_folder import _pillow, read_image
    from dmlkit.data.image_folder import listed_files as listed

    check_not_recordings(paths)
    _pillow()
    arrays = [read_image(p, color, image_size) for p in paths]
    if spec is not None:
        fits = [input_fit(a.shape, spec) for a in arrays]
        bad = [(p, a.shape) for p, a, f in zip(paths, arrays, fits, strict=True) if f is None]
        if bad:
            other = " (or images of any size with those channels)" if spec.any_size else ""
            raise ValueError(
                f"query image{'s' if len(bad) > 1 else ''} {listed(bad)} "
                f"{'do' if len(bad) > 1 else 'does'} not fit the run's model: "
                f"{spec.described} inputs of shape {_shape_text(spec.shape)}{other}; bring "
                f"{'them' if len(bad) > 1 else 'it'} to that shape (channels x height x "
                "width)")
        arrays = [a.reshape(f) for a, f in zip(arrays, fits, strict=True)]
    common = Counter(a.shape for a in arrays).most_common(1)[0][0] if arrays else None
    odd = [(p, a.shape) for p, a in zip(paths, arrays, strict=True) if a.shape != common]
    if odd:
        raise ValueError(
            f"query images differ in size: {listed(odd)}, the others {common}; give "
            "images of one size (resize them, or set the run's "
            "data.image_size)")
    return np.stack(arrays)


def check_not_recordings(paths: list[Path]) -> None:
    """Refuse ``.wav`` query files, pointing to ``dmlkit embed``: queries are images or
    arrays, and a recording's embeddings come from the run's reading of audio folders
    (its sample rate, trimming and crops)."""
    wavs = [p for p in paths if p.suffix.lower() == ".wav"]
    if wavs:
        raise ValueError(
            f"{wavs[0]} is a recording, and queries are image files or a .npy/.npz file: "
            "embed recordings with the run, dmlkit embed RUN --data FOLDER --out q.npz "
            "(FOLDER: one sub-folder of .wav files per speaker), then search with -q q.npz"
        )


def expand_queries(queries: list[Path]) -> list[Path]:
    """Query arguments with directories replaced by the image files inside them
    (``.wav`` recordings refused: :func:`check_not_recordings`)."""
    from dmlkit.data.image_folder import IMAGE_SUFFIXES

    out: list[Path] = []
    for q in queries:
        if q.is_dir():
            found = sorted(p for p in q.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"query folder {q} holds no image files")
            out += found
        elif not q.exists():
            raise FileNotFoundError(f"query file not found: {q}")
        else:
            out.append(q)
    check_not_recordings(out)
    arrays = [q for q in out if q.suffix.lower() in (".npy", ".npz")]
    if arrays and len(out) > 1:
        raise ValueError(f"give one .npy/.npz query file, or image files; got {len(out)} "
                         f"queries including {arrays[0]}")
    return out


__all__ = ["QUERY_KINDS", "InputSpec", "check_input_range", "check_input_shape",
           "check_not_recordings",
           "expand_queries", "input_fit", "input_spec", "prepare_inputs", "read_images",
           "read_query_array", "recorded_input_spec", "resizes_inputs", "run_color",
           "run_input_spec"]
