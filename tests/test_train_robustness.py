"""Training runs and their directories under concurrency, kills, full disks, edits and
divergence: one run per directory, nothing overwritten, one ``error:`` line."""

from __future__ import annotations

import errno
import fcntl
import json
import shlex

import pytest
import torch
import yaml
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.config import Config
from dmlkit.training import load_checkpoint, load_run, train_run

TINY = """
name: tiny
data: {name: digits, max_per_class: 10, max_heldout_per_class: 10}
model: {name: mlp, dim: 8, hidden: [16]}
loss: {name: triplet_margin, margin: 0.2}
sampler: {name: m_per_class, m: 2, batch_size: 10}
training: {epochs: 3, num_threads: 1, progress: false}
"""

runner = CliRunner()


def quiet(*_args):
    pass


def tiny(epochs: int = 3) -> Config:
    cfg = Config.from_dict(yaml.safe_load(TINY))
    cfg.training.epochs = epochs
    return cfg


def one_error(res, *needles: str) -> str:
    """The command failed with exactly one ``error:`` line on stderr, holding ``needles``."""
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(
        res.exception, SystemExit), res.output
    lines = [s for s in res.stderr.splitlines() if s.strip() and not s.startswith("note:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def interrupted(out, epochs: int = 3, after: int = 1):
    """A run of ``epochs`` stopped (as by Ctrl-C) after epoch ``after``'s checkpoint."""
    def stop(trainer, record):
        if record["epoch"] == after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(tiny(epochs), out, log=quiet, callbacks=(stop,))
    return out


# -- 1: one run per directory -------------------------------------------------------------
def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path, monkeypatch):
    import dmlkit.cli.train as cli_train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli_train.time, "strftime", lambda fmt: "20260101-120000")
    (tmp_path / "tiny.yaml").write_text(TINY)
    for seed in (1, 2):
        res = runner.invoke(app, ["train", "tiny.yaml", "--epochs", "1", "--seed", str(seed)])
        assert res.exit_code == 0, res.output
    first, second = (tmp_path / "runs/tiny-20260101-120000",
                     tmp_path / "runs/tiny-20260101-120000-2")
    assert "run directory: runs/tiny-20260101-120000-2" in res.output
    for run, seed in ((first, 1), (second, 2)):
        assert yaml.safe_load((run / "config.yaml").read_text())["training"]["seed"] == seed
        assert load_checkpoint(run / "checkpoint.pt")["config"]["training"]["seed"] == seed
        assert len((run / "train.log").read_text().splitlines()) == 1


def test_a_directory_another_run_holds_is_refused(tmp_path):
    """The lock file locked by another process (here, another open file): a new run and a
    resume of it are both refused, and nothing in the directory changes."""
    out = interrupted(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".train.lock"}
    with open(out / ".train.lock", "a+") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        other.seek(0)
        other.truncate()  # (as a run that takes the lock writes its process id)
        other.write("4242\n")
        other.flush()
        res = runner.invoke(app, ["train", "--resume", "--out", str(out), "--no-progress"])
        one_error(res, f"cannot resume {out}",
                  "another dmlkit train is training it now (process 4242;")
        (tmp_path / "tiny.yaml").write_text(TINY)
        res = runner.invoke(app, ["train", str(tmp_path / "tiny.yaml"), "--out", str(out)])
        one_error(res, f"{out} is in use by another dmlkit train", "choose another --out")
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        (fresh / ".train.lock").touch()
        with open(fresh / ".train.lock", "a+") as held:
            fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            with pytest.raises(FileExistsError, match="in use by another dmlkit train"):
                train_run(tiny(1), fresh, log=quiet)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".train.lock"} == before
    assert sorted(p.name for p in fresh.iterdir()) == [".train.lock"]


# -- 2: nothing overwritten -------------------------------------------------------------
@pytest.mark.parametrize("files", [
    ("config.yaml",),
    ("config.yaml", "metrics.json", "model.pt", "train.log"),  # checkpoint removed
    ("notes.txt",),
])
def test_an_out_holding_files_but_no_run_is_refused(tmp_path, files):
    out = tmp_path / "mine"
    out.mkdir()
    for name in files:
        (out / name).write_text(f"my {name}\n")
    (tmp_path / "tiny.yaml").write_text(TINY)
    res = runner.invoke(app, ["train", str(tmp_path / "tiny.yaml"), "--out", str(out)])
    line = one_error(res, f"{out} already holds", "no checkpoint.pt to resume",
                     "choose another --out, or delete them")
    assert all(name in line for name in files)
    assert {p.name: p.read_text() for p in out.iterdir()} == {n: f"my {n}\n" for n in files}


def test_an_empty_out_and_an_unstarted_run_train_and_a_run_is_never_overwritten(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    train_run(tiny(1), empty, log=quiet)
    assert (empty / "model.pt").is_file()
    with pytest.raises(FileExistsError, match="already holds a run; resume it"):
        train_run(tiny(1), empty, log=quiet)

    def nan(trainer, record):  # a run that fails in its first epoch keeps its config
        raise FloatingPointError("loss is nan")

    started = tmp_path / "started"
    with pytest.raises(FloatingPointError):
        train_run(tiny(1), started, log=quiet, callbacks=(nan,))
    (started / "checkpoint.pt").unlink()  # (the callback ran after the first save)
    (started / "train.log").write_text("")
    train_run(tiny(1), started, log=quiet)  # started again, as the resume refusal advises
    assert len((started / "train.log").read_text().splitlines()) == 1


# -- 3: a full disk or a read-only directory ---------------------------------------------
def _disk_full_save(fail_at: int, torch_error: bool):
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == fail_at:
            f.write(b"partial")
            if not torch_error:
                raise OSError(errno.ENOSPC, "No space left on device")
            try:  # torch's writer: the OSError, then a RuntimeError while closing the zip
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                raise RuntimeError(  # noqa: B904 - torch raises it so (its context: the OSError)
                    "[enforce fail at inline_container.cc:672] . unexpected pos 87872 vs 87768")
        return real(obj, f, *args, **kwargs)

    return save


@pytest.mark.parametrize("torch_error", [True, False])
def test_a_full_disk_ends_with_one_error_line_and_keeps_the_last_checkpoint(
        tmp_path, monkeypatch, torch_error):
    from dmlkit.training import checkpoint

    monkeypatch.setattr(checkpoint.torch, "save", _disk_full_save(2, torch_error))
    (tmp_path / "tiny.yaml").write_text(TINY)
    out = tmp_path / "my runs" / "r"
    res = runner.invoke(app, ["train", str(tmp_path / "tiny.yaml"), "--out", str(out)])
    one_error(res, f"cannot write {out / 'checkpoint.pt'}: no space left on device",
              "the checkpoint of epoch 1 is kept", "free some space",
              f"resume with: dmlkit train --resume --out {shlex.quote(str(out))}")
    monkeypatch.undo()
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    res = runner.invoke(app, ["train", "--resume", "--out", str(out)])
    assert res.exit_code == 0, res.output


def test_torch_write_failures_and_read_only_directories_name_the_file(tmp_path, monkeypatch):
    from dmlkit.training import atomic_save, checkpoint
    from dmlkit.training.checkpoint import WriteError

    def torch_only(obj, f):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(checkpoint.torch, "save", torch_only)
    with pytest.raises(WriteError, match=r"cannot write .*a\.pt: write failed \(torch.save"):
        atomic_save({"x": 1}, tmp_path / "a.pt")
    monkeypatch.undo()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".b.pt.xyz.tmp"))

    monkeypatch.setattr(checkpoint.tempfile, "mkstemp", read_only)
    with pytest.raises(WriteError) as caught:
        atomic_save({"x": 1}, tmp_path / "b.pt")
    assert str(caught.value) == f"cannot write {tmp_path / 'b.pt'}: read-only file system"
    assert caught.value.errno == errno.EROFS


# -- 4: metrics.json ---------------------------------------------------------------------
def test_metrics_are_written_atomically_and_a_cut_file_is_named(tmp_path, monkeypatch):
    import os

    from dmlkit.training import checkpoint

    replaced, real = [], os.replace
    monkeypatch.setattr(checkpoint.os, "replace",
                        lambda a, b: (replaced.append(os.path.basename(b)), real(a, b)))
    out = tmp_path / "run"
    train_run(tiny(1), out, log=quiet)
    assert {"metrics.json", "model.pt", "checkpoint.pt", "config.yaml"} <= set(replaced)
    monkeypatch.undo()
    (out / "metrics.json").write_text("")
    with pytest.raises(ValueError, match="metrics.json is empty: the run's weights are intact"
                       ) as caught:
        load_run(out)
    assert str(out / "metrics.json") in str(caught.value)
    assert f"dmlkit train --resume --out {out}" in str(caught.value)
    res = runner.invoke(app, ["train", "--resume", "--out", str(out)])  # as it says
    assert res.exit_code == 0, res.output
    assert load_run(out).metrics["map_at_r"] > 0


# -- 5: config.yaml edited before --resume ------------------------------------------------
def test_an_edited_config_yaml_is_refused_on_resume(tmp_path):
    out = interrupted(tmp_path / "run")
    saved = (out / "config.yaml").read_text()
    raw = yaml.safe_load(saved)
    raw["optimizer"]["lr"] = 0.5
    raw["loss"]["margin"] = 0.7
    (out / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    res = runner.invoke(app, ["train", "--resume", "--out", str(out), "--no-progress"])
    one_error(res, "config.yaml was edited after", "optimizer.lr: 0.001 -> 0.5",
              "loss.margin: 0.2 -> 0.7")
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    raw = yaml.safe_load(saved)
    raw["training"]["epochs"] = 4  # more epochs (and progress, device) may change
    raw["training"]["progress"] = True
    (out / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    res = runner.invoke(app, ["train", "--resume", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert len((out / "train.log").read_text().splitlines()) == 4


# -- 6: evaluate / embed an unfinished run -----------------------------------------------
def test_evaluate_and_embed_say_an_unfinished_runs_checkpoint_is_used(tmp_path):
    out = interrupted(tmp_path / "run")
    res = runner.invoke(app, ["evaluate", str(out), "--sections", "retrieval"])
    assert res.exit_code == 0, res.output
    what = "checkpoint of epoch 1 of 3 (unfinished run)"
    assert f"note: {out} has no model.pt: evaluating the weights of its {what}" in res.stderr
    assert json.loads((out / "evaluation.json").read_text())["weights"] == what
    res = runner.invoke(app, ["embed", str(out), "--out", str(tmp_path / "e.npz")])
    assert res.exit_code == 0 and f"embedding with the weights of its {what}" in res.stderr
    finished = tmp_path / "done"
    train_run(tiny(1), finished, log=quiet)
    res = runner.invoke(app, ["evaluate", str(finished), "--sections", "retrieval"])
    assert res.exit_code == 0 and "note:" not in res.stderr
    assert json.loads((finished / "evaluation.json").read_text())["weights"] == "model.pt"


# -- 7: diverging weights ----------------------------------------------------------------
def test_diverging_weights_are_reported_like_a_nan_loss(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    res = runner.invoke(app, ["train", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "n"),
                              "--set", "optimizer.name=sgd", "--set", "optimizer.lr=1e30"])
    one_error(res, "non-finite", "(training diverged); lower optimizer.lr")
    assert "embeddings contains NaN" not in res.output


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    from dmlkit.training import Trainer, resolve_config
    from dmlkit.training.run import build_splits

    cfg = tiny(3)
    train, _ = build_splits(cfg)
    cfg = resolve_config(cfg, train.x[0], int(train.labels.max()) + 1)

    def poison(trainer, record):  # after epoch 1's checkpoint: epoch 2 embeds NaN
        if record["epoch"] == 1:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))

    lines = []
    trainer = Trainer(cfg, train, out_dir=tmp_path / "r", log=lines.append, callbacks=(poison,))
    with pytest.raises(FloatingPointError, match=r"non-finite embeddings at epoch 2, batch 1"):
        trainer.fit()
    trainer.epoch = 1
    with pytest.raises(FloatingPointError, match=r"non-finite weights \(.*\) after epoch 2"):
        trainer._after_epoch({"epoch": 2, "loss": 0.1})
    state = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert state["epoch"] == 1 and all(v.isfinite().all() for v in state["model"].values())


# -- 8: the resume hint is a shell command -----------------------------------------------
def test_the_resume_hint_quotes_the_run_directory(tmp_path, monkeypatch):
    import dmlkit.training

    out = tmp_path / "my runs" / "a"
    lines = []

    def stop(trainer, record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(tiny(2), out, log=lines.append, callbacks=(stop,))
    assert lines[-1].endswith(f"continue with: dmlkit train --resume --out {shlex.quote(str(out))}")
    assert "'" in shlex.quote(str(out))

    def interrupt(cfg, out_dir, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dmlkit.training, "train_run", interrupt)
    res = runner.invoke(app, ["train", "--resume", "--out", str(out)])
    assert res.exit_code == 130
    assert f"resume with: dmlkit train --resume --out {shlex.quote(str(out))}" in res.stderr


# -- 9: a kill between the checkpoint and its log line, or mid-save ------------------------
def test_resume_restores_the_log_and_removes_a_killed_saves_temp_file(tmp_path):
    out = interrupted(tmp_path / "run", epochs=3, after=2)
    log = out / "train.log"
    first, second = log.read_text().splitlines()
    log.write_text(first + "\n")  # killed after epoch 2's checkpoint, before its line
    stale = out / ".checkpoint.pt.k1ll3d.tmp"
    stale.write_bytes(b"PARTIAL" * 100)
    train_run(tiny(3), out, resume=True, log=quiet)
    lines = log.read_text().splitlines()
    assert lines[:2] == [first, second] and [ln.split()[1] for ln in lines] == ["1", "2", "3"]
    assert not stale.exists()
    # a line of an epoch the checkpoint never kept (killed after the line, before the
    # checkpoint's rename: here epoch 4's) is dropped when the run resumes
    log.write_text("\n".join(lines) + "\nepoch 4 loss 0.1\n")
    train_run(tiny(4), out, resume=True, log=quiet)
    assert [ln.split()[1] for ln in log.read_text().splitlines()] == ["1", "2", "3", "4"]
