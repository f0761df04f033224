"""``dmlkit train``: the config's progress setting, which runs --resume picks, devices and
seeds refused in one line, and a SIGTERM named as such."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

import dmlkit.training
from dmlkit.cli.main import app
from dmlkit.cli.train import _latest_run
from dmlkit.config import Config
from dmlkit.training.interrupts import Terminated, sigterm_as_terminated, stop_line
from dmlkit.training.rng import MAX_SEED, rng_scope
from dmlkit.training.run import RunResult

TINY = """
name: tiny
data: {name: digits, max_per_class: 10, max_heldout_per_class: 10}
model: {name: mlp, dim: 8, hidden: [16]}
loss: {name: triplet_margin, margin: 0.2}
miner: {name: batch_hard}
sampler: {name: m_per_class, m: 2, batch_size: 10}
training: {epochs: 1, num_threads: 1%s}
"""

runner = CliRunner()


@pytest.fixture
def captured(monkeypatch):
    """The config ``dmlkit train`` hands to train_run (which then does nothing)."""
    seen: list[Config] = []

    def fake(cfg, out, *, resume=False, log=print, callbacks=()):
        seen.append(cfg)
        return RunResult(out, {})

    monkeypatch.setattr(dmlkit.training, "train_run", fake)
    return seen


@pytest.mark.parametrize(("setting", "args", "want"), [
    (", progress: false", [], False),
    ("", ["--set", "training.progress=false"], False),
    (", progress: false", ["--progress"], True),
    ("", ["--no-progress"], False),
    ("", [], True),
])
def test_the_progress_setting_is_the_configs_unless_the_flag_is_given(
        tmp_path, captured, setting, args, want):
    (tmp_path / "c.yaml").write_text(TINY % setting)
    result = runner.invoke(app, ["train", str(tmp_path / "c.yaml"), "--out",
                                 str(tmp_path / "run"), *args])
    assert result.exit_code == 0, result.output
    assert captured[-1].training.progress is want


def test_resume_picks_only_runs_of_the_configs_own_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i, name in enumerate(["exp", "exp-20260101-120000", "exp-20260101-120000-2",
                              "exp-b-20260102-120000", "exp-b", "exp-old"]):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "checkpoint.pt").write_bytes(b"")
        os.utime(tmp_path / "runs" / name / "checkpoint.pt")
        os.utime(tmp_path / "runs" / name, (1000 + i, 1000 + i))
    assert _latest_run("exp").name == "exp-20260101-120000-2"  # not exp-b-..., exp-old
    assert _latest_run("exp-b").name == "exp-b"
    assert _latest_run("other") is None


@pytest.mark.parametrize(("device", "message"), [
    ("meta", "training.device is 'meta', torch's device of shapes without data"),
    ("xpu", "training.device is 'xpu' but this torch"),
])
def test_unusable_devices_are_one_line_errors(tmp_path, device, message):
    if device == "xpu" and hasattr(torch, "xpu") and torch.xpu.is_available():
        pytest.skip("an XPU is available here")
    (tmp_path / "c.yaml").write_text(TINY % "")
    result = runner.invoke(app, ["train", str(tmp_path / "c.yaml"), "--out",
                                 str(tmp_path / "run"), "--set", f"training.device={device}"])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {message}"), result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert "set training.device to 'cpu'" in result.output


def test_the_trainer_refuses_the_meta_device():
    from dmlkit.data.dataset import ArrayDataset
    from dmlkit.training import Trainer
    from dmlkit.training.build import resolve_config

    cfg = Config.from_dict({"model": {"name": "mlp", "dim": 4}, "loss": {"name": "contrastive"},
                            "training": {"device": "meta", "batch_size": 4}})
    data = ArrayDataset(torch.randn(8, 3), torch.arange(8) % 2)
    with pytest.raises(ValueError, match="training.device is 'meta'"):
        Trainer(resolve_config(cfg, data.x[0], 2), data, log=None)


@pytest.mark.parametrize(("args", "message"), [
    (["--seed", "99999999999999999999"],
     f"error: --seed must be an integer from 0 to {MAX_SEED} (2**63 - 1); got "
     "99999999999999999999"),
    (["--set", f"training.seed={2**64 - 1}"],
     f"error: training.seed must be an integer in [0, {MAX_SEED}]"),
    (["--set", f"data.seed={2**64}"], f"error: data.seed must be an integer in [0, {MAX_SEED}]"),
])
def test_seeds_out_of_range_are_one_line_errors(tmp_path, args, message):
    (tmp_path / "c.yaml").write_text(TINY % "")
    result = runner.invoke(app, ["train", str(tmp_path / "c.yaml"), "--out",
                                 str(tmp_path / "run"), *args])
    assert result.exit_code == 1
    assert result.output.startswith(message), result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def test_the_largest_seed_trains(tmp_path):
    (tmp_path / "c.yaml").write_text(TINY % "")
    result = runner.invoke(app, ["train", str(tmp_path / "c.yaml"), "--out",
                                 str(tmp_path / "run"), "--seed", str(MAX_SEED)])
    assert result.exit_code == 0, result.output
    with pytest.raises(ValueError, match="outside the range torch's generators take"):
        with rng_scope(2**64):
            pass


def test_sigterm_raises_terminated_inside_the_block_only():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), sigterm_as_terminated():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is before
    assert isinstance(Terminated(), KeyboardInterrupt)


def test_the_stop_line_names_the_interrupt():
    trainer = SimpleNamespace(out_dir=None, epoch=3, saved_epoch=3)
    assert stop_line(trainer, Terminated(), None) == (
        "training stopped during epoch 4 (terminated (SIGTERM)).")
    assert stop_line(trainer, KeyboardInterrupt(), None) == (
        "training stopped during epoch 4 (interrupted).")
    assert stop_line(trainer, ValueError("bad\nmore"), None) == (
        "training stopped during epoch 4 (ValueError: bad ...).")


def test_a_sigterm_stops_dmlkit_train_with_a_line_that_says_so(tmp_path):
    (tmp_path / "c.yaml").write_text((TINY % "").replace("epochs: 1", "epochs: 1000"))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dmlkit", "train", str(tmp_path / "c.yaml"),
                             "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    log = out / "train.log"
    deadline = time.monotonic() + 120
    while not (log.is_file() and log.read_text().count("\n") >= 1):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "(terminated (SIGTERM))." in output and "KeyboardInterrupt" not in output, output
    assert f"error: terminated (SIGTERM); resume with: dmlkit train --resume --out {out}" in (
        output)
