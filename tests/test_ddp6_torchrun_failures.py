"""A torchrun job whose processes fail: one line from the survivors, a quick end, no
duplicated warnings; commands that cannot run as several processes are refused."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pytest
import torch
from conftest import one_process_group
from test_distributed import torchrun
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.config import Config

runner = CliRunner()

#: rank 1 is killed (kill -9) as its second epoch starts
DYING_RANK_1 = '''
import os, runpy, signal, sys
from dmlkit.training import distributed
if os.environ["RANK"] == "1":
    fetch = distributed.DistributedTrainer.fetch
    def dying(self, indices):
        if self.epoch == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return fetch(self, indices)
    distributed.DistributedTrainer.fetch = dying
sys.argv = ["dmlkit", *sys.argv[1:]]
runpy.run_module("dmlkit", run_name="__main__")
'''

GLOO_RESET = ("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
              "[127.0.0.1]:41130: Connection reset by peer. This is typically caused by a "
              "remote worker hanging or bugs in the application.")


def small_config(path, **sampler) -> None:
    Config.from_dict({
        "name": "ddp6", "data": {"name": "digits", "max_per_class": 20,
                                 "max_heldout_per_class": 10},
        "model": {"name": "mlp", "dim": 8, "hidden": []},
        "loss": {"name": "proxy_anchor"},
        "sampler": {"name": "m_per_class", **sampler},
        "training": {"epochs": 2, "progress": False, "num_threads": 1}}).to_yaml(path)


def test_a_killed_process_leaves_one_line_and_warnings_print_once(tmp_path):
    """kill -9 of rank 1: rank 0 ends with one error line and the resume command, not the
    gloo error's traceback; the warning both processes raise prints once."""
    small_config(tmp_path / "c.yaml", m=8, batch_size=8)  # warns: one class per batch
    (tmp_path / "dying.py").write_text(DYING_RANK_1)
    out = tmp_path / "run"
    # (the launcher's SIGTERM comes seconds later: rank 0 meets the lost connection first)
    res = torchrun(["--monitor-interval", "2", str(tmp_path / "dying.py"), "train",
                    str(tmp_path / "c.yaml"), "--out", str(out)], tmp_path, timeout=120)
    assert res.returncode != 0
    assert res.stderr.count("warning: m_per_class with batch_size 8 = m") == 1, res.stderr
    assert "[rank0]" not in res.stderr, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, res.stderr[-3000:]
    assert errors[0].startswith("error: stopped: lost the connection to another process of "
                                "the job (")
    assert errors[0].endswith(f"or was killed; resume with: dmlkit train --resume --out {out}")


def test_a_refused_run_directory_ends_the_job_quickly(tmp_path):
    """Rank 0 refuses a finished run's directory before joining the process group; rank 1,
    waiting there, stops at the launcher's SIGTERM (not at its SIGKILL, 30 s later)."""
    small_config(tmp_path / "c.yaml", m=4, batch_size=40)
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "checkpoint.pt").write_bytes(b"a finished run's")
    start = time.monotonic()
    res = torchrun(["-m", "dmlkit", "train", str(tmp_path / "c.yaml"), "--out",
                    str(tmp_path / "done")], tmp_path, timeout=120)
    took = time.monotonic() - start
    assert res.returncode != 0 and "already holds a run" in res.stderr
    assert "forcefully exiting" not in res.stderr
    # a rank 1 left for the SIGKILL would take 30 s after the SIGTERM, on top of rank 0's
    # start and refusal: under 30 s in all is the SIGTERM's work, however loaded the machine
    assert took < 30, f"{took:.0f} s"


@pytest.mark.filterwarnings("ignore:m_per_class with m=1")
def test_one_item_per_process_with_batch_norm_is_refused(tmp_path, monkeypatch):
    """A batch of 2 over 2 processes gives each one item, which batch norm cannot
    normalize in training mode: refused with the batch size to use (one process trains)."""
    import torch.distributed as dist

    from dmlkit.data.load import split_dataset
    from dmlkit.training import Trainer
    from dmlkit.training.build import resolve_config
    from dmlkit.training.distributed import DistributedTrainer

    cfg = Config.from_dict({
        "name": "bn", "data": {"name": "digits", "max_per_class": 10},
        "model": {"name": "mlp", "dim": 8, "hidden": [16]},  # (batch norm after the hidden)
        "loss": {"name": "proxy_anchor"},
        "sampler": {"name": "m_per_class", "m": 1, "batch_size": 2},
        "training": {"epochs": 1, "progress": False}})
    train, _ = split_dataset(cfg.data)
    cfg = resolve_config(cfg, train.x[0], 10)
    Trainer(cfg, train, log=None)  # one process: a batch of 2
    with one_process_group(monkeypatch):
        with monkeypatch.context() as m:  # as the first of two processes
            m.setattr(dist, "get_world_size", lambda group=None: 2)
            with pytest.raises(ValueError) as err:
                DistributedTrainer(cfg, train, log=None)
            cfg.sampler["batch_size"] = 4  # two items each
            DistributedTrainer(cfg, train, log=None)
        assert str(err.value).startswith(
            "each of the 2 processes gets batch_size / processes = 2 / 2 = 1 item, but the "
            "model has batch norm layers (body.1)")
        assert "make the batch size at least 4" in str(err.value)


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_lost_peer_is_one_line_with_the_resume_command(tmp_path, monkeypatch, rank):
    import dmlkit.training

    out = tmp_path / "r"

    def lost(*args, **kwargs):  # after the first epoch's checkpoint
        out.mkdir(exist_ok=True)
        (out / "checkpoint.pt").write_bytes(b"kept")
        raise RuntimeError(GLOO_RESET)

    monkeypatch.setattr(dmlkit.training, "train_run", lost)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    result = runner.invoke(app, ["train", "--epochs", "3", "--out", str(out)])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1] == (
        "error: " + ("(process 1) " if rank == "1" else "") + "stopped: lost the connection "
        "to another process of the job (Read error [127.0.0.1]:41130: Connection reset by "
        f"peer): it failed (its error is above) or was killed; resume with: dmlkit train "
        f"--resume --out {out}")


@pytest.mark.parametrize("world, message", [
    ("1", GLOO_RESET),  # one process: no peer to lose
    ("2", "mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)"),  # a bug
    ("2", "[enforce fail at /pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:446] "
          "op.preamble.length <= op.nbytes. 8 vs 4"),  # collectives that disagree: a bug
])
def test_other_runtime_errors_keep_their_traceback(tmp_path, monkeypatch, world, message):
    import dmlkit.training

    def failing(*args, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr(dmlkit.training, "train_run", failing)
    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("RANK", "0")
    result = runner.invoke(app, ["train", "--epochs", "1", "--out", str(tmp_path / "r")])
    assert isinstance(result.exception, RuntimeError) and str(result.exception) == message


def test_torch_distributed_errors_count_as_a_lost_peer(monkeypatch):
    from dmlkit.training.distributed import lost_peer, lost_peer_reason

    monkeypatch.setenv("WORLD_SIZE", "2")
    err = torch.distributed.DistBackendError("NCCL communicator was aborted on rank 0.")
    assert lost_peer(err) and lost_peer_reason(err) == "NCCL communicator was aborted on rank 0"
    assert not lost_peer(ValueError(GLOO_RESET))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not lost_peer(err)


@pytest.mark.parametrize("rank, shown", [("0", 1), ("1", 0)])
def test_warnings_come_from_the_first_process_only(tmp_path, monkeypatch, rank, shown):
    import dmlkit.training

    def warns(*args, **kwargs):
        warnings.warn("the data looks odd", UserWarning, stacklevel=1)
        raise ValueError("stop here")

    monkeypatch.setattr(dmlkit.training, "train_run", warns)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = runner.invoke(app, ["train", "--epochs", "1", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1
    assert sum("the data looks odd" in str(w.message) for w in caught) == shown


@pytest.mark.parametrize("command", [["crossval", "c.yaml"], ["tune", "c.yaml", "-n", "2"]])
@pytest.mark.parametrize("rank", ["0", "1"])
def test_crossval_and_tune_refuse_torchrun(monkeypatch, command, rank):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    result = runner.invoke(app, command)
    assert result.exit_code == 1
    if rank == "1":  # the first process speaks for the job
        assert result.output == ""
        return
    line = result.output.strip()
    assert line.startswith(f"error: dmlkit {command[0]} runs as a single process, not under "
                           "torchrun (each of the 2 processes would run all of it): start it "
                           "without torchrun")
    assert ("start more workers on the same study with --resume" in line) == (
        command[0] == "tune")


def test_a_missing_npz_key_is_one_line_without_quotes(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(30, 4)).astype(np.float32),
             y=np.arange(30) % 3)
    result = runner.invoke(app, ["train", "--epochs", "1", "--out", str(tmp_path / "r"),
                                 "--set", "data.name=npz", "--set",
                                 f"data.path={tmp_path / 'd.npz'}"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'd.npz'} has no array 'labels'; arrays present: ['x', 'y']. Set "
        "x_key / labels_key in the data config.")


def test_a_sigterm_while_the_process_exits_raises_nothing(tmp_path):
    """torchrun's SIGTERM can reach a process after its command ended (in the exit
    handlers): it ends the process, without a KeyboardInterrupt traceback."""
    import subprocess
    import sys

    script = ("import atexit, os, signal, sys, time\n"
              "atexit.register(lambda: os.kill(os.getpid(), signal.SIGTERM) or time.sleep(2))\n"
              "from dmlkit.cli.main import main\n"
              "sys.argv = ['dmlkit', '--version']\n"
              "main()\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert "KeyboardInterrupt" not in res.stderr, res.stderr
    assert res.returncode == -15
