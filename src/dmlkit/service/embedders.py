"""Raw inputs -> embeddings for the service: a run's torch model, or an ONNX export.

The ONNX path needs only numpy and onnxruntime, so a serving install can leave torch out.
Every embedder says what it takes in ``input_kind``: ``"numeric"`` (rows of
``n_features`` numbers, which are one input of shape ``input_shape`` flattened) or
``"text"`` (strings, for runs whose model embeds text, such as
a :class:`~dmlkit.models.SentenceEncoder`), and where its weights come from: ``run_dir``
(the run directory, when known) and ``model_sha256`` (the fingerprint of the weights,
:func:`dmlkit.index.store.model_fingerprint`; ``None`` when unknown), which the service
checks against its index and its verifier.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from dmlkit._files import file_checksum

#: the keys of an export's ``FILE.onnx.json`` the service reads, and the types they hold
_REQUIRED = {"format": str, "input_name": str, "output_name": str, "n_features": int,
             "dim": int}
#: the key of the export's ``.json`` that holds the SHA-256 of the model file it describes
#: (``dmlkit export`` records it; exports written before it did are served unchecked)
FILE_SHA256_KEY = "file_sha256"


def _export_again(path: Path, info: Any = None) -> str:
    """How to write the export ``path`` again, with the run its description names."""
    run = info.get("run_dir") if isinstance(info, dict) else None
    run = run if isinstance(run, str) and run else "RUN_DIR"
    return f"export the run again (dmlkit export {run} --out {path} --force)"


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def read_export_description(path: Path) -> dict[str, Any]:
    """The checked description ``PATH.json`` of the ONNX export ``path``: a JSON object
    holding the keys :data:`_REQUIRED` with their types (``n_features`` and ``dim``
    positive integers), ``format`` ``"onnx"``, an ``input_shape`` (where recorded) of
    positive integers whose product is ``n_features`` (and, for images, that equals
    ``[input_channels, *image_size]``), ``run_dir`` and ``model_sha256`` strings or null,
    and, where recorded, the SHA-256 of ``path`` itself. Each refusal is a one-line
    ``ValueError`` naming the file."""
    info_path = Path(f"{path}.json")
    again = _export_again(path)
    try:
        info = json.loads(info_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{info_path} is not valid JSON ({err}); it is not the description "
                         f"dmlkit export writes: {again}") from None
    if not isinstance(info, dict):
        raise ValueError(f"{info_path} holds a JSON {type(info).__name__}, not the object of "
                         f"keys dmlkit export writes; {again}")
    again = _export_again(path, info)
    missing = [key for key in _REQUIRED if key not in info]
    if missing:
        raise ValueError(f"{info_path} lacks {', '.join(map(repr, missing))}: it is not a "
                         f"complete description of an export; {again}")
    for key, kind in _REQUIRED.items():
        value = info[key]
        good = _positive_int(value) if kind is int else isinstance(value, kind) and value
        if not good:
            what = "a positive integer" if kind is int else "a non-empty string"
            raise ValueError(f"{info_path}: {key!r} must be {what}, got {value!r}; {again}")
    if info["format"] != "onnx":
        run = info.get("run_dir") if isinstance(info.get("run_dir"), str) else "RUN_DIR"
        raise ValueError(f"{info_path} describes a {info['format']!r} export, not an ONNX one: "
                         f"dmlkit serve --onnx serves ONNX exports; export the run as ONNX "
                         f"beside it (dmlkit export {run or 'RUN_DIR'} --format onnx --out "
                         f"{path.with_suffix('.onnx')}) and serve that")
    for key in ("run_dir", "model_sha256", FILE_SHA256_KEY):
        if info.get(key) is not None and not isinstance(info[key], str):
            raise ValueError(f"{info_path}: {key!r} must be a string or null, got "
                             f"{info[key]!r}; {again}")
    shape = info.get("input_shape")
    if shape is not None:
        if not (isinstance(shape, list) and shape and all(map(_positive_int, shape))):
            raise ValueError(f"{info_path}: 'input_shape' must be a list of positive "
                             f"integers, got {shape!r}; {again}")
        if int(np.prod(shape)) != info["n_features"]:
            raise ValueError(f"{info_path}: 'input_shape' {shape} holds {int(np.prod(shape))}"
                             f" values, but 'n_features' is {info['n_features']}; {again}")
        channels, size = info.get("input_channels"), info.get("image_size")
        if channels is not None and size is not None and shape != [channels, *size]:
            raise ValueError(f"{info_path}: 'input_shape' {shape} is not the images' "
                             f"[input_channels, *image_size] {[channels, *size]}; {again}")
    recorded = info.get(FILE_SHA256_KEY)
    if recorded is not None:
        if file_checksum(path) != recorded:
            raise ValueError(f"{path} is not the file {info_path} describes (its SHA-256 "
                             f"differs from the one recorded there); {again}")
    return info


def _check_session(session: Any, info: dict[str, Any], path: Path) -> None:
    """Refuse an ONNX model whose input and output are not the ones its description
    ``info`` names (names, input width, output width where the graph fixes them)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    described = f"{path}.json"
    again = _export_again(path, info)
    names = {"input": [i.name for i in inputs], "output": [o.name for o in outputs]}
    for side in ("input", "output"):
        if info[f"{side}_name"] not in names[side]:
            raise ValueError(
                f"{described} names the {side} {info[f'{side}_name']!r}, but {path} has "
                f"{side}(s) {names[side]}; {again}")
    if len(inputs) != 1:
        raise ValueError(f"{path} takes {len(inputs)} inputs {names['input']}, an export "
                         f"takes one (rows of features); {again}")
    for node, key, side in ((inputs[0], "n_features", "input rows"),
                            (next(o for o in outputs if o.name == info["output_name"]),
                             "dim", "embeddings")):
        shape = list(node.shape or [])
        width = shape[1] if len(shape) == 2 else None
        if len(shape) != 2 or (isinstance(width, int) and width != info[key]):
            got = f"shape {shape}" if len(shape) != 2 else f"width {width}"
            raise ValueError(f"{described} says the {side} are (batch, {info[key]}) "
                             f"({key}), but {path}'s are of {got}; {again}")


class OnnxEmbedder:
    """An ONNX file written by ``dmlkit export`` (with its ``FILE.json`` description),
    checked against it: the description's keys and types, the file's SHA-256 where
    recorded, and the model's input and output names and widths."""

    input_kind = "numeric"

    def __init__(self, path: str | Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError(
                "serving an ONNX model needs onnxruntime: pip install 'dmlkit[serve]'"
            ) from None
        path = Path(path)
        info_path = Path(f"{path}.json")
        if not path.is_file() or not info_path.is_file():
            raise FileNotFoundError(f"need {path} and {info_path} (written by dmlkit export)")
        info = read_export_description(path)
        self.export_path: str | None = str(path)
        self.n_features, self.dim = info["n_features"], info["dim"]
        shape = info.get("input_shape")  # older exports may not record it: flat rows only
        self.input_shape: tuple[int, ...] = tuple(shape) if shape else (self.n_features,)
        self.run_dir: str | None = info.get("run_dir")
        self.model_sha256: str | None = info.get("model_sha256")
        self._input, self._output = info["input_name"], info["output_name"]
        try:
            self._session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime's own errors (protobuf, ...)
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise ValueError(f"{path} is not an ONNX model onnxruntime can load ({reason}); "
                             f"{_export_again(path, info)}") from None
        _check_session(self._session, info, path)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._session.run([self._output], {self._input: x.astype(np.float32)})[0]


class TorchEmbedder:
    """The model of a run directory (torch), on numeric rows."""

    input_kind = "numeric"

    def __init__(self, run_dir: str | Path, run: Any = None) -> None:
        import torch

        from dmlkit.index.store import model_fingerprint
        from dmlkit.runs import load_run
        from dmlkit.runs.export import FlatInputEmbedder, run_input_shape

        run = load_run(run_dir) if run is None else run
        self.run_dir: str | None = str(Path(run_dir).resolve())
        self.model_sha256: str | None = model_fingerprint(run.model)
        shape = run_input_shape(run)
        self.input_shape: tuple[int, ...] = tuple(int(s) for s in shape)
        self.n_features = int(np.prod(shape))
        self._model = FlatInputEmbedder(run.model.eval(), shape).eval()
        with torch.no_grad():
            self.dim = int(self._model(torch.zeros(1, self.n_features)).shape[1])
        self._torch = torch

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._torch.no_grad():
            return self._model(self._torch.from_numpy(x.astype(np.float32))).numpy()


class TextEmbedder:
    """The model of a text run (one that embeds strings): ``list of n str -> (n, dim)``.

    Embeds as :func:`dmlkit.text.embed_texts` does (eval mode, no gradients), so the
    vectors equal the run's own embeddings of the same strings.
    """

    input_kind = "text"
    n_features = None
    input_shape = None

    def __init__(self, run_dir: str | Path, run: Any = None) -> None:
        from dmlkit.index.store import model_fingerprint
        from dmlkit.runs import load_run

        run = load_run(run_dir) if run is None else run
        self.run_dir: str | None = str(Path(run_dir).resolve())
        self.model_sha256: str | None = model_fingerprint(run.model)
        self._model = run.model.eval()
        self.dim = int(self(["dim"]).shape[1])

    def __call__(self, texts: list[str]) -> np.ndarray:
        """Embeddings of ``texts``; a text the model cannot take (a lone surrogate) is a
        ``ValueError`` naming its place in the request, ``inputs[i]`` (the service's 422)."""
        from dmlkit.models.sentence_encoder import check_unicode
        from dmlkit.text import embed_texts

        for i, text in enumerate(texts):
            if isinstance(text, str):
                check_unicode(text, f"inputs[{i}]")
        return embed_texts(self._model, list(texts)).numpy().astype(np.float32)


def embeds_text(run: Any) -> bool:
    """Whether a loaded run's model takes strings (a text data source, or a model that
    says so with ``embeds_text = True``, as :class:`~dmlkit.models.SentenceEncoder`)."""
    from dmlkit.config.schema import TEXT_SOURCES

    return run.config.data.name in TEXT_SOURCES or bool(getattr(run.model, "embeds_text", False))


def check_one_model(run_dir: Any = None, onnx: Any = None) -> None:
    """Refuse a run directory and an ONNX export given together as the served model."""
    if onnx is not None and run_dir is not None:
        raise ValueError(
            f"--run {run_dir} and --onnx {onnx} are two sources of the served model: give "
            f"one (--onnx serves the export, whose {onnx}.json names the run it came from; "
            "--run serves the run's current weights with torch)")


def load_embedder(run_dir: Any = None, onnx: Any = None) -> Any:
    """An ONNX embedder when ``onnx`` is given, else the run's torch model (a
    :class:`TextEmbedder` for text runs), else None; both given is a ``ValueError``
    (the export records the run it came from: the index is checked against it)."""
    check_one_model(run_dir, onnx)
    if onnx is not None:
        return OnnxEmbedder(onnx)
    if run_dir is not None:
        from dmlkit.runs import load_run

        run = load_run(run_dir)
        return TextEmbedder(run_dir, run) if embeds_text(run) else TorchEmbedder(run_dir, run)
    return None


__all__ = ["FILE_SHA256_KEY", "OnnxEmbedder", "TextEmbedder", "TorchEmbedder",
           "check_one_model", "embeds_text", "load_embedder", "read_export_description"]
