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


class OnnxEmbedder:
    """An ONNX file written by ``dmlkit export`` (with its ``FILE.json`` description)."""

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
        info = json.loads(info_path.read_text())
        self.n_features, self.dim = int(info["n_features"]), int(info["dim"])
        shape = info.get("input_shape")  # older exports may not record it: flat rows only
        self.input_shape: tuple[int, ...] = (
            tuple(int(s) for s in shape) if isinstance(shape, list) and shape
            and int(np.prod(shape)) == self.n_features else (self.n_features,))
        self.run_dir: str | None = info.get("run_dir")
        self.model_sha256: str | None = info.get("model_sha256")
        self._input, self._output = info["input_name"], info["output_name"]
        self._session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

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
        from dmlkit.text import embed_texts

        return embed_texts(self._model, list(texts)).numpy().astype(np.float32)


def embeds_text(run: Any) -> bool:
    """Whether a loaded run's model takes strings (a text data source, or a model that
    says so with ``embeds_text = True``, as :class:`~dmlkit.models.SentenceEncoder`)."""
    from dmlkit.config.schema import TEXT_SOURCES

    return run.config.data.name in TEXT_SOURCES or bool(getattr(run.model, "embeds_text", False))


def load_embedder(run_dir: Any = None, onnx: Any = None) -> Any:
    """An ONNX embedder when ``onnx`` is given, else the run's torch model (a
    :class:`TextEmbedder` for text runs), else None."""
    if onnx is not None:
        return OnnxEmbedder(onnx)
    if run_dir is not None:
        from dmlkit.runs import load_run

        run = load_run(run_dir)
        return TextEmbedder(run_dir, run) if embeds_text(run) else TorchEmbedder(run_dir, run)
    return None


__all__ = ["OnnxEmbedder", "TextEmbedder", "TorchEmbedder", "embeds_text", "load_embedder"]
