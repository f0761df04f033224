"""Edges of the training API: a Trainer resume with changed settings, the advice after a
diverged run, the progress bar asked for in a log file, the schedule's documented ends."""

from __future__ import annotations

import copy
import io
import math
import sys

import pytest
import torch
import yaml
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.config.schema import Config, ScheduleConfig
from dmlkit.training import Trainer, resolve_config, train_run
from dmlkit.training.checkpoint import load_checkpoint
from dmlkit.training.optim import lr_factor
from dmlkit.training.run import build_splits

TINY = """
name: tiny
data: {name: digits, max_per_class: 10, max_heldout_per_class: 10}
model: {name: mlp, dim: 8, hidden: [16]}
loss: {name: triplet_margin, margin: 0.2}
sampler: {name: m_per_class, m: 2, batch_size: 10}
optimizer: {name: adam, lr: 0.003}
training: {epochs: 1, num_threads: 1, progress: false}
"""


def quiet(*_args):
    pass


def tiny(epochs: int = 1) -> Config:
    cfg = Config.from_dict(yaml.safe_load(TINY))
    cfg.training.epochs = epochs
    return cfg


def resolved(epochs: int = 1):
    cfg = tiny(epochs)
    train, _ = build_splits(cfg)
    return resolve_config(cfg, train.x[0], int(train.labels.max()) + 1), train


# -- 1: Trainer.fit(resume=True) refuses other settings, as train_run does ---------------
def test_trainer_resume_with_another_rate_is_refused(tmp_path):
    cfg, train = resolved(1)
    Trainer(cfg, train, out_dir=tmp_path, log=None).fit()
    changed = copy.deepcopy(cfg)
    changed.training.epochs, changed.optimizer.lr = 2, 0.5
    with pytest.raises(ValueError, match=r"resuming .* with other settings than its "
                                         r"checkpoint\.pt trained with: optimizer\.lr: "
                                         r"0\.003 -> 0\.5"):
        Trainer(changed, train, out_dir=tmp_path, log=None).fit(resume=True)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1  # nothing trained
    more = copy.deepcopy(cfg)
    more.training.epochs = 2  # more epochs (a setting a resume may change): resumed
    resumed = Trainer(more, train, out_dir=tmp_path, log=None)
    history = resumed.fit(resume=True)
    assert [r["epoch"] for r in history] == [1, 2]
    steps = len(resumed.sampler)  # epoch 2 starts at the configured rate's curve
    assert history[1]["lr"] == pytest.approx(0.003 * lr_factor(cfg.schedule, steps, steps, 2))


def test_train_run_resume_checks_once_and_its_missing_config_case(tmp_path, monkeypatch):
    import dmlkit.training.run_dir as run_dir

    out = tmp_path / "r"
    train_run(tiny(1), out, log=quiet)
    calls = []
    real = run_dir.check_trained_config
    monkeypatch.setattr(run_dir, "check_trained_config",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    import dmlkit.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "check_trained_config",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    train_run(tiny(2), out, resume=True, log=quiet)  # checked by check_resume, not again
    assert calls == []
    (out / "config.yaml").unlink()
    other = tiny(3)
    other.optimizer.lr = 0.5
    with pytest.raises(ValueError, match=r"\(its config\.yaml is missing\) with other "
                                         r"settings .*optimizer\.lr: 0\.003 -> 0\.5"):
        train_run(other, out, resume=True, log=quiet)


# -- 2: a diverged run is told to train anew, not to resume -----------------------------
def test_a_diverged_run_is_not_offered_a_resume(tmp_path):
    cfg, train = resolved(3)

    def poison(trainer, record):  # after epoch 1's checkpoint: epoch 2 embeds NaN
        if record["epoch"] == 1:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))

    lines = []
    trainer = Trainer(cfg, train, out_dir=tmp_path / "r", log=lines.append,
                      callbacks=(poison,))
    with pytest.raises(FloatingPointError, match=r"lower optimizer\.lr in a new run "
                                                 r"\(another --out"):
        trainer.fit()
    assert "checkpoint of epoch 1 kept at" in lines[-1]
    assert "--resume" not in lines[-1] and "continue with" not in lines[-1]
    assert lines[-1].endswith("a resume (same settings) would diverge again: train a new run")

    def stop(trainer, record):  # an interrupt: the resume is still offered
        raise KeyboardInterrupt

    lines.clear()
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, train, out_dir=tmp_path / "i", log=lines.append,
                callbacks=(stop,)).fit()
    assert "continue with: dmlkit train --resume --out" in lines[-1]


# -- 3: --progress shows a (throttled) bar where stderr is not a terminal ---------------
def test_forced_progress_bar_in_a_log_file(tmp_path, monkeypatch):
    from dmlkit.training.trainer import FORCE_PROGRESS

    cfg, train = resolved(2)
    cfg.training.progress = True
    err = io.StringIO()  # (not a terminal)
    monkeypatch.setattr(sys, "stderr", err)
    Trainer(cfg, train, log=None).fit()
    assert "epoch 1/2" not in err.getvalue()  # the default: terminals only
    token = FORCE_PROGRESS.set(True)
    try:
        Trainer(cfg, train, log=None).fit()
    finally:
        FORCE_PROGRESS.reset(token)
    text = err.getvalue()
    assert "epoch 1/2" in text and "epoch 2/2" in text
    # not every batch: the start and the end of each (fast) epoch
    assert text.count("\r") <= 4 and text.count("\n") == 2
    cfg.training.progress = False  # the config (or --no-progress) still hides it
    token = FORCE_PROGRESS.set(True)
    try:
        Trainer(cfg, train, log=None).fit()
    finally:
        FORCE_PROGRESS.reset(token)
    assert err.getvalue() == text


def test_cli_progress_flag_shows_the_bar_without_a_terminal(tmp_path):
    (tmp_path / "c.yaml").write_text(TINY)
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(tmp_path / "c.yaml"), "--out",
                              str(tmp_path / "p"), "--progress"])
    assert res.exit_code == 0, res.output
    assert "epoch 1/1" in res.stderr and "100%" in res.stderr
    res = runner.invoke(app, ["train", str(tmp_path / "c.yaml"), "--out",
                              str(tmp_path / "d"), "--set", "training.progress=true"])
    assert res.exit_code == 0, res.output
    assert "epoch 1/1" not in res.stderr  # the config's setting: terminals only
    res = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert "not one (a log file" in " ".join(res.output.split())


# -- 4: the schedule's ends, as documented ----------------------------------------------
def test_cosine_reaches_its_floor_one_step_after_the_last():
    cfg = ScheduleConfig(name="cosine", min_lr_ratio=0.1, warmup_epochs=1)
    spe, epochs = 5, 3
    total = spe * epochs
    assert lr_factor(cfg, spe - 1, spe, epochs) == 1.0  # the warmup's last step
    last = lr_factor(cfg, total - 1, spe, epochs)
    expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (total - 1 - spe) / (total - spe)))
    assert last == pytest.approx(expected) and last > 0.1
    assert lr_factor(cfg, total, spe, epochs) == pytest.approx(0.1)
    assert "one step after the last" in lr_factor.__doc__
    assert "one step after the last" in " ".join(ScheduleConfig.__doc__.split())


def test_step_decay_counts_from_step_zero_through_the_warmup():
    cfg = ScheduleConfig(name="step", step_size=1, gamma=0.5, warmup_epochs=2)
    spe = 4
    assert lr_factor(cfg, 2 * spe - 1, spe, 5) == 1.0  # the warmup's last step
    assert lr_factor(cfg, 2 * spe, spe, 5) == 0.25  # two decays passed during the warmup
    for doc in (lr_factor.__doc__, ScheduleConfig.__doc__):
        assert "warmup and decay overlap" in " ".join(doc.split())
