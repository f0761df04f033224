"""``dmlkit tune`` and ``dmlkit crossval``: thin over :mod:`dmlkit.tuning`."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import typer

RUNS_DIR = Path("runs")


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _refuse_torchrun(command: str, advice: str = "") -> None:
    """Refuse ``dmlkit COMMAND`` in a torchrun job (``WORLD_SIZE`` above 1): each process
    would run all of it. The first process says so; the others end quietly."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return
    if int(os.environ.get("RANK", "0") or 0) != 0:
        raise typer.Exit(1)
    raise _fail(f"dmlkit {command} runs as a single process, not under torchrun (each of the "
                f"{world} processes would run all of it): start it without torchrun{advice}")


def tune(
    config: Path = typer.Argument(..., help="YAML config with a tune: section (its space)."),
    trials: int = typer.Option(..., "--trials", "-n", help="Trials in the whole study."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Directory of best.yaml and study.db; default "
        "runs/<config name>-tune, or runs/<study>-tune for a --study other than the config's."
    ),
    storage: str | None = typer.Option(
        None, "--storage", help="SQLAlchemy URL of the study (default: sqlite in --out); "
        "a SQLite file, not in memory (sqlite:///path/study.db)."
    ),
    study: str | None = typer.Option(
        None, "--study", help="Study name (default: tune.study_name, else the config name)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the study, or join it as another worker."
    ),
) -> None:
    """Search the config's tune.space with Optuna; score = mean MAP@R over class-disjoint
    folds of the training classes. Writes the best config as best.yaml.

    Start more workers on the same study (same config and --out, or --storage) with
    --resume; they share the trial count. Ctrl-C fails the running trial (not counted)
    and exits 130; --resume goes on.
    """
    _refuse_torchrun("tune", "; to run trials in parallel, start more workers on the same "
                     "study with --resume (same config and --out, or --storage)")
    from dmlkit.cli._errors import one_line

    cfg = None
    if trials < 1:  # (the library's message names its argument, trials)
        raise _fail(f"--trials must be >= 1, got {trials}")
    if storage is not None and not storage.strip():
        raise _fail("--storage is empty: give a SQLAlchemy URL (e.g. sqlite:///study.db), "
                    "or leave it out for study.db in --out")
    try:
        with _ctrl_c_deferred():  # (the modules load and the config is read: seconds)
            from dmlkit.config import load_config
            from dmlkit.tuning import tune as run_tune
            from dmlkit.tuning.study import default_out_dir
            from dmlkit.tuning.study_name import check_study_name

            if study is not None:  # (it names the default --out: runs/<study>-tune)
                check_study_name(study, "--study")
            cfg = load_config(config)
            out_dir = out if out is not None else default_out_dir(cfg, study, RUNS_DIR)
            # (before the folds are checked, which reads the data)
            _check_out(out_dir, "--out" if out is not None else "the study folder")
            url = storage or (cfg.tune.storage if cfg.tune is not None else None)
            if url:
                _check_storage_folder(url, "--storage" if storage else "tune.storage")
        summary = run_tune(
            cfg, trials, out_dir, resume=resume, storage=storage, study_name=study, log=typer.echo
        )
    except ImportError as err:
        raise _fail(_import_error(err, storage, cfg)) from None
    except (FileNotFoundError, FileExistsError, ValueError, TypeError) as err:
        raise _fail(one_line(err)) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; continue with the same command and --resume", 130) from None
    except Exception as err:  # e.g. SQLAlchemy: a storage URL it cannot open
        if type(err).__module__.split(".")[0] != "sqlalchemy":
            raise
        from dmlkit.tuning.study import redact, safe_storage

        url = storage or (cfg.tune.storage if cfg is not None and cfg.tune is not None
                          else None) or ""
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()
        raise _fail(f"cannot open the study storage {safe_storage(url)}: "
                    f"{redact(reason[0] if reason else type(err).__name__, url)}") from None
    counts = ", ".join(f"{k.lower()} {v}" for k, v in sorted(summary.counts.items()))
    typer.echo(f"\nstudy {summary.study_name!r} ({summary.storage}): {counts}")
    if summary.best_trial is None:
        if summary.counts.get("FAIL", 0) and not summary.counts.get("PRUNED", 0):
            raise _fail("no trial completed: every trial failed (each trial's error is "
                        "printed by the worker that ran it; fix the config and start a new "
                        "study with another --out)")
        typer.echo("no trial completed yet")
        return
    typer.echo(
        f"best: trial {summary.best_trial}, mean fold MAP@R {summary.best_value:.4f}; "
        f"config written to {summary.best_config}"
    )


@contextmanager
def _ctrl_c_deferred() -> Iterator[None]:
    """A Ctrl-C while the command loads its modules and reads its config is recorded and
    raised as ``KeyboardInterrupt`` when the block ends (one that stopped an import
    halfway would leave the module broken: the next import of it fails with an error
    and a traceback of its own); a second Ctrl-C raises at once, and an error raised
    after the first (an import it broke) is the interrupt. The trials run under
    :class:`dmlkit.tuning.interrupt.SigintGuard` (importing it is part of the loading).
    Outside the main thread, or where SIGINT is ignored, nothing is installed."""
    requested = False

    def record(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
        nonlocal requested
        if requested:
            raise KeyboardInterrupt
        requested = True

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.getsignal(signal.SIGINT)
        if previous in (signal.SIG_IGN, None):
            previous = None
        else:
            signal.signal(signal.SIGINT, record)
    try:
        yield
    except Exception as err:
        if requested:
            raise KeyboardInterrupt from err
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if requested:
        raise KeyboardInterrupt


def _check_out(out_dir: Path, option: str) -> None:
    """Refuse a study folder that cannot become a folder, is a run directory or a saved
    directory (an index, a kit) or lies inside one (:func:`check_output_folder`): the
    next save there (``dmlkit index build --out``) would delete tune's files."""
    from dmlkit.cli._outputs import check_output_dir, check_output_folder
    from dmlkit.runs.run_files import is_run_dir

    try:
        check_output_dir(out_dir, option)
    except ValueError as err:
        raise ValueError(f"{err} (tune writes its best.yaml, and its study.db unless "
                         "--storage names one, into a directory): choose another "
                         "--out") from None
    if is_run_dir(out_dir):
        raise ValueError(f"{option} {out_dir} is a run directory; its outputs would be "
                         "written among the run's own files: give another folder (e.g. "
                         f"{out_dir / 'tune'})")
    check_output_folder(out_dir, option)


def _check_storage_folder(url: str, option: str) -> None:
    """Refuse a SQLite study file (``url``, given as ``option``) whose folder is a run
    directory or a saved directory, or lies inside a saved directory, as
    :func:`_check_out` refuses ``--out``; other databases pass."""
    from dmlkit.cli._outputs import check_output_folder
    from dmlkit.runs.run_files import is_run_dir
    from dmlkit.tuning.storage import sqlite_file

    path = sqlite_file(url)
    if path is None:
        return
    folder = path.parent
    what = f"the folder of {option}"
    if is_run_dir(folder):
        raise ValueError(f"{what} {folder} is a run directory; its outputs would be written "
                         f"among the run's own files: give another folder (e.g. "
                         f"{folder / 'tune' / path.name})")
    check_output_folder(folder, what)


#: SQLAlchemy driver (a URL's ``+driver``, else its dialect's default) -> its pip package
_DRIVERS = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'", "pg8000": "pg8000",
            "asyncpg": "asyncpg", "mysqldb": "mysqlclient", "pymysql": "pymysql",
            "mysqlconnector": "mysql-connector-python", "mariadbconnector": "mariadb",
            "pyodbc": "pyodbc", "pymssql": "pymssql", "oracledb": "oracledb",
            "cx_oracle": "cx_Oracle"}
#: a dialect's default driver -> another driver its URL can name instead (``+driver``)
_OTHER_DRIVER = {"psycopg": "psycopg2", "mysqldb": "pymysql"}


def _driver(url: str) -> str | None:
    """The driver SQLAlchemy uses for ``url`` (``mysql://``: mysqldb), or ``None``."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).get_dialect().driver
    except Exception:  # noqa: BLE001 - an unknown dialect or a URL it cannot read
        return None


def _import_error(err: ImportError, storage: str | None, cfg: Any) -> str:
    """One line for an ``ImportError``: a storage URL's missing database driver named
    with its pip command, else the error itself (a missing optional package names its
    own)."""
    from dmlkit.cli._errors import one_line
    from dmlkit.tuning.study import safe_storage

    url = storage or (cfg.tune.storage if cfg is not None and cfg.tune is not None
                      else None)
    if url and "DB access module" in str(err):
        dialect = url.split(":", 1)[0].split("+", 1)[0]
        driver = _driver(url)
        package = _DRIVERS.get(driver or "")
        needed = f"the driver {driver!r} of {dialect!r}" if driver else (
            f"a database driver for {dialect!r}")
        other = _OTHER_DRIVER.get(driver or "") if "+" not in url.split(":", 1)[0] else None
        instead = (f"pip install {_DRIVERS[other]} and write {dialect}+{other}://..., or "
                   if other else "")
        return (f"the study storage {safe_storage(url)} needs {needed}, which is not installed"
                + (f": pip install {package}" if package else "")
                + f" (or {instead}use sqlite:///FILE)")
    return one_line(err)


def crossval(
    config: Path = typer.Argument(..., help="YAML config (e.g. a best.yaml of dmlkit tune)."),
    folds: int | None = typer.Option(
        None, "--folds", "-k", help="Default: tune.folds, or 3 (fewer where the training "
        "classes allow fewer: each fold keeps two classes on each side)."),
    seed: int | None = typer.Option(None, "--seed", help="Fold seed; default: tune.seed or 0."),
    objective: str | None = typer.Option(
        None, "--objective", help="final or best_epoch; default: tune.objective or final."
    ),
    overrides: list[str] | None = typer.Option(
        None, "--set", help="Override any config value: KEY=VALUE with a dotted key and a "
        "YAML value, e.g. --set training.epochs=3 (repeatable), as dmlkit train takes it."),
) -> None:
    """Score a config on class-disjoint folds of its training classes (mean MAP@R)."""
    _refuse_torchrun("crossval")
    from dmlkit.cli.train import apply_overrides
    from dmlkit.config import load_config
    from dmlkit.data.class_folds import MIN_CLASSES
    from dmlkit.data.load import class_names
    from dmlkit.data.splits import named_ids
    from dmlkit.training.cross_validation import DEFAULT_FOLDS, cross_validate
    from dmlkit.training.rng import check_seed

    try:
        if seed is not None:
            check_seed(seed, "--seed")  # (the seed rule of every command)
        if folds is not None and folds < 2:  # (the library's message names its k)
            raise ValueError(f"--folds must be >= 2, got {folds}")
        cfg = load_config(config)
        if overrides:
            cfg = apply_overrides(cfg, overrides)
        k = folds if folds is not None else (cfg.tune.folds if cfg.tune is not None else None)
        s = seed if seed is not None else (cfg.tune.seed if cfg.tune is not None else 0)
        obj = objective or (cfg.tune.objective if cfg.tune is not None else "final")
        held = {"val_classes": cfg.training.val_classes, "val_fraction": cfg.training.val_fraction}
        for key, value in held.items():
            if value not in (None, 0, 0.0):  # (each fold sets its own)
                typer.echo(f"note: training.{key} ({value}) is not used: each fold "
                           "validates on its own classes", err=True)
        result = cross_validate(cfg, k, seed=s, objective=obj, log=typer.echo)
    except (FileNotFoundError, ValueError, TypeError, FloatingPointError) as err:
        raise _fail(str(err)) from None
    if k is None and len(result.folds) < DEFAULT_FOLDS:  # fewer than the default: say why
        n = len(result.folds[0].train_classes) + len(result.folds[0].val_classes)
        typer.echo(f"{len(result.folds)} folds: {n} training classes allow at most "
                   f"{len(result.folds)} with {MIN_CLASSES} classes on each side")
    names = class_names(cfg.data)
    for i, fold in enumerate(result.folds):
        best = ("no epoch scored, so no best" if fold.best_epoch is None else
                f"{fold.best_map_at_r:.6f} at the best (epoch {fold.best_epoch})")
        typer.echo(
            f"fold {i}: validate on classes {named_ids(fold.val_classes, names)}: MAP@R "
            f"{fold.final_map_at_r:.6f} after the last epoch, {best}; "
            f"raw inputs {fold.raw_map_at_r:.6f}"
        )
    typer.echo(
        f"mean MAP@R over {len(result.folds)} class-disjoint folds: {result.score:.6f} "
        f"(objective {obj}; after the last epoch {result.final_score:.6f}, at each fold's "
        f"best epoch {result.best_score:.6f}; raw inputs {result.raw_score:.6f})"
    )


def register(app: typer.Typer) -> None:
    app.command("tune")(tune)
    app.command("crossval")(crossval)
