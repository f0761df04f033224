"""``dmlkit tune``: an Optuna study over a config's ``tune.space``, in an RDB many workers share.

Each trial samples a config (:func:`~dmlkit.tuning.space.trial_config`), scores it by
:func:`~dmlkit.training.cross_validation.cross_validate` (mean MAP@R over class-disjoint
folds of the *training* classes; no test class is trained or scored), reports the
per-epoch mean so the pruner (:mod:`~dmlkit.tuning.pruning`) can stop a poor trial
early, and ends COMPLETE, PRUNED or FAIL (an invalid or diverging config, with its
``error``). ``trials`` is the size of the whole study: workers started on the same
storage and study share the count, and a worker that was killed leaves a RUNNING trial
that the next worker (or ``resume``) marks FAIL without counting it. After every
completed trial the best config is written as a YAML that ``dmlkit train`` runs and
``dmlkit crossval`` re-scores.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmlkit.config.schema import Config
from dmlkit.config.tune import COMPONENTS
from dmlkit.training.class_rows import run_class_ids
from dmlkit.tuning.best import (
    absolute_data_paths,
    absolute_paths,
    best_of,
    check_best_owner,
    safe_storage,
    write_best,
)
from dmlkit.tuning.interrupt import SigintGuard
from dmlkit.tuning.space import check_parts, check_space, trial_config
from dmlkit.tuning.storage import absolute_storage, check_storage, sqlite_file
from dmlkit.tuning.study_name import default_out_dir, study_name_of
from dmlkit.tuning.workers import (
    Heartbeat,
    ask_as_worker,
    counts_toward_total,
    fail_stale_trials,
    require_optuna,
    state_counts,
    worker_id,
)

STUDY_FILE = "study.db"
_CREDENTIALS = re.compile(r"(\b[A-Za-z][\w+.-]*://[^\s/@:]*:)[^\s@]*@")
_FINISHED = ("COMPLETE", "PRUNED", "FAIL")


@dataclass
class TuneSummary:
    """Where a worker left the study."""

    study_name: str
    storage: str
    counts: dict[str, int]
    best_value: float | None
    best_trial: int | None
    best_config: Path | None


def storage_url(config: Config, out_dir: Path) -> str:
    """``tune.storage``, else a SQLite file ``study.db`` in ``out_dir``."""
    if config.tune is not None and config.tune.storage:
        return config.tune.storage
    return f"sqlite:///{(out_dir / STUDY_FILE).resolve()}"


def open_storage(url: str, heartbeat_seconds: int) -> Any:
    """An RDB storage with heartbeats; SQLite waits for locks instead of failing at once."""
    optuna = require_optuna()
    from sqlalchemy.exc import IntegrityError, OperationalError

    kwargs = {"connect_args": {"timeout": 300}} if url.startswith("sqlite") else {}
    for attempt in range(10):  # workers starting together race to create the tables
        try:
            with warnings.catch_warnings():  # heartbeats are flagged experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=kwargs,
                    heartbeat_interval=heartbeat_seconds, grace_period=4 * heartbeat_seconds,
                )  # fmt: skip
        except (OperationalError, IntegrityError):  # another worker made them first
            if attempt == 9:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def fingerprint(config: Config) -> str:
    """The config as a study remembers it (without where it is stored or shown)."""
    raw = config.to_dict()
    raw["training"].pop("progress", None)
    for key in ("storage", "study_name"):
        raw.get("tune", {}).pop(key, None)
    return json.dumps(raw, sort_keys=True)


def open_study(config: Config, storage: Any, study_name: str, resume: bool) -> tuple[Any, bool]:
    """Create the study, or join it with ``resume``; ``(study, created)``. With ``resume``
    a study not there yet is created (workers started together all pass it), and
    ``created`` says so: :func:`tune` then logs that no such study was found."""
    optuna = require_optuna()
    tune = config.tune
    if tune is None:
        raise ValueError("the config has no tune: section")
    from dmlkit.tuning.pruning import make_pruner

    pruner = make_pruner(tune.pruner, tune.objective, tune.startup_trials, tune.warmup_epochs)

    def sampler(seed: int) -> Any:
        if tune.algorithm == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(n_startup_trials=tune.startup_trials, seed=seed)

    try:  # the first worker seeds the search with tune.seed; others with their own pid
        study = optuna.create_study(
            storage=storage, study_name=study_name, direction="maximize",
            sampler=sampler(tune.seed), pruner=pruner,
        )  # fmt: skip
        study.set_user_attr("config", fingerprint(config))
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        if not resume:
            raise FileExistsError(
                f"study {study_name!r} already exists in {_safe(storage)}; continue it or join "
                "it as another worker with --resume, or name another study (--study, --out)"
            ) from None
    import numpy as np

    seed = int(np.random.SeedSequence([tune.seed, os.getpid()]).generate_state(1)[0])
    study = optuna.load_study(
        study_name=study_name, storage=storage, sampler=sampler(seed), pruner=pruner
    )
    saved = _saved_fingerprint(study)
    changes = _config_changes(saved, config) if saved is not None else []
    if changes:
        raise ValueError(
            f"study {study_name!r} was started from a different config: "
            f"{'; '.join(changes)} (study -> this worker's); resume it with the same YAML "
            "(relative data paths are read from the working directory), or name another "
            "study (--study, --out)"
        )
    return study, False


#: how long a worker joining a study with no saved config and no trial waits for it
FINGERPRINT_WAIT_S = 10.0


def _saved_fingerprint(study: Any) -> str | None:
    """The study's saved :func:`fingerprint`. Its creator saves it just after creating
    the study: one found without it and without trials is read again until it appears,
    for at most :data:`FINGERPRINT_WAIT_S` (a creator that died in between leaves none)."""
    deadline = time.monotonic() + FINGERPRINT_WAIT_S
    while True:
        saved = study.user_attrs.get("config")
        if saved is not None or time.monotonic() > deadline or study.get_trials(
                deepcopy=False):
            return saved
        time.sleep(0.05)


def _config_changes(saved: str, config: Config) -> list[str]:
    """``["section.key: saved -> given", ...]`` where a study's saved :func:`fingerprint`
    differs from ``config``'s (whose data paths are absolute; a study saved before they
    were keeps them as given), as a refused resume lists them; empty when they match."""
    raw = json.loads(saved)
    if isinstance(raw.get("data"), dict):
        raw["data"] = absolute_paths(raw["data"])
    return _dict_changes(raw, json.loads(fingerprint(config)))


_UNSET = object()  # a key one of two configs does not have


def _dict_changes(saved: Any, given: Any, prefix: str = "") -> list[str]:
    """The leaves (dotted keys) where two nested dicts differ, ``key: saved -> given``."""
    if isinstance(saved, dict) and isinstance(given, dict):
        out: list[str] = []
        for key in dict.fromkeys([*saved, *given]):
            out += _dict_changes(saved.get(key, _UNSET), given.get(key, _UNSET),
                                 f"{prefix}{key}.")
        return out
    if saved is not _UNSET and given is not _UNSET and (
            json.dumps(saved, sort_keys=True) == json.dumps(given, sort_keys=True)):
        return []  # (as the whole fingerprints compare: 1 and 1.0, or True, differ)

    def shown(value: Any) -> str:
        return "(not set)" if value is _UNSET else repr(value)

    return [f"{prefix.rstrip('.')}: {shown(saved)} -> {shown(given)}"]


def _safe(storage: Any) -> str:
    return safe_storage(getattr(storage, "url", str(storage)))  # no passwords in messages


def redact(text: str, url: str | None = None) -> str:
    """``text`` (an error message) without the user and password of ``url`` or of any
    ``scheme://user:password@host`` in it."""
    if url:
        text = text.replace(url, safe_storage(url))
    return _CREDENTIALS.sub(r"\1***@", text)


def tune(
    config: Config,
    trials: int,
    out_dir: str | Path,
    *,
    resume: bool = False,
    storage: str | None = None,
    study_name: str | None = None,
    log: Callable[[str], None] = print,
) -> TuneSummary:
    """Run one worker of the study until it holds ``trials`` counted trials.

    Parameters
    ----------
    config : Config
        With a ``tune`` section whose ``space`` is searched.
    trials : int
        Size of the whole study (all workers, all restarts).
    out_dir : path
        Where ``best.yaml``, ``best.json`` and (by default) ``study.db`` go.
    resume : bool
        Continue the study, or join it as one more worker; without it an existing
        study is an error.
    storage, study_name : str, optional
        Override ``tune.storage`` (any SQLAlchemy URL; a SQLite file is recorded by its
        absolute path, in-memory SQLite is refused) and ``tune.study_name``.
    log : callable
        Receives progress lines.

    Raises
    ------
    KeyboardInterrupt
        On Ctrl-C (SIGINT, :class:`~dmlkit.tuning.interrupt.SigintGuard`): the running
        trial ends FAIL and does not count; ``resume`` goes on with the study.
    """
    if config.tune is None or not config.tune.space:
        raise ValueError("the config has no tune: section with a space to search")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials must be an int >= 1, got {trials!r}")
    # Ctrl-C: the running trial fails, the worker stops (one while optuna is imported:
    # raised once it is, not in the middle of the import)
    with SigintGuard() as guard:
        try:
            optuna = require_optuna()
            config = absolute_data_paths(config)  # trials and best.yaml read these anywhere
            out_dir = Path(out_dir)
            url = storage or storage_url(config, out_dir)
            check_storage(url)  # (in-memory SQLite: a study no one else sees, gone at the end)
            url = absolute_storage(url)  # a SQLite file by its absolute path, from anywhere
            if config.tune is not None and config.tune.storage:
                config.tune.storage = absolute_storage(config.tune.storage)
            name = study_name_of(config, study_name)
            check_best_owner(out_dir, name, url)  # another study's best files: refused
            with guard.interruptible():  # (reads the data, builds the parts: no storage)
                _check_folds(config)  # before out_dir is made: a refused study leaves
            guard.check()  # (nothing behind, nor one a Ctrl-C during an import stopped)
            db = sqlite_file(url)  # a SQLite file's folder is made as out_dir is
            folders = [out_dir] if db is None else [out_dir, db.parent]
            made = [d for f in folders for d in (f.absolute(), *f.absolute().parents)
                    if not d.exists()]
            out_dir.mkdir(parents=True, exist_ok=True)
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            try:
                folders[-1].mkdir(parents=True, exist_ok=True)
                with warnings.catch_warnings():  # heartbeats outside Study.optimize: by design
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    warnings.filterwarnings("ignore", message="Heartbeat of storage")
                    return _tune(config, trials, out_dir, url, name, resume, log, guard)
            except BaseException:  # e.g. a storage that cannot be opened: no empty --out
                for folder in sorted(set(made), key=lambda d: -len(d.parts)):  # innermost
                    if folder.is_dir() and not any(folder.iterdir()):
                        folder.rmdir()
                raise
        except Exception as err:  # (e.g. a RuntimeError of an import Ctrl-C broke)
            if guard.requested:
                raise KeyboardInterrupt from err
            raise


def _tune(config: Config, trials: int, out_dir: Path, url: str, name: str, resume: bool,
          log: Callable, guard: SigintGuard) -> TuneSummary:
    optuna = require_optuna()
    from dmlkit.training.cross_validation import cross_validate

    tc = config.tune
    if tc is None:
        raise ValueError("the config has no tune: section")
    rdb = open_storage(url, tc.heartbeat_seconds)
    study, created = open_study(config, rdb, name, resume)
    if created and resume:  # (a typo of --study or --storage starts a new study too)
        log(f"no study {name!r} in {_safe(rdb)} to resume: created study {name!r} "
            f"(worker {worker_id()})")
    else:
        verb = "created" if created else "joined"
        log(f"{verb} study {name!r} in {_safe(rdb)} (worker {worker_id()})")
    fail_stale_trials(study, 4 * tc.heartbeat_seconds, log)
    states, ran = optuna.trial.TrialState, False
    while True:
        guard.check()  # (between storage operations)
        held = sum(map(counts_toward_total, study.get_trials(deepcopy=False)))
        if held >= trials:
            if not ran:  # (a --resume of a study already that large: say why)
                log(_FULL.format(name=name, held=held, trials=trials, more=held + trials))
            break
        trial = ask_as_worker(study)
        earlier = [
            t for t in study.get_trials(deepcopy=False)
            if t.number < trial.number and counts_toward_total(t)
        ]  # fmt: skip
        if len(earlier) >= trials:  # another worker took the last place first
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=states.FAIL)
            break
        _run_trial(study, trial, config, trials, rdb, log, cross_validate, guard)
        ran = True
        write_best(study, config, out_dir, url)
        fail_stale_trials(study, 4 * tc.heartbeat_seconds, log)
    best_path = write_best(study, config, out_dir, url)
    best = best_of(study.get_trials(deepcopy=False))
    return TuneSummary(
        name, _safe(rdb), state_counts(study),
        None if best is None else best.value, None if best is None else best.number, best_path,
    )  # fmt: skip


_FULL = ("study {name!r} already holds {held} counted trials (finished, or running in "
         "another worker), at least the {trials} asked for: no trial was run (trials is the "
         "size of the whole study); to run more, ask for more, e.g. --trials {more}")


def _check_folds(config: Config) -> None:
    """Fail before the first trial when the training classes cannot make the folds."""
    from dmlkit.data.class_folds import class_folds
    from dmlkit.data.splits import select_classes
    from dmlkit.training.cross_validation import training_part
    from dmlkit.tuning.batches import check_batches

    if config.tune is None:
        raise ValueError("the config has no tune: section")
    if config.data.kind != "labels":
        raise ValueError(f"dmlkit tune needs class labels; data.kind is {config.data.kind!r}")
    raw = config.to_dict()
    for path in config.tune.space:  # section keys first (the clearest message)
        section, _, key = path.partition(".")
        if key and section not in COMPONENTS and key not in raw[section]:
            raise ValueError(
                f"tune.space path {path!r}: {section} has no key {key!r}; "
                f"allowed: {sorted(raw[section])}"
            )
    check_space(config)  # component keys, types and names: here, not trial after trial
    train = training_part(config)  # the held-out part is never read
    # the model, loss and miner constructors' own checks (model.dropout 1, model.dim 0)
    # (sized as the folds size them: one class row per distinct label)
    check_parts(config, train.x[0], run_class_ids(train.labels, None)[1])
    folds = class_folds(train.classes, config.tune.folds, config.tune.seed,
                        class_names=train.class_names)
    check_batches(config, [select_classes(train, classes).labels for classes, _ in folds],
                  class_names=train.class_names)  # every sampler setting, on every fold


def _run_trial(study: Any, trial: Any, config: Config, total: int, rdb: Any, log: Callable,
               cross_validate: Any, guard: SigintGuard) -> None:
    optuna = require_optuna()
    states = optuna.trial.TrialState
    tc = config.tune
    if tc is None:
        raise ValueError("the config has no tune: section")
    heartbeat = Heartbeat(rdb, trial._trial_id, tc.heartbeat_seconds)
    start = time.perf_counter()
    tag = f"trial {trial.number}"
    try:
        try:
            cfg, chosen = trial_config(config, trial)
            trial.set_user_attr("config", cfg.to_dict())
            log(f"{tag}: " + " ".join(f"{k}={_short(v)}" for k, v in chosen.items()))
            same = _same_config_done(study, trial, cfg)
            if same is not None:  # the folds are deterministic: its score, not a re-run
                _reuse(study, trial, same)
                log(f"{tag} finished: mean MAP@R {same.value:.4f}, trial {same.number}'s "
                    "config again (its score: not trained again)")
                return

            def on_epoch(epoch: int, mean: float) -> None:
                guard.check()  # (a Ctrl-C a storage callback swallowed)
                trial.report(mean, epoch)
                if epoch < cfg.training.epochs and trial.should_prune():  # (last: complete)
                    raise optuna.TrialPruned(f"pruned at epoch {epoch} (mean MAP@R {mean:.4f})")

            with guard.interruptible():
                result = cross_validate(
                    cfg, tc.folds, seed=tc.seed, objective=tc.objective, on_epoch=on_epoch,
                    log=lambda m: log(f"{tag} {m}"),
                )  # fmt: skip
            trial.set_user_attr("folds", result.to_dict()["folds"])
        except optuna.TrialPruned as err:
            study.tell(trial, state=states.PRUNED)
            log(f"{tag} {err}")
            return
        except (ValueError, TypeError, FloatingPointError) as err:  # the config's own fault
            if guard.requested:  # (an error a Ctrl-C caused: not the config's)
                study.tell(trial, state=states.FAIL)
                raise KeyboardInterrupt from err
            trial.set_user_attr("error", f"{type(err).__name__}: {err}")
            study.tell(trial, state=states.FAIL)
            log(f"{tag} failed: {type(err).__name__}: {err}")
            return
        except BaseException as err:
            study.tell(trial, state=states.FAIL)  # not the config's fault: not counted
            if guard.requested and not isinstance(err, KeyboardInterrupt):
                raise KeyboardInterrupt from err  # (e.g. a RuntimeError of a broken import)
            raise
        if not math.isfinite(result.score):  # (NaN: a fold no epoch could score)
            trial.set_user_attr("error", UNSCORED)
            study.tell(trial, state=states.FAIL)
            log(f"{tag} failed: {UNSCORED}")
            return
        study.tell(trial, result.score)
    finally:
        heartbeat.stop()
    trials = study.get_trials(deepcopy=False)  # one snapshot: best and count agree
    best = best_of(trials)
    done = sum(counts_toward_total(t) for t in trials if t.state.name in _FINISHED)
    log(
        f"{tag} finished: mean MAP@R {result.score:.4f} (raw inputs {result.raw_score:.4f}) "
        f"in {time.perf_counter() - start:.1f} s "
        f"(best: trial {best.number}, {best.value:.4f}; {done}/{total} trials done)"
    )  # (best: at least this trial, complete)


#: why a trial whose mean fold MAP@R is NaN failed
UNSCORED = ("no score: a fold's validation classes have no class with two items, so no "
            "epoch could be scored; use fewer folds or more items per class")


def _same_config_done(study: Any, trial: Any, cfg: Config) -> Any:
    """The first complete trial of ``study`` that ran exactly ``cfg`` (a categorical
    space, e.g. ``model.head_type: none``, samples the same config again and again), or
    ``None``."""
    wanted = cfg.to_dict()
    for t in study.get_trials(deepcopy=False):
        if (t.number != trial.number and t.state.name == "COMPLETE"
                and t.user_attrs.get("config") == wanted):
            return t
    return None


def _reuse(study: Any, trial: Any, same: Any) -> None:
    """Finish ``trial`` with the score, per-epoch curve and folds of ``same``."""
    for step, value in sorted(same.intermediate_values.items()):
        trial.report(value, step)
    trial.set_user_attr("same_as", same.number)
    if "folds" in same.user_attrs:
        trial.set_user_attr("folds", same.user_attrs["folds"])
    study.tell(trial, same.value)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)


__all__ = [
    "TuneSummary",
    "default_out_dir",
    "redact",
    "study_name_of",
    "open_study",
    "open_storage",
    "storage_url",
    "tune",
    "write_best",
]
