"""Export a run's embedder so it runs without dmlkit: ONNX (onnxruntime) or TorchScript.

The exported graph takes the run's raw input rows flattened to ``(batch, n_features)``
float32, batch axis dynamic, and returns ``(batch, dim)`` embeddings: the reshape to the
model's input shape and every preprocessing step inside the model (normalization,
resizing of pretrained backbones) are part of it. A JSON file beside the model
(``FILE.json``) records the input shape, the embedding size and where it came from.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dmlkit._files import publish_mode
from dmlkit.training.run import build_splits, load_run

FORMATS = ("onnx", "torchscript")


class FlatInputEmbedder(nn.Module):
    """``(n, prod(input_shape))`` rows -> the wrapped model's ``(n, dim)`` embeddings."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.model = model
        self.input_shape = tuple(int(s) for s in input_shape)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.model(inputs.reshape((-1, *self.input_shape)))  # (n, dim)


def run_input_shape(run: Any) -> tuple[int, ...]:
    """Shape of one raw input of a run (from its model's config, else from its data)."""
    spec = run.config.model
    if "in_channels" in spec and "image_size" in spec:
        size = spec["image_size"]
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (int(spec["in_channels"]), int(h), int(w))
    if "in_features" in spec and spec.get("name") == "mlp":
        return (int(spec["in_features"]),)
    train, _ = build_splits(run.config)
    return tuple(int(s) for s in train.x.shape[1:])


def export_run(run_dir: str | Path, out: str | Path, fmt: str = "onnx",
               *, check: bool = True) -> dict[str, Any]:
    """Write the run's embedder to ``out`` in ``fmt``; returns the description written
    beside it. With ``check`` the exported model is run on random rows and compared with
    the torch model (max absolute difference under 1e-5, else ``RuntimeError``)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    if Path(out).is_dir():
        raise ValueError(f"{out} is a directory; give the model file's name")
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401  (torch's ONNX exporter writes through it)
        except ImportError:
            raise ImportError("ONNX export needs onnx: pip install 'dmlkit[export]'") from None
    run = load_run(run_dir)
    shape = run_input_shape(run)
    module = FlatInputEmbedder(run.model.eval(), shape).eval()
    n_features = 1
    for s in shape:
        n_features *= s
    example = torch.rand(4, n_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dim = int(module(example).shape[1])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shape checks inside models
            if fmt == "onnx":
                try:
                    torch.onnx.export(
                        module, (example,), str(tmp), input_names=["inputs"],
                        output_names=["embeddings"], opset_version=17, dynamo=False,
                        dynamic_axes={"inputs": {0: "batch"}, "embeddings": {0: "batch"}},
                    )
                except Exception as err:  # noqa: BLE001 - an operator ONNX lacks
                    reason = str(err).strip().splitlines()[:1] or [""]
                    raise ValueError(
                        f"this run's model cannot be exported to ONNX "
                        f"({type(err).__name__}: {reason[0][:200]}); export it "
                        "with --format torchscript") from None
            else:
                torch.jit.save(torch.jit.trace(module, (example,)), str(tmp))
        if check:
            diff = _max_difference(module, tmp, fmt, n_features)
            if diff > 1e-5:
                raise RuntimeError(f"exported {fmt} model differs from torch by {diff:.3g}")
        publish_mode(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    info = {"format": fmt, "input_shape": list(shape), "n_features": n_features, "dim": dim,
            "input_name": "inputs", "output_name": "embeddings", "run_dir": str(run_dir)}
    Path(f"{out}.json").write_text(json.dumps(info, indent=2))
    return info


def _max_difference(module: nn.Module, path: Path, fmt: str, n_features: int) -> float:
    x = torch.rand(7, n_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = module(x).numpy()
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            return 0.0  # nothing to compare with; the export itself succeeded
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"inputs": x.numpy()})[0]
    else:
        with torch.no_grad():
            got = torch.jit.load(str(path))(x).numpy()
    return float(abs(got - ref).max())


__all__ = ["export_run", "run_input_shape", "FlatInputEmbedder", "FORMATS"]
