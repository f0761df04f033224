"""dmlkit tune: a study in SQLite shared by concurrent workers, resumed after kill -9,
whose best config reproduces its score."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
sqlalchemy = pytest.importorskip("sqlalchemy")

from dmlkit.config import Config  # noqa: E402
from dmlkit.training import train_run  # noqa: E402
from dmlkit.training.cross_validation import cross_validate  # noqa: E402
from dmlkit.tuning import tune  # noqa: E402
from dmlkit.tuning.study import open_storage, open_study  # noqa: E402
from dmlkit.tuning.workers import counts_toward_total  # noqa: E402

CONFIG = """
name: tiny
data: {{name: digits, split: classes, train_classes: [0, 1, 2, 3, 4, 5],
        test_classes: [6, 7, 8, 9], max_per_class: 24, max_heldout_per_class: 10}}
model: {{name: small_cnn, in_channels: 1, image_size: 8, dim: 8, width: 4}}
loss: {{name: triplet_margin, margin: 0.1}}
sampler: {{name: m_per_class, m: 6, batch_size: 12}}
training: {{epochs: {epochs}, seed: 0, num_threads: 1, progress: false}}
tune:
  folds: 2
  startup_trials: {startup}
  warmup_epochs: 0
  space:
    loss:
      choices: [triplet_margin, multi_similarity]
    loss.margin: {{low: 0.05, high: 0.3, when: {{loss.name: triplet_margin}}}}
    optimizer.lr: {{choices: [0.003, 1.0e-7]}}
    model.dim: {{choices: [8, 16]}}
"""


def write_config(tmp_path: Path, epochs: int = 1, startup: int = 2) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(CONFIG.format(epochs=epochs, startup=startup))
    return path


def load(tmp_path: Path, name: str = "tiny") -> object:
    storage = open_storage(f"sqlite:///{tmp_path / 'out' / 'study.db'}", 30)
    return optuna.load_study(study_name=name, storage=storage)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dmlkit.cli.main", *args]


def test_best_config_reproduces_its_score_and_trains(tmp_path: Path) -> None:
    config = Config.from_yaml(write_config(tmp_path, epochs=2))
    lines: list[str] = []
    summary = tune(config, 3, tmp_path / "out", log=lines.append)
    study = load(tmp_path)
    assert len(study.trials) == 3 and summary.counts.get("RUNNING", 0) == 0
    for trial in study.trials:  # the per-epoch curve the pruner sees is in the study
        if trial.state.name == "COMPLETE":
            assert sorted(trial.intermediate_values) == [1, 2]
    best = Config.from_yaml(tmp_path / "out" / "best.yaml")
    assert best.tune is not None and best.tune.space == {}
    again = cross_validate(best, best.tune.folds, seed=best.tune.seed)
    assert again.score == summary.best_value == study.best_value
    assert any(line.startswith("trial 0 epoch 1/2: fold MAP@R") for line in lines)
    run = train_run(best, tmp_path / "run", log=lambda _m: None)  # dmlkit train runs it
    assert 0.0 < run.metrics["map_at_r"] <= 1.0
    with pytest.raises(FileExistsError, match="already exists .* --resume"):
        tune(config, 4, tmp_path / "out", log=lines.append)
    changed = Config.from_yaml(write_config(tmp_path, epochs=1))
    with pytest.raises(ValueError, match="started from a different config"):
        tune(changed, 4, tmp_path / "out", resume=True, log=lines.append)
    tune(config, 4, tmp_path / "out", resume=True, log=lines.append)  # one more trial
    assert len(load(tmp_path).trials) == 4


def test_the_median_pruner_stops_a_poor_curve(tmp_path: Path) -> None:
    config = Config.from_yaml(write_config(tmp_path, epochs=2, startup=1))
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", 30)
    study, _ = open_study(config, storage, "tiny", resume=False)
    good = {"loss": "multi_similarity", "optimizer.lr": 0.003, "model.dim": 16}
    study.enqueue_trial(good)
    study.enqueue_trial({**good, "optimizer.lr": 1e-7})  # hardly learns: below the median
    tune(config, 2, tmp_path, resume=True, log=lambda _m: None)
    states = [t.state.name for t in study.get_trials()]
    assert states == ["COMPLETE", "PRUNED"]
    assert list(study.trials[1].intermediate_values) == [1]  # stopped after its first epoch


def test_two_workers_share_one_sqlite_study(tmp_path: Path) -> None:
    path = write_config(tmp_path, epochs=1)
    args = cli("tune", str(path), "--trials", "6", "--out", str(tmp_path / "out"), "--resume")
    workers = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]  # fmt: skip
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = load(tmp_path)
    counted = [t for t in study.trials if counts_toward_total(t)]
    assert len(counted) == 6 and not [t for t in study.trials if t.state.name == "RUNNING"]
    pids = {t.user_attrs["worker"] for t in counted}
    assert len(pids) == 2, "both workers ran trials"
    # every trial a worker started is in the study, finished, under its number
    reported = sorted(
        int(line.split()[1])
        for out in outputs for line in out.splitlines()
        if line.startswith("trial ") and (" finished:" in line or " pruned " in line
                                          or " failed:" in line)
    )  # fmt: skip
    assert reported == sorted(t.number for t in counted)
    assert sum("created study" in out for out in outputs) == 1


def test_resume_after_kill_9_fails_the_zombie_and_completes_the_count(tmp_path: Path) -> None:
    path = write_config(tmp_path, epochs=10)  # trials long enough to be caught mid-run
    out = tmp_path / "out"
    worker = subprocess.Popen(
        cli("tune", str(path), "--trials", "4", "--out", str(out)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    killed = None
    deadline = time.time() + 120
    try:
        while time.time() < deadline and worker.poll() is None:
            time.sleep(0.05)
            if not (out / "study.db").is_file():  # the worker has not started the study
                continue
            try:
                trials = load(tmp_path).trials
            except (KeyError, optuna.exceptions.StorageInternalError,
                    sqlalchemy.exc.OperationalError):  # (nor created it yet)
                continue
            done = [t for t in trials if t.state.name != "RUNNING"]
            running = [t for t in trials if t.state.name == "RUNNING"]
            if done and running:  # mid-study, mid-trial
                os.kill(worker.pid, signal.SIGKILL)
                killed = -1
                break
    finally:
        worker.wait(timeout=60)
    assert killed is not None, "the worker finished before it could be killed"
    assert worker.returncode == -signal.SIGKILL
    # the trial running at the moment of the kill (the one seen before it may have
    # finished in between): what kill -9 leaves behind
    # (on a loaded machine the trial seen running may end between the look and the
    # kill, before the next one starts: then nothing is left running)
    zombies = [t.number for t in load(tmp_path).trials if t.state.name == "RUNNING"]
    assert len(zombies) <= 1, zombies
    lines: list[str] = []  # this test's process is the next worker
    tune(Config.from_yaml(path), 4, out, resume=True, log=lines.append)
    study = load(tmp_path)
    if zombies:
        killed = zombies[0]
        assert f"marked FAIL the running trial(s) [{killed}] of workers that are gone" in lines
        assert study.trials[killed].state.name == "FAIL"
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    assert len([t for t in study.trials if counts_toward_total(t)]) == 4
    assert len(study.trials) == 4 + len(zombies)  # 4 counted + the killed one
    assert (out / "best.yaml").is_file()


def test_too_many_folds_fail_before_any_trial(tmp_path: Path) -> None:
    text = write_config(tmp_path).read_text().replace("folds: 2", "folds: 4")
    config = Config.from_yaml(text)
    with pytest.raises(ValueError, match="4 class folds of 6 classes"):
        tune(config, 2, tmp_path / "out", log=lambda _m: None)
    assert not (tmp_path / "out" / "study.db").exists()
    text = write_config(tmp_path).read_text().replace("model.dim:", "training.epoch:")
    with pytest.raises(ValueError, match="'training.epoch': training has no key 'epoch'"):
        tune(Config.from_yaml(text), 2, tmp_path / "out", log=lambda _m: None)


def test_warmup_epochs_are_never_pruned(tmp_path: Path) -> None:
    from dmlkit.tuning.study import open_study

    config = Config.from_yaml(write_config(tmp_path, startup=2))
    config.tune.warmup_epochs = 1  # epoch 1 is never pruned
    storage = open_storage(f"sqlite:///{tmp_path / 'w.db'}", 30)
    study, _ = open_study(config, storage, "w", resume=False)
    for value in (0.9, 0.8, 0.7):  # three finished trials set the medians
        trial = study.ask()
        trial.report(value, 1)
        trial.report(value, 2)
        study.tell(trial, value)
    low = study.ask()
    low.report(0.1, 1)  # far below the median, at the one warm-up epoch
    assert not low.should_prune()
    low.report(0.1, 2)
    assert low.should_prune()


def test_a_storage_url_that_cannot_open_is_an_error_line(tmp_path: Path) -> None:
    out = subprocess.run(cli("tune", str(write_config(tmp_path)), "--trials", "1", "--out",
                             str(tmp_path / "o"), "--storage", "foo://bar"),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and out.stderr.startswith("error: cannot open the study storage")


def test_crossval_takes_set_overrides_and_explains_a_batch_too_wide_for_a_fold(
        tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dmlkit.cli.main import app

    path = write_config(tmp_path)
    wide = CliRunner().invoke(app, ["crossval", str(path), "--folds", "2",
                                    "--set", "sampler.batch_size=24", "--set", "sampler.m=4"])
    assert wide.exit_code != 0 and "a fold trains on 3 of the 6 training classes" in wide.output
    ok = CliRunner().invoke(app, ["crossval", str(path), "--folds", "2",
                                  "--set", "training.epochs=1"])
    assert ok.exit_code == 0 and "mean MAP@R over 2 class-disjoint folds" in ok.output
