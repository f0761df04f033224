"""Marking the trials of gone workers FAIL names only those it failed: a live worker's
trial that finishes during the check is not reported as a gone worker's."""

from __future__ import annotations

import os

import pytest

optuna = pytest.importorskip("optuna")


def _study(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s",
                               direction="maximize")


def test_a_trial_finished_by_its_live_worker_during_the_check_is_not_reported(
        tmp_path, monkeypatch):
    from dmlkit.tuning.workers import fail_stale_trials, worker_id

    study = _study(tmp_path)
    trial = study.ask()
    trial.set_user_attr("worker", worker_id())  # this (live) process's trial
    real = optuna.storages.fail_stale_trials

    def finishing(s):  # the live worker finishes it meanwhile
        study.tell(trial, 0.5)
        real(s)

    monkeypatch.setattr(optuna.storages, "fail_stale_trials", finishing)
    said = []
    assert fail_stale_trials(study, 120, said.append) == []
    assert said == [] and study.trials[0].state.name == "COMPLETE"


def test_a_gone_workers_trial_is_failed_and_reported(tmp_path):
    from dmlkit.tuning.workers import fail_stale_trials

    study = _study(tmp_path)
    trial = study.ask()
    pid = 2**22 + 12345  # (beyond pid_max: no such process)
    assert not os.path.exists(f"/proc/{pid}")
    trial.set_user_attr("worker", f"{__import__('socket').gethostname()}:{pid}")
    said = []
    assert fail_stale_trials(study, 120, said.append) == [0]
    assert "[0]" in said[0] and study.trials[0].state.name == "FAIL"


# -- one-line storage errors --------------------------------------------------------------
def _tune(tmp_path, *storage):
    from typer.testing import CliRunner

    from dmlkit.cli.main import app

    return CliRunner().invoke(app, ["tune", "configs/digits_unseen_tune.yaml", "--trials",
                                    "1", "--out", str(tmp_path / "o"), *storage])


def test_a_storage_that_is_not_a_database_is_one_line(tmp_path):
    (tmp_path / "notdb.txt").write_text("not a db\n")
    res = _tune(tmp_path, "--storage", f"sqlite:///{tmp_path / 'notdb.txt'}")
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(": file is not a database"), res.output


def test_a_storage_without_its_driver_names_the_package(tmp_path):
    pytest.importorskip("sqlalchemy")
    if __import__("importlib").util.find_spec("psycopg2") is not None:
        pytest.skip("psycopg2 is installed")
    res = _tune(tmp_path, "--storage", "postgresql://u:secret@127.0.0.1:1/db")
    assert res.exit_code == 1 and "pip install psycopg2-binary" in res.output, res.output
    assert "secret" not in res.output


def test_an_empty_storage_is_refused(tmp_path):
    res = _tune(tmp_path, "--storage", "")
    assert res.exit_code == 1 and "--storage is empty" in res.output, res.output
    assert not (tmp_path / "o").exists()
