"""Edges of exports and configs: an export whose second file cannot be written leaves
nothing (and, under --force, the old pair), an ONNX export's I/O error is reported as
one, a model too large to build is one ValueError, a config file that is not UTF-8 is
named, and ``Config.from_yaml`` takes any existing file name."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from cli_helpers import SMALL_MLP, train_small
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.config import Config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train_small(tmp_path_factory.mktemp("edges"), SMALL_MLP)


def _disk_full_on(monkeypatch, suffix: str) -> None:
    """Make ``os.replace`` onto a name ending in ``suffix`` fail as a full disk does."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(suffix):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("failing", [".pt", ".pt.json"])
def test_a_failed_export_leaves_nothing(run_dir, tmp_path, monkeypatch, failing):
    from dmlkit.runs.export import export_run

    out = tmp_path / "sub" / "m.pt"
    _disk_full_on(monkeypatch, failing)
    with pytest.raises(OSError) as info:
        export_run(run_dir, out, "torchscript")
    assert str(out) in str(info.value) and ".tmp" not in str(info.value)
    assert not (tmp_path / "sub").exists()  # no model, no .json, no temporary, no folder


@pytest.mark.parametrize("failing", [".pt", ".pt.json"])
def test_a_failed_forced_export_keeps_the_old_pair(run_dir, tmp_path, monkeypatch, failing):
    from dmlkit.runs.export import export_run

    out = tmp_path / "m.pt"
    out.write_bytes(b"old model")
    Path(f"{out}.json").write_text("old description")
    _disk_full_on(monkeypatch, failing)
    res = CliRunner().invoke(app, ["export", str(run_dir), "-f", "torchscript", "-o", str(out),
                                   "--force"])
    assert res.exit_code == 1
    assert f"{out}{failing[3:]}: No space left on device" in res.output
    assert out.read_bytes() == b"old model"
    assert Path(f"{out}.json").read_text() == "old description"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m.pt.json"]
    monkeypatch.undo()
    export_run(run_dir, out, "torchscript", force=True)  # (the retry works)


def test_an_onnx_export_reports_an_io_error_as_one(run_dir, tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    import torch

    from dmlkit.runs.export import ExportError, export_run

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", full)
    out = tmp_path / "m.onnx"
    with pytest.raises(OSError) as info:
        export_run(run_dir, out, "onnx")
    assert not isinstance(info.value, ExportError)
    assert str(out) in str(info.value) and "torchscript" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dim", [10**12, 10**23])
def test_a_model_too_large_to_build_is_one_value_error(dim):
    from dmlkit.training.build import build_model

    config = Config.from_dict({"model": {"name": "small_cnn", "in_channels": 1,
                                         "image_size": 8, "dim": dim, "width": 8}})
    with pytest.raises(ValueError, match=rf"'small_cnn' with .*dim={dim}.* cannot be built"
                                         r".*lower model\.dim") as info:
        build_model(config)
    assert "\n" not in str(info.value)


def test_train_with_a_model_too_large_says_so_in_one_line(tmp_path):
    (tmp_path / "c.yaml").write_text(SMALL_MLP)
    res = CliRunner().invoke(app, ["train", str(tmp_path / "c.yaml"), "--out",
                                   str(tmp_path / "run"), "--set", "model.dim=1000000000000"])
    assert res.exit_code == 1
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot be built" in errors[0]
    assert "Traceback" not in res.output and not (tmp_path / "run").exists()


@pytest.mark.parametrize("data", ["name: x\n# café\n".encode("latin-1"),
                                  "name: x\n".encode("utf-16")])
def test_a_config_file_not_utf8_is_named(tmp_path, data):
    path = tmp_path / "c.yaml"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=r"c\.yaml is not UTF-8 .*save the file as UTF-8"):
        Config.from_yaml(path)


def test_a_config_file_with_a_bom_still_loads(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xef\xbb\xbfname: bom\n")
    assert Config.from_yaml(path).name == "bom"


@pytest.mark.parametrize("name", ["c.YAML", "c.YML", "c"])
def test_from_yaml_reads_any_existing_file(tmp_path, name):
    (tmp_path / name).write_text("name: named\n")
    assert Config.from_yaml(str(tmp_path / name)).name == "named"


def test_from_yaml_says_what_a_string_is_not(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        Config.from_yaml(str(tmp_path / "missing.YAML"))
    with pytest.raises(ValueError, match="neither a config file .* nor YAML text of a mapping"):
        Config.from_yaml(str(tmp_path / "missing"))
    assert Config.from_yaml("name: text").name == "text"  # (YAML text as before)
