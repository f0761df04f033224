"""A tune worker killed (SIGKILL) the moment its trial is created: the trial already names
its worker, so the next worker on this machine marks it FAIL at once instead of counting a
RUNNING trial no one runs until the grace period ends."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from test_tune import load, write_config  # noqa: E402

from dmlkit.config import Config  # noqa: E402
from dmlkit.tuning import tune  # noqa: E402

# runs tune with optuna.Trial's constructor killing its own process right after the
# trial was read back from the storage: the moment between creating a trial and anything
# the worker writes next
KILLED_AT_ASK = """
import os, signal, sys
from pathlib import Path
import optuna
from dmlkit.config import Config
from dmlkit.tuning import tune

init = optuna.trial.Trial.__init__
def killing_init(self, study, trial_id):
    init(self, study, trial_id)
    os.kill(os.getpid(), signal.SIGKILL)
optuna.trial.Trial.__init__ = killing_init
tune(Config.from_yaml(Path(sys.argv[1])), 2, Path(sys.argv[2]), log=lambda m: None)
"""


def test_a_worker_killed_as_its_trial_is_created_leaves_no_running_trial(tmp_path: Path):
    path = write_config(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", KILLED_AT_ASK, str(path), str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (zombie,) = load(tmp_path).trials
    assert zombie.state.name == "RUNNING" and "worker" in zombie.user_attrs
    lines: list[str] = []
    tune(Config.from_yaml(path), 2, out, resume=True, log=lines.append)
    assert "marked FAIL the running trial(s) [0] of workers that are gone" in lines, lines
    study = load(tmp_path)
    assert study.trials[0].state.name == "FAIL"
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 2
