"""Workers of a shared study: who runs a trial, which trials count, which are stale.

Every trial records its worker (``host:pid``) and, while it runs, a heartbeat in the
storage. A RUNNING trial whose worker is gone (a process of this machine that no longer
exists, or a heartbeat older than the grace period) is a zombie left by a killed worker:
it is marked FAIL and does not count toward the study's size.
"""

from __future__ import annotations

import datetime
import os
import socket
import threading
from collections.abc import Callable
from typing import Any


def require_optuna() -> Any:
    """Import Optuna, or say how to install it."""
    try:
        import optuna
    except ImportError as err:
        raise ImportError(
            "dmlkit tune needs Optuna and SQLAlchemy: pip install 'dmlkit[tune]'"
        ) from err
    return optuna


def worker_id() -> str:
    """``host:pid`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def ask_as_worker(study: Any) -> Any:
    """``study.ask()`` whose trial carries this worker (``user_attrs["worker"]``) from the
    write that creates it: a worker killed right after asking leaves no RUNNING trial
    without its worker, which no one could tell from a live one until the grace period."""
    optuna = require_optuna()
    if not all(hasattr(study, a) for a in ("_storage", "_study_id", "_pop_waiting_trial_id")):
        trial = study.ask()  # (an Optuna without these: its worker in a second write)
        trial.set_user_attr("worker", worker_id())
        return trial
    local = getattr(study, "_thread_local", None)
    if local is not None:  # (what ask() does: the sampler reads the storage afresh)
        local.cached_all_trials = None
    waiting = study._pop_waiting_trial_id()  # a trial enqueued by the Python API first
    if waiting is not None:  # (already created: its worker follows in a second write)
        trial = optuna.Trial(study, waiting)
        trial.set_user_attr("worker", worker_id())
        return trial
    template = optuna.trial.FrozenTrial(
        number=0, state=optuna.trial.TrialState.RUNNING, value=None, values=None,
        datetime_start=datetime.datetime.now(), datetime_complete=None, params={},
        distributions={}, user_attrs={"worker": worker_id()}, system_attrs={},
        intermediate_values={}, trial_id=0,
    )  # fmt: skip
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    return optuna.Trial(study, trial_id)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def fail_stale_trials(study: Any, grace_seconds: float, log: Callable[[str], None]) -> list[int]:
    """Mark FAIL the RUNNING trials whose worker is gone; return their numbers.

    A worker on this machine is gone when its process is; one elsewhere when its
    heartbeat (or, before the first one, the trial's start) is older than
    ``grace_seconds``.
    """
    optuna = require_optuna()
    running = optuna.trial.TrialState.RUNNING
    host = socket.gethostname()
    now = datetime.datetime.now()
    stale = []
    for trial in study.get_trials(deepcopy=False, states=(running,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host == host and pid.isdigit():
            gone = not _alive(int(pid))
        else:  # no worker recorded yet (killed right after asking), or another machine
            started = trial.datetime_start or now
            gone = "worker" not in trial.user_attrs and (
                (now - started).total_seconds() > grace_seconds
            )
        if gone:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            stale.append(trial.number)
    before = {t.number for t in study.get_trials(deepcopy=False, states=(running,))}
    optuna.storages.fail_stale_trials(study)  # silent heartbeats, any machine
    after = {t.number for t in study.get_trials(deepcopy=False, states=(running,))}
    # only those now FAIL by these marks: a trial that left RUNNING meanwhile because
    # its live worker finished it (or failed it on its own error) was no stale one
    failed = {t.number for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.FAIL,)) if "error" not in t.user_attrs}
    stale = sorted(n for n in {*stale, *(before - after)} if n in failed)
    if stale:
        log(f"marked FAIL the running trial(s) {stale} of workers that are gone")
    return stale


def counts_toward_total(trial: Any) -> bool:
    """Whether a trial counts toward the study's size: finished ones, running ones, and
    failures of the config itself (its ``error``); not those of killed workers, nor the
    surplus trials of workers that asked at the same time."""
    state = trial.state.name
    return state in ("COMPLETE", "PRUNED", "RUNNING") or (
        state == "FAIL" and "error" in trial.user_attrs
    )


def state_counts(study: Any) -> dict[str, int]:
    """Number of trials in each state."""
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


class Heartbeat:
    """Records a running trial's heartbeat every ``interval`` seconds, in a thread."""

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(storage, trial_id, interval), daemon=True
        )
        self._thread.start()

    def _beat(self, storage: Any, trial_id: int, interval: float) -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if self._stop.wait(interval):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


__all__ = [
    "Heartbeat",
    "counts_toward_total",
    "fail_stale_trials",
    "require_optuna",
    "state_counts",
    "worker_id",
]
