"""Export a run's embedder so it runs without dmlkit: ONNX (onnxruntime) or TorchScript.

The exported graph takes the run's raw input rows flattened to ``(batch, n_features)``
float32, batch axis dynamic, and returns ``(batch, dim)`` embeddings: the reshape to the
model's input shape and every preprocessing step inside the model (normalization,
resizing of pretrained backbones) are part of it. Rows are of one input shape: a model
that resizes images of any size itself is traced at that shape (its resize fixed to it),
so an export records ``input_any_size`` false. A JSON file beside the model
(``FILE.json``) records the input shape, the values the inputs take (dtype float32,
range, for images channels, size and colour mode: :func:`input_description`), the
embedding size and where it came from:
the run directory (absolute) and ``model_sha256``, the fingerprint of the exported
weights (:func:`dmlkit.index.store.model_fingerprint`), which ``dmlkit serve --onnx``
checks against its index, ``weights``, the run's file they are from (``model.pt``, or
``checkpoint.pt`` for a run without it, with ``weights_note`` saying which epoch), and
``file_sha256``, the SHA-256 of the model file itself, which ``dmlkit serve --onnx``
checks to serve the file the description is of.

The export never writes onto a run directory's own files (``model.pt``, ``config.yaml``,
``.train.lock``, ...) nor a ``dmlkit tune`` folder's (``study.db``, ``best.yaml``, ...),
and overwrites an existing file only when asked to (``force=True``).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dmlkit._files import file_checksum, publish_mode
from dmlkit.data.tuples import load_features
from dmlkit.index.store import model_fingerprint
from dmlkit.runs.queries import InputSpec, recorded_input_spec, run_input_spec
from dmlkit.runs.run_files import RUN_FILES, check_not_run_file, is_run_dir
from dmlkit.training.checkpoint import WriteError, interrupts_deferred, write_error
from dmlkit.training.run import MODEL_FILE, build_splits, load_run
from dmlkit.training.trainer import CHECKPOINT

FORMATS = ("onnx", "torchscript")
#: how far an export's outputs may be from torch's, relative to their largest magnitude
#: (at least 1): float32 rounding, far under what a wrongly exported step gives
RELATIVE_TOLERANCE = 1e-5
#: what ``export_run`` says when it could not run the exported ONNX model
NOT_VERIFIED = "onnxruntime not installed (pip install 'dmlkit[export]')"
TEXT_RUN = ("a text run's sentence encoder takes strings and tokenizes them in Python, "
            "so it cannot be exported to ONNX or TorchScript; serve the run itself "
            "(dmlkit serve --run RUN_DIR takes sentences as inputs) or embed sentences "
            "with dmlkit text embed FILE --run RUN_DIR")


class ExportError(ValueError):
    """The model could not be exported; ``detail`` holds what the exporter printed and
    its full message (the exception chain holds the exporter's own error)."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


def is_text_run(run_dir: str | Path) -> bool:
    """Whether the run in ``run_dir`` embeds sentences (read from its config, no weights)."""
    import yaml

    try:
        config = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False  # loading the run says what is wrong with it
    if not isinstance(config, dict):
        return False
    data, model = config.get("data") or {}, config.get("model") or {}
    return (isinstance(data, dict) and data.get("name") in ("text", "stsb")) or (
        isinstance(model, dict) and model.get("name") == "sentence_encoder")


def check_export_target(run_dir: str | Path, out: str | Path, force: bool = False) -> None:
    """Raise a ``ValueError`` when exporting ``run_dir`` to ``out`` (and ``out.json``)
    would write onto a run directory's own files (its trainer's lock too) or a ``dmlkit
    tune`` folder's (its study, best config, their lock), whatever ``force`` says, or
    overwrite a file without ``force``."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{out} is a directory; give the model file's name")
    for path in (out, Path(f"{out}.json")):
        check_not_run_file(
            path, run_dir=run_dir,
            fix=f"an export never replaces a run directory's own {path.resolve().name}, "
                f"nor a tune folder's: give it another name (e.g. "
                f"{path.parent / 'exported.onnx'} or {path.parent / 'exported.pt'})")
        if path.is_dir():
            raise ValueError(f"{path} is a directory")
        if path.exists() and not force:
            raise ValueError(f"{path} exists; pass force=True to overwrite it")


class FlatInputEmbedder(nn.Module):
    """``(n, prod(input_shape))`` rows -> the wrapped model's ``(n, dim)`` embeddings."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.model = model
        self.input_shape = tuple(int(s) for s in input_shape)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.model(inputs.reshape((-1, *self.input_shape)))  # (n, dim)


#: data sources whose inputs are image files, read as 8-bit pixels divided by 255: their
#: inputs' scale is [0, 1], whatever extremes the training images reach
IMAGE_FILE_SOURCES = ("image_folder",)

#: ``input_description``'s ``spec`` when the caller has not read it
_UNREAD: Any = object()


def run_input_shape(run: Any, spec: InputSpec | None = None) -> tuple[int, ...]:
    """Shape of one raw input of a run: the one its model's config records (images'
    ``in_channels`` and ``image_size``, rows' ``in_features``, for any model that takes
    them), else the shape of ``spec`` (the run's :func:`~dmlkit.runs.queries.run_input_spec`
    when the caller has read it), else read from its training data."""
    recorded = recorded_input_spec(run.config.model, any_size=False)
    if recorded is not None:
        return recorded.shape
    if spec is not None:
        return spec.shape
    train, _ = build_splits(run.config)
    return tuple(int(s) for s in train.x.shape[1:])


def _readable_input_spec(run: Any) -> InputSpec | None:
    """:func:`~dmlkit.runs.queries.run_input_spec`, None when the run's data cannot be
    read (and its config records no input shape)."""
    try:
        return run_input_spec(run)
    except (OSError, ValueError):  # (the data is gone: the range stays unknown)
        return None


def input_description(run: Any, shape: tuple[int, ...],
                      spec: InputSpec | None = _UNREAD) -> dict[str, Any]:
    """What the exported model's input rows must hold, for the export's ``.json``: the
    :class:`~dmlkit.runs.queries.InputSpec` fields (``input_shape``, ``input_dtype``
    float32, ``input_range``: the training inputs' ``[min, max]``, null when unknown,
    ``[0, 1]`` for image files, the scale their pixels are read to,
    ``input_any_size``: false, as the exported graph takes rows of ``shape`` only, even
    where the run's model resizes images of any size) and, for images,
    ``input_channels``, ``image_size`` ``[height, width]`` and ``color`` (``grayscale`` /
    ``rgb``), plus ``input_note`` in words. ``spec`` is the run's input spec (None:
    unknown, its data unreadable) when the caller has read it, else it is read here."""
    if spec is _UNREAD:
        spec = _readable_input_spec(run)
    low, high = (spec.low, spec.high) if spec is not None else (math.nan, math.nan)
    data = run.config.data
    image_files = getattr(data, "name", None) in IMAGE_FILE_SOURCES or (
        data.tuples is not None and data.features is None)
    if image_files:  # 8-bit pixels divided by 255, whatever extremes the files reach
        low, high = 0.0, 1.0
    if not math.isfinite(high - low) and data.tuples is not None:  # (features: image
        # files, read as [0, 1], are taken above)
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            x = load_features(data.features, data.x_key)
            low, high = float(x.min()), float(x.max())
    if not math.isfinite(high - low):
        low, high = getattr(run.model, "input_range", (math.nan, math.nan))
    resizes = spec is not None and spec.any_size  # the run's model takes any image size
    out = InputSpec(tuple(shape), "float32", float(low), float(high), False).to_dict()
    known = math.isfinite(float(high) - float(low))
    out["input_range"] = [float(low), float(high)] if known else None
    if len(shape) == 3:
        color = data.color if data.color != "auto" else {  # (as run_color resolves it)
            1: "grayscale", 3: "rgb"}.get(int(shape[0]), "auto")
        out.update(input_channels=int(shape[0]), image_size=[int(shape[1]), int(shape[2])],
                   color=color)
        what = (f"images of {shape[0]} channel(s) x {shape[1]} x {shape[2]} (channels first), "
                "each flattened to one row"
                + (f" (resize images of another size to {shape[1]} x {shape[2]} first: "
                   "the run's model takes any size, the export only this one)"
                   if resizes else ""))
    else:
        what = f"rows of {math.prod(shape)} features"
    # (no claim of how the range came about but for image files: digits' pixels are 0-16
    # divided by 16, an array's values are whatever the file holds)
    scaled = ("pixel values divided by 255, as dmlkit reads image files" if image_files
              else "scaled as the training inputs were")
    out["input_note"] = (
        f"float32 {what}, {scaled}"
        + (f": values in [{low:.4g}, {high:.4g}]" if known else " (range unknown)"))
    return out


def export_run(run_dir: str | Path, out: str | Path, fmt: str = "onnx",
               *, check: bool = True, force: bool = False) -> dict[str, Any]:
    """Write the run's embedder to ``out`` in ``fmt``; returns the description written
    beside it (``out.json``).

    Parameters
    ----------
    run_dir : str or Path
        The run directory.
    out : str or Path
        The model file to write; never one of a run directory's own files.
    fmt : {"onnx", "torchscript"}
        The format.
    check : bool
        Run the exported model on random rows from the run's input range
        (:func:`check_rows`) and compare it with the torch model: a max absolute
        difference over what float32 rounding explains (1e-5 times the outputs' largest
        magnitude, at least 1, or 10 times what torch's own outputs on these rows differ
        by between batch sizes where that is more) raises ``RuntimeError``. The
        description's ``max_difference`` and ``tolerance`` are the difference found and
        the one allowed, or None with ``not_verified`` giving why (ONNX without
        onnxruntime installed).
    force : bool
        Overwrite ``out`` and ``out.json`` when they exist.

    Raises
    ------
    ExportError
        When the model has an operation the format cannot express; ``detail`` holds
        the exporter's output.
    OSError
        A :class:`~dmlkit.training.checkpoint.WriteError` naming ``out`` or ``out.json``
        when either cannot be written (disk full): both are written to temporary files
        first and published together, so a failure leaves neither (nor, under ``force``,
        touches the old pair).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    check_export_target(run_dir, out, force)
    if is_text_run(run_dir):
        raise ValueError(TEXT_RUN)
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401  (torch's ONNX exporter writes through it)
        except ImportError:
            raise ImportError("ONNX export needs onnx: pip install 'dmlkit[export]'") from None
    run = load_run(run_dir)
    # (the training data is read once: for the input shape where the config records
    # none, here, and for the inputs' range, after the export)
    spec = (_UNREAD if recorded_input_spec(run.config.model, any_size=False) is not None
            else _readable_input_spec(run))
    shape = run_input_shape(run, None if spec is _UNREAD else spec)
    module = FlatInputEmbedder(run.model.eval(), shape).eval()
    n_features = 1
    for s in shape:
        n_features *= s
    example = torch.rand(4, n_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dim = int(module(example).shape[1])
    out, json_out = Path(out), Path(f"{out}.json")
    made = [p for p in (out.parent, *out.parent.parents) if not p.exists()]  # (failed: gone)
    out.parent.mkdir(parents=True, exist_ok=True)
    temps: list[Path] = []
    diff: float | None = None
    tolerance: float | None = None
    published = False
    try:
        with _naming(out), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shape checks inside models
            tmp = _temp_beside(out, temps)
            if fmt == "onnx":
                _export_onnx(module, example, tmp)
            else:  # (through a buffer: torch's file writer aborts when the disk fills)
                buffer = io.BytesIO()
                torch.jit.save(torch.jit.trace(module, (example,)), buffer)
                _write_synced(tmp, buffer.getvalue())
        described = input_description(run, shape, spec)  # (its range: the check's rows)
        if check:
            checked = _check_export(module, tmp, fmt, n_features, described["input_range"])
            if checked is not None:
                diff, tolerance, scale = checked
                if diff > tolerance:
                    raise RuntimeError(_mismatch(fmt, diff, tolerance, scale))
        info: dict[str, Any] = {
            "format": fmt, "input_shape": list(shape), "n_features": n_features, "dim": dim,
            "input_name": "inputs", "output_name": "embeddings",
            "run_dir": str(Path(run_dir).resolve()),
            # which weights the export holds: the service checks an index against it
            "model_sha256": model_fingerprint(run.model),
            # which file of the run the weights are from: model.pt, or its checkpoint
            "weights": MODEL_FILE if run.weights == MODEL_FILE else CHECKPOINT,
            # the exported file itself: dmlkit serve --onnx checks it is the one described
            "file_sha256": file_checksum(tmp),
            "max_difference": diff, "tolerance": tolerance}
        if run.weights != MODEL_FILE:
            info["weights_note"] = run.weights
        info.update(described)
        if check and diff is None:
            info["not_verified"] = NOT_VERIFIED
        with _naming(json_out):
            json_tmp = _temp_beside(json_out, temps)
            _write_synced(json_tmp, json.dumps(info, indent=2).encode("utf-8"))
        with interrupts_deferred():  # (both files written: publish them as one)
            _publish([(json_tmp, json_out), (tmp, out)])
        published = True
    finally:
        for path in temps:
            path.unlink(missing_ok=True)
        for folder in made if not published else ():
            with contextlib.suppress(OSError):
                folder.rmdir()
    return info


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Raise a failure to write ``path`` (or its temporary file) as one
    :class:`~dmlkit.training.checkpoint.WriteError` naming ``path``."""
    try:
        yield
    except Exception as err:
        failure = write_error(err, path)
        if failure is None:
            raise
        if failure is err:
            failure = WriteError(failure.errno, failure.strerror, str(path))
        raise failure from err


def _temp_beside(path: Path, temps: list[Path]) -> Path:
    """A new temporary file beside ``path`` (a plain ``open``'s mode), added to ``temps``."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    temps.append(Path(name))
    publish_mode(name)
    return Path(name)


def _write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to disk."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _publish(pairs: list[tuple[Path, Path]]) -> None:
    """Rename each ``(temporary, target)`` over its target, all or none: on a failure the
    targets replaced get their old files back (kept as hard links) or are removed."""
    done: list[tuple[Path, Path | None]] = []
    backups: list[Path] = []
    try:
        for tmp, target in pairs:
            backup: Path | None = None
            if target.exists():
                backup = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
                try:
                    os.link(target, backup)
                    backups.append(backup)
                except OSError:
                    backup = None
            with _naming(target):
                os.replace(tmp, target)
            done.append((target, backup))
    except BaseException:
        for target, backup in reversed(done):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, target)
                else:
                    target.unlink(missing_ok=True)
        raise
    finally:
        for backup in backups:
            backup.unlink(missing_ok=True)


@contextlib.contextmanager
def _captured_output() -> Iterator[list[str]]:
    """Send what this process prints to stdout and stderr (Python and native code alike)
    to a temporary file instead of the terminal; the text is in the yielded list after."""
    sink: list[str] = []
    py_out, py_err = io.StringIO(), io.StringIO()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no file descriptors to route (an embedded interpreter)
        saved = []
    with tempfile.TemporaryFile() as native:
        try:
            for fd in (1, 2) if saved else ():
                os.dup2(native.fileno(), fd)
            with contextlib.redirect_stdout(py_out), contextlib.redirect_stderr(py_err):
                yield sink
        finally:
            with contextlib.suppress(Exception):
                import ctypes

                ctypes.CDLL(None).fflush(None)  # native writes still in the C buffers
            for fd, copy in zip((1, 2), saved, strict=False):
                os.dup2(copy, fd)
                os.close(copy)
            native.seek(0)
            text = native.read().decode(errors="replace")
            sink.append(py_out.getvalue() + py_err.getvalue() + text)


def _export_onnx(module: nn.Module, example: Tensor, path: Path) -> None:
    """``torch.onnx.export`` with its console output captured: a failure is one
    :class:`ExportError` whose ``detail`` holds the output and the full message."""
    with contextlib.ExitStack() as stack:
        printed = stack.enter_context(_captured_output())
        try:
            torch.onnx.export(
                module, (example,), str(path), input_names=["inputs"],
                output_names=["embeddings"], opset_version=17, dynamo=False,
                dynamic_axes={"inputs": {0: "batch"}, "embeddings": {0: "batch"}},
            )
            return
        except Exception as err:  # noqa: BLE001 - an operator ONNX lacks
            failure = err
    if write_error(failure, path) is not None:  # (disk full, no permission: an I/O
        raise failure  # error, reported as one by the caller, not the format's limit)
    reason = str(failure).strip().splitlines()[:1] or [""]
    detail = "".join(printed).rstrip() + f"\n{type(failure).__name__}: {failure}"
    raise ExportError(
        f"this run's model cannot be exported to ONNX ({type(failure).__name__}: "
        f"{reason[0][:200]}); export it with --format torchscript",
        detail=detail.strip()) from failure


def check_rows(n_features: int, input_range: list[float] | None, n: int = 16) -> Tensor:
    """``(n, n_features)`` rows the exported model is checked on: uniform over the run's
    recorded input range ``[low, high]`` (where the model works), ``[0, 1]`` when the
    range is unknown."""
    x = torch.rand(n, n_features, generator=torch.Generator().manual_seed(1))  # (n, F)
    if input_range is None:
        return x
    low, high = (float(v) for v in input_range)
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        return x
    return low + (high - low) * x


def _rounding_noise(module: nn.Module, x: Tensor, ref: Tensor, n: int = 4) -> float:
    """How far ``module``'s outputs ``ref`` on the batch ``x`` are from its outputs on
    the first ``n`` rows one at a time: the float32 rounding torch itself shows between
    batch sizes (0 where it shows none, or where the model takes no batch of one)."""
    try:
        with torch.no_grad():
            single = torch.cat([module(row[None]) for row in x[:n]])  # (n, dim)
    except (RuntimeError, ValueError):  # (batch statistics of one row, a squeezed axis)
        return 0.0
    if single.shape != ref[:n].shape:
        return 0.0
    return float((single - ref[:n]).abs().max())


def _check_export(module: nn.Module, path: Path, fmt: str, n_features: int,
                  input_range: list[float] | None) -> tuple[float, float, float] | None:
    """``(difference, tolerance, scale)`` of the exported model from ``module`` on
    :func:`check_rows`: the largest absolute difference, the one float32 rounding
    explains (:data:`RELATIVE_TOLERANCE` of the outputs' ``scale``, their largest
    magnitude but at least 1, or 10 times what torch's own outputs differ by between
    batch sizes where that is more) and the scale; None when there is nothing to run an
    ONNX model with."""
    x = check_rows(n_features, input_range)
    with torch.no_grad():
        ref = module(x)  # (n, dim)
        scale = max(1.0, float(ref.abs().max()))
        tolerance = max(RELATIVE_TOLERANCE * scale, 10.0 * _rounding_noise(module, x, ref))
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            return None  # nothing to compare with; the export itself succeeded
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"inputs": x.numpy()})[0])
    else:
        with torch.no_grad():
            got = torch.jit.load(str(path))(x)
    return float((got - ref).abs().max()), tolerance, scale


def _mismatch(fmt: str, diff: float, tolerance: float, scale: float) -> str:
    """The refusal of an export whose outputs differ from torch's by more than rounding."""
    advice = ("; export it with --format torchscript" if fmt == "onnx" else
              "; the model computes differently from its traced example (steps that "
              "depend on the inputs' values), so it cannot be exported as it is")
    return (f"exported {fmt} model differs from torch by {diff:.3g}, more than float32 "
            f"rounding explains ({tolerance:.3g} for outputs up to {scale:.3g}){advice}")


__all__ = ["export_run", "input_description", "run_input_shape", "check_export_target",
           "check_rows", "is_run_dir", "is_text_run", "ExportError", "FlatInputEmbedder",
           "FORMATS", "RELATIVE_TOLERANCE", "RUN_FILES"]
