"""`dmlkit export` keeps a run intact and says what it did: it never writes onto the
run's own files, overwrites only with --force, shows one line for a failed ONNX export,
says when it could not verify the export, and refuses text runs before loading them."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from cli_helpers import SMALL_MLP, error_line, train_small
from torch import nn
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()



@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train_small(tmp_path_factory.mktemp("export_safety"), SMALL_MLP)


def _export(*args: str):
    return runner.invoke(app, ["export", *args])


_error = error_line


@pytest.mark.parametrize("name", ["model.pt", "checkpoint.pt", "config.yaml", "metrics"])
@pytest.mark.parametrize("force", [False, True])
def test_export_never_writes_onto_the_runs_own_files(run_dir, name, force):
    from dmlkit.runs import load_run

    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    more = ["--force"] if force else []
    res = _export(str(run_dir), "-f", "torchscript", "-o", str(run_dir / name), *more)
    assert res.exit_code == 1
    assert "run directory's own" in _error(res)
    after = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert after == before  # nothing written, nothing replaced
    load_run(run_dir)  # and the run still loads


def test_export_library_refuses_the_runs_own_files_even_with_force(run_dir):
    from dmlkit.runs.export import export_run

    weights = (run_dir / "model.pt").read_bytes()
    with pytest.raises(ValueError, match="run directory's own model.pt"):
        export_run(run_dir, run_dir / "model.pt", "torchscript", force=True)
    assert (run_dir / "model.pt").read_bytes() == weights


def test_export_overwrites_a_file_only_with_force(run_dir, tmp_path):
    target = tmp_path / "m.pt"
    target.write_bytes(b"keep me")
    res = _export(str(run_dir), "-f", "torchscript", "-o", str(target))
    assert res.exit_code == 1 and "--force" in _error(res)
    assert target.read_bytes() == b"keep me"
    res = _export(str(run_dir), "-f", "torchscript", "-o", str(target), "--force")
    assert res.exit_code == 0, res.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note on TorchScript's future
        torch.jit.load(str(target))  # replaced by the export
    # the description beside the model counts as an existing file too
    (tmp_path / "n.pt.json").write_text("{}")
    res = _export(str(run_dir), "-f", "torchscript", "-o", str(tmp_path / "n.pt"))
    assert res.exit_code == 1 and "n.pt.json exists" in _error(res)
    assert not (tmp_path / "n.pt").exists()


class _Spectrum(nn.Module):
    """A model ONNX cannot express (a complex STFT), as a speaker encoder's front end."""

    dim = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(x, 64, window=torch.ones(64), return_complex=True)
        return spec.abs().flatten(1)[:, :8]  # (n, 8)


@pytest.fixture
def unexportable(monkeypatch, tmp_path) -> Path:
    pytest.importorskip("onnx")
    import dmlkit.runs.export as export

    fake = SimpleNamespace(config=SimpleNamespace(model={"name": "mlp", "in_features": 256}),
                           model=_Spectrum())
    monkeypatch.setattr(export, "load_run", lambda run_dir: fake)
    (tmp_path / "run").mkdir()
    return tmp_path / "run"


def test_a_failed_onnx_export_prints_one_line(unexportable, tmp_path, capfd):
    res = _export(str(unexportable), "-o", str(tmp_path / "m.onnx"))
    printed = capfd.readouterr()  # what reached the terminal outside click's streams
    assert res.exit_code == 1
    message = _error(res)
    assert "cannot be exported to ONNX" in message and "--format torchscript" in message
    assert res.output.strip().splitlines() == [message]
    assert "graph(" not in printed.out + printed.err
    assert "Torch IR" not in printed.out + printed.err
    assert not (tmp_path / "m.onnx").exists()


def test_the_onnx_exporters_output_stays_available(unexportable, tmp_path, capfd):
    from dmlkit.runs.export import ExportError, export_run

    with pytest.raises(ExportError) as info:
        export_run(unexportable, tmp_path / "m.onnx")
    assert "graph(" in info.value.detail  # the exporter's dump, kept
    assert info.value.__cause__ is not None  # and its own exception, chained
    res = _export(str(unexportable), "-o", str(tmp_path / "m.onnx"), "--verbose")
    assert res.exit_code == 1 and "graph(" in res.stderr
    printed = capfd.readouterr()
    assert "graph(" not in printed.out + printed.err


def test_export_without_onnxruntime_says_it_is_not_verified(run_dir, tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if missing
    res = _export(str(run_dir), "-o", str(tmp_path / "m.onnx"))
    assert res.exit_code == 0, res.output
    assert "not verified: onnxruntime not installed (pip install 'dmlkit[export]')" in res.stdout
    assert "equal the torch model" not in res.stdout
    info = json.loads((tmp_path / "m.onnx.json").read_text())
    assert info["max_difference"] is None and "onnxruntime" in info["not_verified"]


def test_export_with_onnxruntime_gives_the_difference(run_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    res = _export(str(run_dir), "-o", str(tmp_path / "m.onnx"))
    assert res.exit_code == 0 and "outputs equal the torch model's to 1e-5" in res.stdout
    info = json.loads((tmp_path / "m.onnx.json").read_text())
    assert 0 <= info["max_difference"] <= 1e-5 and "not_verified" not in info


@pytest.fixture
def text_run(tmp_path) -> Path:
    """A text run's directory; its weights are not a model at all, so loading them fails."""
    run = tmp_path / "text_run"
    run.mkdir()
    (run / "config.yaml").write_text(
        "name: t\ndata: {name: text, path: sentences.csv}\n"
        "model: {name: sentence_encoder, max_length: 16}\n")
    (run / "model.pt").write_bytes(b"not weights")
    return run


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_of_a_text_run_says_why_before_loading_it(text_run, tmp_path, fmt):
    res = _export(str(text_run), "-f", fmt, "-o", str(tmp_path / "t.out"))
    assert res.exit_code == 1
    message = _error(res)
    assert "sentence encoder" in message and "ONNX or TorchScript" in message
    assert "dmlkit serve --run" in message
    assert "Loading weights" not in res.output


def test_report_of_a_text_run_says_what_to_use_instead(text_run):
    res = runner.invoke(app, ["report", str(text_run)])
    assert res.exit_code == 1
    message = _error(res)
    assert "does not cover text runs" in message and "dmlkit evaluate" in message
    assert "report: loading data" not in res.stderr
