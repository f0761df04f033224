"""Bad input gives one clear line (naming the file and what to do) and writes nothing;
silent surprises become warnings or errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dmlkit.cli.main import app

TINY = """
name: tiny
data: {name: digits, max_per_class: 10, max_heldout_per_class: 10}
model: {name: mlp, dim: 8, hidden: [16]}
loss: {name: triplet_margin, margin: 0.2}
sampler: {name: m_per_class, m: 2, batch_size: 10}
training: {epochs: 2, num_threads: 1}
"""

runner = CliRunner()


def one_error(res, *needles: str) -> str:
    """The result failed with exactly one ``error:`` line holding ``needles``."""
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and "Aborted" not in res.output
    lines = [s for s in res.stderr.splitlines() if s.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from dmlkit.config import load_config
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("clear")
    (root / "tiny.yaml").write_text(TINY)
    train_run(load_config(root / "tiny.yaml"), root / "run", log=lambda *a: None)
    return root / "run"


def _copy_run(run_dir, dest):
    import shutil

    shutil.copytree(run_dir, dest)
    return dest


@pytest.mark.parametrize("size", [0, 1000])
def test_truncated_or_empty_model_file(run_dir, tmp_path, size):
    run = _copy_run(run_dir, tmp_path / "run")
    data = (run / "model.pt").read_bytes()
    (run / "model.pt").write_bytes(data[:size])
    res = runner.invoke(app, ["embed", str(run), "--out", str(tmp_path / "e.npz")])
    what = "is empty (0 bytes)" if size == 0 else "is truncated or corrupt"
    one_error(res, str(run / "model.pt"), what, "delete it")
    assert not (tmp_path / "e.npz").exists()
    (run / "model.pt").unlink()  # the advice works: the checkpoint's weights load
    res = runner.invoke(app, ["embed", str(run), "--out", str(tmp_path / "e.npz")])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("command", [["embed"], ["evaluate"], ["classical", "fit"]])
def test_a_model_file_of_junk_bytes_is_named_by_every_command(run_dir, tmp_path, command):
    """Junk reaches torch's unpickler as a bare KeyError ("error: 174812789", or a
    traceback in classical fit): every command names the file instead."""
    run = _copy_run(run_dir, tmp_path / "run")
    (run / "model.pt").write_bytes(b"junk\n")
    res = runner.invoke(app, [*command, str(run), "--out", str(tmp_path / "out")])
    one_error(res, str(run / "model.pt"), "is truncated or corrupt", "delete it")


@pytest.mark.parametrize("size", [0, 1000])
def test_truncated_or_empty_checkpoint(run_dir, tmp_path, size):
    run = _copy_run(run_dir, tmp_path / "run")
    (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:size])
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    res = runner.invoke(app, ["train", "--resume", "--out", str(run), "--no-progress"])
    one_error(res, str(run / "checkpoint.pt"), "start the run again")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing written


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 cut short", b"plain text"])
def test_empty_or_corrupt_array_files(tmp_path, content):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(content)
    for args in (["index", "build", str(bad), "--out", str(tmp_path / "ix")],
                 ["evaluate", str(bad), "--out", str(tmp_path / "ev.json")],
                 ["classical", "fit", str(bad), "--out", str(tmp_path / "m")]):
        one_error(runner.invoke(app, args), str(bad), "write it again with numpy")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: c\ndata: {{name: npz, path: {bad}}}\n")
    one_error(runner.invoke(app, ["train", str(cfg), "--out", str(tmp_path / "r")]), str(bad))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "c.yaml"]


def test_malformed_and_empty_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndata: {name: digits\n")
    res = runner.invoke(app, ["train", str(bad), "--out", str(tmp_path / "r")])
    one_error(res, str(bad), "not valid YAML at line 3")
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    res = runner.invoke(app, ["train", str(empty), "--out", str(tmp_path / "r")])
    one_error(res, str(empty), "is empty", "without a config")
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda(tmp_path):
    cfg = tmp_path / "cuda.yaml"
    cfg.write_text(TINY.replace("num_threads: 1", "num_threads: 1, device: cuda"))
    res = runner.invoke(app, ["train", str(cfg), "--out", str(tmp_path / "r")])
    one_error(res, "training.device", "CUDA is not available", "'cpu'")
    assert not (tmp_path / "r").exists()


def test_cuda_device_option_without_cuda(run_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    res = runner.invoke(app, ["embed", str(run_dir), "--out", str(tmp_path / "e.npz"),
                              "--device", "cuda"])
    one_error(res, "CUDA is not available")
    assert not (tmp_path / "e.npz").exists()


def _npz_config(tmp_path, x, labels) -> str:
    np.savez(tmp_path / "d.npz", x=x, labels=labels)
    cfg = tmp_path / "d.yaml"
    cfg.write_text(f"name: d\ndata: {{name: npz, path: {tmp_path / 'd.npz'}}}\n"
                   "model: {name: mlp, dim: 4}\ntraining: {epochs: 1}\n")
    return str(cfg)


def test_one_dimensional_x_refused_at_load(tmp_path):
    cfg = _npz_config(tmp_path, np.arange(40, dtype=np.float32), np.arange(40) % 4)
    res = runner.invoke(app, ["train", cfg, "--out", str(tmp_path / "r")])
    one_error(res, "d.npz", "shape (40,)", "(n, 1)")
    assert not (tmp_path / "r").exists()


def test_nan_inputs_refused_at_load(tmp_path):
    x = np.random.default_rng(0).random((40, 5)).astype(np.float32)
    x[7, 2] = np.nan
    cfg = _npz_config(tmp_path, x, np.arange(40) % 4)
    res = runner.invoke(app, ["train", cfg, "--out", str(tmp_path / "r")])
    one_error(res, "d.npz", "1 of 40 items", "row 7")
    assert not (tmp_path / "r").exists()


def test_huge_inputs_warn_at_load(tmp_path):
    from dmlkit.data import load_dataset

    x = np.random.default_rng(0).random((40, 5)).astype(np.float32)
    np.savez(tmp_path / "big.npz", x=x * 1e30, labels=np.arange(40) % 4)
    with pytest.warns(UserWarning, match=r"\|x\| = 9.97e\+29.*standardize"):
        load_dataset(tmp_path / "big.npz")
    np.savez(tmp_path / "ok.npz", x=x * 255, labels=np.arange(40) % 4)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(tmp_path / "ok.npz")  # pixel-scale inputs pass quietly


def test_corrupt_image_in_an_image_folder(tmp_path):
    image = pytest.importorskip("PIL.Image")
    from dmlkit.data import load_dataset

    for c in range(2):
        (tmp_path / "f" / f"c{c}").mkdir(parents=True)
        image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "f" / f"c{c}" / "a.png")
    bad = tmp_path / "f" / "c1" / "b.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"cannot read image .*b\.jpg.*replace or remove it"):
        load_dataset(tmp_path / "f")


def test_resume_refuses_a_different_config(run_dir, tmp_path):
    run = _copy_run(run_dir, tmp_path / "run")
    other = tmp_path / "other.yaml"
    other.write_text(TINY.replace("margin: 0.2", "margin: 0.5"))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    res = runner.invoke(app, ["train", str(other), "--resume", "--out", str(run)])
    one_error(res, "loss.margin: 0.2 -> 0.5", "resume without them (dmlkit train --resume --out")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_resume_with_fewer_epochs_than_done(run_dir, tmp_path):
    run = _copy_run(run_dir, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    res = runner.invoke(app, ["train", "--resume", "--out", str(run), "--epochs", "1"])
    one_error(res, "already trained 2 epochs", "--epochs >= 2")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # config.yaml kept


def test_kill_before_the_first_checkpoint(tmp_path):
    from dmlkit.config import Config

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    run = tmp_path / "run"
    run.mkdir()
    Config.from_yaml(cfg).to_yaml(run / "config.yaml")  # what a kill in epoch 1 leaves
    res = runner.invoke(app, ["train", "--resume", "--out", str(run)])
    one_error(res, "stopped before its first epoch ended",
              "start it again without --resume (same --out)")
    res = runner.invoke(app, ["train", str(cfg), "--out", str(run), "--no-progress"])
    assert res.exit_code == 0, res.output  # the advice works
    assert (run / "checkpoint.pt").is_file()


def test_evaluating_one_class_or_all_singletons_warns():
    from dmlkit.evaluation import retrieval_metrics

    emb = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning, match="trivially 1.0"):
        assert retrieval_metrics(emb, torch.zeros(12, dtype=torch.long))["map_at_r"] == 1.0
    with pytest.warns(UserWarning, match="trivially 1.0"):
        retrieval_metrics(emb[:4], torch.full((4,), 3), emb[4:], torch.full((8,), 3))
    with pytest.warns(UserWarning, match="NaN: none of the 12 queries"):
        assert np.isnan(retrieval_metrics(emb, torch.arange(12))["map_at_r"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        retrieval_metrics(emb, torch.arange(12) % 3)  # ordinary labels: no warning


def test_version():
    from dmlkit import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.stdout.strip() == f"dmlkit {__version__}"
