"""Exports checked to the outputs' own scale on rows from the run's input range, saved
files an export never writes over (a training lock, a tune folder's study and best
config), row data refused by image models in one line, and speaker folders described as
speaker folders."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import error_line
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()

WIDE = """
name: wide
data: {name: npz, path: PATH, split: classes, train_classes: [0, 1, 2, 3]}
model: {name: mlp, dim: 8, hidden: [64], normalize: false}
loss: {name: triplet_margin, margin: 0.2}
training: {epochs: 1, num_threads: 1, progress: false}
"""


_error = error_line


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory) -> Path:
    """A run on inputs in about [-40, 40] whose embeddings (not normalized) reach
    magnitudes in the thousands."""
    from dmlkit.config import load_config
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(120, 32)) * 12).astype("float32")
    np.savez(root / "wide.npz", x=x, labels=np.repeat(np.arange(6), 20))
    (root / "wide.yaml").write_text(WIDE.replace("PATH", str(root / "wide.npz")))
    train_run(load_config(root / "wide.yaml"), root / "run", log=lambda *a: None)
    weights = torch.load(root / "run" / "model.pt", weights_only=True)
    for name in ("head.linear.weight", "head.linear.bias"):
        weights[name] = weights[name] * 1000.0  # outputs far over 1
    torch.save(weights, root / "run" / "model.pt")
    return root / "run"


def test_onnx_export_of_large_embeddings_is_checked_to_their_scale(wide_run, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    res = runner.invoke(app, ["export", str(wide_run), "-o", str(tmp_path / "m.onnx")])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "m.onnx.json").read_text())
    assert info["max_difference"] <= info["tolerance"]
    assert info["tolerance"] > 1e-5  # outputs in the thousands: rounding is larger
    import onnxruntime as ort

    from dmlkit.runs import load_run

    x = np.load(wide_run.parent / "wide.npz")["x"]
    with torch.no_grad():
        ref = load_run(wide_run).model.eval()(torch.as_tensor(x)).numpy()
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"inputs": x})[0]
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()  # the export is right


def test_export_check_runs_rows_from_the_runs_input_range(wide_run, tmp_path, monkeypatch):
    import dmlkit.runs.export as export

    seen: list[tuple[float, float]] = []
    forward = export.FlatInputEmbedder.forward

    def spy(self, inputs):
        seen.append((float(inputs.min()), float(inputs.max())))
        return forward(self, inputs)

    monkeypatch.setattr(export.FlatInputEmbedder, "forward", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = export.export_run(wide_run, tmp_path / "m.pt", "torchscript")
    low, high = info["input_range"]
    assert low < -20 and high > 20
    assert min(lo for lo, _ in seen) < low / 2 and max(hi for _, hi in seen) > high / 2


def test_an_export_that_differs_from_torch_is_refused_with_the_other_format(
    wide_run, tmp_path, monkeypatch
):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import dmlkit.runs.export as export

    real = export._export_onnx

    def off_by_a_little(module, example, path):  # a step exported wrongly: 1% off
        real(_Scaled(module).eval(), example, path)

    monkeypatch.setattr(export, "_export_onnx", off_by_a_little)
    res = runner.invoke(app, ["export", str(wide_run), "-o", str(tmp_path / "m.onnx")])
    assert res.exit_code == 1
    message = _error(res)
    assert "differs from torch" in message and "--format torchscript" in message
    assert not (tmp_path / "m.onnx").exists()


class _Scaled(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * 1.01


def test_tune_and_lock_names_are_the_ones_train_and_tune_write():
    from dmlkit.runs.run_files import LOCK_FILES, RUN_FILES, TUNE_FILES
    from dmlkit.training.run_dir import LOCK_FILE
    from dmlkit.tuning.best import BEST_FILE, BEST_JSON
    from dmlkit.tuning.best import LOCK_FILE as BEST_LOCK
    from dmlkit.tuning.study import STUDY_FILE

    assert LOCK_FILE in RUN_FILES and LOCK_FILE in LOCK_FILES
    assert {STUDY_FILE, BEST_FILE, BEST_JSON, BEST_LOCK} <= TUNE_FILES
    assert BEST_LOCK in LOCK_FILES


def test_export_never_replaces_a_training_runs_lock_even_with_force(wide_run, tmp_path):
    training = tmp_path / "training"  # a run being trained: config and lock, no weights yet
    training.mkdir()
    (training / "config.yaml").write_text((wide_run / "config.yaml").read_text())
    (training / ".train.lock").write_text("")
    res = runner.invoke(
        app,
        [
            "export",
            str(wide_run),
            "-f",
            "torchscript",
            "-o",
            str(training / ".train.lock"),
            "--force",
        ],
    )
    assert res.exit_code == 1
    assert "own .train.lock" in _error(res)
    assert (training / ".train.lock").read_bytes() == b""
    assert sorted(p.name for p in training.iterdir()) == [".train.lock", "config.yaml"]


@pytest.mark.parametrize("name", ["study.db", "best.yaml", "best.json", ".best.lock"])
def test_export_never_replaces_a_tune_folders_files_even_with_force(wide_run, tmp_path, name):
    from dmlkit.runs.export import export_run

    tune = tmp_path / "tune"
    tune.mkdir()
    (tune / "study.db").write_bytes(b"SQLite format 3\x00")
    (tune / ".best.lock").write_text("")
    before = {p.name: p.read_bytes() for p in tune.iterdir()}
    res = runner.invoke(
        app, ["export", str(wide_run), "-f", "torchscript", "-o", str(tune / name), "--force"]
    )
    assert res.exit_code == 1
    assert f"tune folder {tune.resolve()}'s own {name}" in _error(res)
    with pytest.raises(ValueError, match=f"own {name}"):
        export_run(wide_run, tune / name, "torchscript", force=True)
    assert {p.name: p.read_bytes() for p in tune.iterdir()} == before


def test_export_may_use_a_tune_name_outside_a_tune_folder(wide_run, tmp_path):
    res = runner.invoke(
        app, ["export", str(wide_run), "-f", "torchscript", "-o", str(tmp_path / "best.json")]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "best.json").is_file()


def test_bias_free_cnn_refuses_flat_rows_of_another_size():
    from dmlkit.models.bias_free import BiasFreeCNN

    model = BiasFreeCNN(in_channels=1, image_size=28, dim=8)
    with pytest.raises(
        ValueError,
        match=r"flat input must have 784 features \(1 x 28 x 28\), "
        r"got 20",
    ):
        model(torch.randn(4, 20))
    assert model(torch.randn(4, 784)).shape == (4, 8)  # rows of the image's size still pass


def test_training_bias_free_cnn_on_rows_says_why_in_one_line(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "feat.npz",
        x=rng.normal(size=(60, 20)).astype("float32"),
        labels=np.repeat(np.arange(6), 10),
    )
    (tmp_path / "rows.yaml").write_text(
        f"name: rows\ndata: {{name: npz, path: {tmp_path / 'feat.npz'}, split: classes, "
        "train_classes: [0, 1, 2, 3]}\nmodel: {name: bias_free_cnn, dim: 8}\n"
        "loss: {name: triplet_margin, margin: 0.2}\n"
        "training: {epochs: 1, num_threads: 1, progress: false}\n"
    )
    res = runner.invoke(app, ["train", str(tmp_path / "rows.yaml"), "--out", str(tmp_path / "run")])
    assert res.exit_code != 0
    message = _error(res)
    assert "bias_free_cnn" in message and "flat input must have 784 features" in message


@pytest.fixture
def flat_wavs(tmp_path) -> Path:
    """Recordings straight in the folder, without a sub-folder per speaker."""
    from dmlkit.data.audio import write_wav

    folder = tmp_path / "wavs"
    folder.mkdir()
    t = np.arange(1600, dtype=np.float32) / 16000
    for i in range(2):
        write_wav(folder / f"r{i}.wav", 0.5 * np.sin(2 * np.pi * 220 * (i + 1) * t))
    return folder


def test_a_folder_of_wavs_without_speaker_folders_is_described_as_audio(flat_wavs):
    from dmlkit.data.load import load_dataset

    with pytest.raises(ValueError) as info:
        load_dataset(str(flat_wavs))
    message = str(info.value)
    assert "ROOT/<speaker>/*.wav" in message and "image" not in message


def test_evaluating_on_wavs_without_speaker_folders_names_speaker_folders(wide_run, flat_wavs):
    res = runner.invoke(app, ["evaluate", str(wide_run), "--data", str(flat_wavs)])
    assert res.exit_code != 0
    message = _error(res)
    assert "<speaker>" in message and "<image>" not in message


@pytest.mark.parametrize("crop", [float("nan"), float("inf"), 0.0, -1.0])
def test_audio_folder_refuses_crop_lengths_that_are_not_positive_numbers(flat_wavs, crop):
    from dmlkit.data.audio import load_audio_folder

    with pytest.raises(ValueError, match="crop_seconds must be"):
        load_audio_folder(flat_wavs, crop_seconds=crop)
