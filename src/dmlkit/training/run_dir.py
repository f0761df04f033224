"""A run directory owned by one training run at a time, and the files it keeps whole.

A run claims its directory before it writes anything (:func:`claim_run_dir`): a new one
is created atomically (``mkdir`` without ``exist_ok``; an auto-named one that another run
created in the same second gets a ``-2``, ``-3``, ... suffix), and the run holds an
exclusive ``fcntl.flock`` on ``.train.lock`` inside it for its whole life, as the service
holds an index directory (:mod:`dmlkit.service.store`). A second run on the same
directory (``--out`` of a running run, or its ``--resume``) is refused at once, and the
operating system drops the lock when the process dies, however it dies. An existing
directory that is not resumed must be empty, or a run dmlkit made that has nothing to lose
(it stopped before its first epoch ended); anything else is refused, naming what it holds.
Once the lock is held, temporary files that a killed atomic write left are removed.

On resume, ``train.log`` is rebuilt from the checkpoint's history when it lacks the line
of a checkpointed epoch (a kill between the checkpoint and the log line) or holds one of an
epoch the checkpoint does not have, and ``config.yaml`` (the checkpoint's config where it
was deleted, :func:`saved_run_config`) must still say what the checkpoint trained with
(:func:`check_resume`). A model setting that a run saved before it existed lacks counts
there as the value its model had then (:func:`saved_config_as_run`), and a resume that
leaves it out goes on with it (:func:`resumed_config`): a resume of such a run, stopped
before its first checkpoint, leaves a ``config.yaml`` that names the value its
checkpoint's config leaves out, and the two agree.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from dmlkit.config.compare import RESUMABLE
from dmlkit.training.saved_weights import checkpoint_weights, read_metrics

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".train.lock"
#: files written atomically: a kill mid-write leaves ``.NAME.XXXXXXXX.tmp`` beside them
ATOMIC_FILES = ("checkpoint.pt", "model.pt", "metrics.json", "config.yaml", "train.log",
                "baseline.json")
#: all a run that stopped before its first epoch ended holds (``train.log`` empty):
#: starting it again loses nothing
_UNSTARTED = frozenset({"config.yaml", "baseline.json", "train.log"})
_MAX_SUFFIX = 1000


class RunInUseError(FileExistsError):
    """Another training run holds the run directory (its lock file is locked)."""


@dataclass
class _Claim:
    handle: IO[str] | None
    created: bool  # this claim created the directory


_HELD: dict[str, _Claim] = {}  # the run directories this process has claimed


def _key(path: Path) -> str:
    return os.path.realpath(path)


def resume_command(out_dir: str | Path) -> str:
    """The shell command that resumes ``out_dir``, the path quoted for the shell."""
    return f"dmlkit train --resume --out {shlex.quote(str(out_dir))}"


def created_here(out_dir: str | Path) -> bool | None:
    """Whether this process's claim of ``out_dir`` created it; ``None`` when unclaimed."""
    claim = _HELD.get(_key(Path(out_dir)))
    return None if claim is None else claim.created


@contextlib.contextmanager
def claim_run_dir(out_dir: str | Path, *, resume: bool = False,
                  unique: bool = False) -> Iterator[Path]:
    """Hold ``out_dir`` for one training run; yields the directory (with ``unique``, the
    first free one of ``out_dir``, ``out_dir-2``, ``out_dir-3``, ...).

    ``resume``: the directory exists and is only locked. Otherwise it is created, or an
    existing one must be empty or an unstarted run of dmlkit's. Raises
    :class:`RunInUseError` when another run holds it, ``FileExistsError`` naming what an
    existing directory holds. Under torchrun only the first process (``RANK`` 0) claims:
    it alone writes the run. A claim this process already holds is held again as it is.
    A directory the claim created is removed again when the run fails before writing
    anything into it.
    """
    out_dir = Path(out_dir)
    if int(os.environ.get("RANK", "0") or 0) != 0 or _key(out_dir) in _HELD:
        yield out_dir
        return
    if resume:
        from dmlkit.training.trainer import CHECKPOINT

        if not out_dir.is_dir():
            raise FileNotFoundError(f"cannot resume: {out_dir} is not a directory")
        if not (out_dir / CHECKPOINT).is_file():  # (before the lock file is made: a
            raise no_checkpoint_error(out_dir)  # refused resume leaves the directory as it was)
        handle = _lock(out_dir, resume=True)
        if handle is None:  # (removed by the run that held it, as its failed start ended)
            raise FileNotFoundError(f"cannot resume: {out_dir} was removed")
        created = False
    else:
        out_dir, handle, created = _claim_new(out_dir, unique)
    key = _key(out_dir)
    _HELD[key] = _Claim(handle, created)
    try:
        remove_stale_temps(out_dir)
        yield out_dir
    except BaseException:
        if created and out_dir.is_dir() and not _contents(out_dir):
            shutil.rmtree(out_dir, ignore_errors=True)  # (the lock file alone)
        raise
    finally:
        del _HELD[key]
        if handle is not None:
            handle.close()  # releases the lock


def _claim_new(out_dir: Path, unique: bool) -> tuple[Path, IO[str], bool]:
    from dmlkit.training.checkpoint import write_error

    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a read-only file system, a file in the way
        raise (write_error(err, out_dir.parent) or err) from None
    n, vanished = 1, 0
    while n <= _MAX_SUFFIX:
        path = out_dir if n == 1 else out_dir.with_name(f"{out_dir.name}-{n}")
        try:
            path.mkdir()  # exclusive: of two runs, one creates it
            created = True
        except FileExistsError:
            if unique:
                n += 1
                continue
            if not path.is_dir():
                raise FileExistsError(f"--out {path} is a file, not a directory") from None
            created = False
            if not (path / LOCK_FILE).exists():  # before the lock file is made: a
                _check_reusable(path)  # refused claim leaves the directory as it was
        except OSError as err:  # a read-only or full file system
            raise (write_error(err, path) or err) from None
        try:
            handle = _lock(path, resume=False)
        except FileNotFoundError:  # removed between mkdir and open: claim it again
            handle = None
        if handle is None:  # locked a lock file that was removed with its directory
            vanished += 1
            if vanished > _MAX_SUFFIX:
                raise RunInUseError(f"{path} is being created and removed by other runs; "
                                    "choose another --out")
            continue
        if not created:
            try:  # again, under the lock: another run may have written it meanwhile
                _check_reusable(path)
            except BaseException:  # refused: the lock file is never removed here (another
                handle.close()  # process may have opened it and be about to lock it)
                raise
        return path, handle, created
    raise FileExistsError(f"{out_dir} and {_MAX_SUFFIX - 1} numbered variants of it exist; "
                          "choose another --out")


def _lock(path: Path, resume: bool) -> IO[str] | None:
    """The open lock file of ``path``, exclusively locked; ``None`` when the file locked
    is no longer ``path``'s (a run that held it removed it, with its directory, and the
    caller should claim again). A lock file is never removed while a process may lock
    it: after ``flock`` the locked file must still be the one on disk."""
    from dmlkit.training.checkpoint import write_error

    lock = path / LOCK_FILE
    try:
        handle = open(lock, "a+")  # noqa: SIM115 - held for the run's life
    except OSError as err:  # a read-only or full file system
        failure = write_error(err, lock)
        raise (failure or err) from None
    if fcntl is None:  # pragma: no cover
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip()
        handle.close()
        held = (f"process {owner}; " if owner.isdigit() else "") + f"{lock} is locked"
        if resume:
            raise RunInUseError(
                f"cannot resume {path}: another dmlkit train is training it now ({held}); "
                "wait for it to end, or stop it first") from None
        raise RunInUseError(
            f"{path} is in use by another dmlkit train ({held}); two runs in one directory "
            "would mix their files: choose another --out") from None
    try:
        on_disk = os.stat(lock)
        held = os.fstat(handle.fileno())
        same = (held.st_ino, held.st_dev) == (on_disk.st_ino, on_disk.st_dev)
    except OSError:  # (removed since it was opened)
        same = False
    if not same:
        handle.close()
        return None
    with contextlib.suppress(OSError):  # (who holds it, for the message above)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    return handle


def _is_stale_temp(name: str) -> bool:
    return name.endswith(".tmp") and any(name.startswith(f".{f}.") for f in ATOMIC_FILES)


def _contents(path: Path) -> list[str]:
    """What ``path`` holds, but its lock file and temporary files of atomic writes."""
    return sorted(p.name for p in path.iterdir()
                  if p.name != LOCK_FILE and not _is_stale_temp(p.name))


def remove_stale_temps(path: Path) -> None:
    """Remove the temporary files killed atomic writes left in ``path`` (call it with the
    run's lock held: no live write of this run directory is then under way)."""
    for p in path.glob(".*.tmp"):
        if _is_stale_temp(p.name):
            with contextlib.suppress(OSError):
                p.unlink()


def _check_reusable(path: Path) -> None:
    from dmlkit.training.trainer import CHECKPOINT

    names = _contents(path)
    if not names:
        return
    if CHECKPOINT in names:
        raise FileExistsError(
            f"{path} already holds a run; resume it (--resume) or choose another --out")
    if _unstarted_run(path, names):
        return  # a run of dmlkit's that stopped before its first epoch ended: start again
    shown = names[:6] + ([f"{len(names) - 6} more"] if len(names) > 6 else [])
    listing = ", ".join(shown[:-1]) + " and " + shown[-1] if len(shown) > 1 else shown[0]
    raise FileExistsError(
        f"{path} already holds {listing} but no {CHECKPOINT} to resume (a finished run "
        "whose checkpoint was removed, or files of your own), which training would "
        "overwrite: choose another --out, or delete them")


def _unstarted_run(path: Path, names: list[str] | set[str]) -> bool:
    """Whether ``path`` (holding ``names``, see :func:`_contents`) is a run of dmlkit's
    that stopped before its first epoch ended: a ``config.yaml`` that is a dmlkit config,
    an empty ``train.log`` if any, and nothing else but ``baseline.json``. Told by its
    files, not by its lock file: a run of an older dmlkit made none."""
    import yaml

    from dmlkit.config.schema import Config
    from dmlkit.training.trainer import LOG

    if "config.yaml" not in names or not set(names) <= _UNSTARTED:
        return False
    log = path / LOG
    if log.is_file() and log.stat().st_size:
        return False
    try:
        raw = yaml.safe_load((path / "config.yaml").read_text())
        if not isinstance(raw, dict) or "model" not in raw or "data" not in raw:
            return False  # (dmlkit writes every section; a near-empty file is not its)
        Config.from_yaml(path / "config.yaml")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError, TypeError, KeyError):
        return False
    return True


def no_checkpoint_error(out_dir: str | Path) -> FileNotFoundError:
    """The error of resuming ``out_dir``, which holds no checkpoint: what the directory
    says of the run (finished with its checkpoint removed, stopped before its first
    epoch ended, or neither) and what to do instead."""
    from dmlkit.training.trainer import CHECKPOINT

    out_dir = Path(out_dir)
    names = set(_contents(out_dir)) if out_dir.is_dir() else set()
    if not out_dir.exists():
        return FileNotFoundError(
            f"cannot resume: {out_dir} does not exist, so there is no run (config.yaml, "
            f"{CHECKPOINT}) to resume: check --out, or train a new run without --resume")
    why = ""
    if not out_dir.is_dir():
        why = f"; {out_dir} is a file, not a run directory: check --out"
    elif not names:
        why = ("; it is empty (the run stopped before it wrote anything), so there is "
               "nothing to resume: start it again without --resume (same --out)")
    elif "model.pt" in names:
        why = ("; the run finished (it holds model.pt) and its checkpoint was removed, so "
               "it cannot be resumed: start a new run with another --out")
    elif _unstarted_run(out_dir, names):
        why = ("; the run stopped before its first epoch ended, so there is nothing to "
               "resume: start it again without --resume (same --out)")
    elif "config.yaml" in names:
        why = ("; its checkpoint was removed, so the run cannot be resumed: start a new run "
               "with another --out")
    return FileNotFoundError(f"cannot resume: no {CHECKPOINT} in {out_dir}{why}")


def check_resume(config: Any, out_dir: Path) -> dict[str, Any]:
    """Refuse to resume ``out_dir`` with ``config`` (the settings to train with) when it
    differs from the run's ``config.yaml``, when ``config.yaml`` differs from the config
    its checkpoint trained with (edited since: an edit would apply in part), or when
    ``training.epochs`` is below the epochs done. Returns the checkpoint, loaded on the
    device ``config.training.device`` names, for the resumed run to restore
    (:meth:`~dmlkit.training.Trainer.fit`'s ``checkpoint``): a resume reads it once."""
    from dmlkit.config.compare import config_changes
    from dmlkit.config.schema import Config
    from dmlkit.training.checkpoint import load_checkpoint
    from dmlkit.training.run import CONFIG_FILE
    from dmlkit.training.trainer import CHECKPOINT, resolve_device

    yaml_path = out_dir / CONFIG_FILE
    saved = Config.from_yaml(yaml_path) if yaml_path.is_file() else None
    if saved is not None:  # exact resume: the run's own settings
        saved = saved_config_as_run(saved)
        changes = config_changes(config, saved, RESUMABLE)
        if changes:
            raise ValueError(
                f"resuming {out_dir} with other settings than it was trained with: "
                f"{'; '.join(changes)}; resume with its saved config.yaml, or train a new "
                "run (another out_dir)")
    if not (out_dir / CHECKPOINT).is_file():
        raise no_checkpoint_error(out_dir)
    state = load_checkpoint(out_dir / CHECKPOINT,
                            map_location=resolve_device(config.training.device))
    if saved is None:  # (config.yaml deleted: the checkpoint's settings)
        check_trained_config(config, state, out_dir, f" (its {CONFIG_FILE} is missing)")
    trained = _checkpoint_config(state)
    if saved is not None and trained is not None:
        changes = config_changes(saved, saved_config_as_run(trained), RESUMABLE)
        if changes:
            raise ValueError(
                f"{yaml_path} was edited after {out_dir / CHECKPOINT} was written: "
                f"{'; '.join(changes)} (checkpoint -> config.yaml); a resume continues "
                "with the checkpoint's optimizer and schedule, so an edit would apply in "
                "part: restore the checkpoint's values in config.yaml to resume, or train "
                "a new run with the new settings (another --out)")
    done = int(state["epoch"])
    if config.training.epochs < done:
        raise ValueError(
            f"{out_dir} has already trained {done} epochs; training.epochs "
            f"{config.training.epochs} would shorten it (use --epochs >= {done} to "
            "extend it, or train a new run)")
    return state


def check_trained_config(config: Any, checkpoint: dict[str, Any], out_dir: Path,
                         note: str = "") -> None:
    """Refuse to resume ``out_dir`` with ``config`` when it differs from the config its
    ``checkpoint`` trained with (a checkpoint without one: nothing to compare), as
    :func:`check_resume` does; ``note`` follows ``out_dir`` in the error."""
    from dmlkit.config.compare import config_changes
    from dmlkit.training.trainer import CHECKPOINT

    trained = _checkpoint_config(checkpoint)
    changes = ([] if trained is None else
               config_changes(config, saved_config_as_run(trained), RESUMABLE))
    if changes:
        raise ValueError(
            f"resuming {out_dir}{note} with other settings than its {CHECKPOINT} trained "
            f"with: {'; '.join(changes)}; resume with the checkpoint's settings, or train a "
            "new run (another out_dir)")


def saved_config_as_run(saved: Any) -> Any:
    """A saved run's config (its ``config.yaml``, or its checkpoint's) as the run has it:
    a copy with the model settings it lacks, having been saved before they existed, set
    as its model had them (:func:`~dmlkit.training.build.saved_run_params`), and a
    ``data.part`` of a source without parts (read whole) set to ``"train"``; ``saved``
    itself when neither applies (or it names a model this dmlkit does not know, which
    the resume reports)."""
    import copy

    from dmlkit.data.load import PARTLESS_SOURCES
    from dmlkit.training.build import saved_run_params

    data = getattr(saved, "data", None)
    # a part of a source without parts, saved before it was refused: that source was read
    # whole whatever the part said, so it is read whole again
    whole = (getattr(data, "name", None) in PARTLESS_SOURCES
             and getattr(data, "part", "train") != "train")
    try:
        missing = saved_run_params(saved.model)
    except (ValueError, KeyError, TypeError):
        missing = {}
    if not missing and not whole:
        return saved
    saved = copy.deepcopy(saved)
    saved.model.update(missing)
    if whole:
        saved.data.part = "train"
    return saved


def saved_run_config(out_dir: Path, checkpoint: dict[str, Any] | None = None) -> Any:
    """The config the run in ``out_dir`` trains with, as it has it
    (:func:`saved_config_as_run`): its ``config.yaml``, else (deleted) the config its
    checkpoint saved (``checkpoint`` where the caller loaded it already); ``None`` when
    neither holds one."""
    from dmlkit.config.schema import Config
    from dmlkit.training.checkpoint import load_checkpoint
    from dmlkit.training.run import CONFIG_FILE
    from dmlkit.training.trainer import CHECKPOINT

    if (out_dir / CONFIG_FILE).is_file():
        return saved_config_as_run(Config.from_yaml(out_dir / CONFIG_FILE))
    if checkpoint is None and (out_dir / CHECKPOINT).is_file():
        checkpoint = load_checkpoint(out_dir / CHECKPOINT)
    saved = _checkpoint_config(checkpoint) if checkpoint else None
    return None if saved is None else saved_config_as_run(saved)


def resumed_config(config: Any, out_dir: Path,
                   checkpoint: dict[str, Any] | None = None) -> Any:
    """``config``, the settings a resume of ``out_dir`` trains with, where it leaves out a
    model setting that runs saved before the setting existed lack, with the value the
    run has (:func:`saved_run_config`): the run goes on as it trained, never with the
    default a new run gets. ``checkpoint``: as for :func:`saved_run_config`."""
    import copy

    from dmlkit.training.build import saved_run_params

    try:
        keys = saved_run_params(config.model)
    except (ValueError, KeyError, TypeError):  # (an unknown model: the build reports it)
        return config
    saved = saved_run_config(out_dir, checkpoint) if keys else None
    if saved is None or saved.model.get("name") != config.model.get("name"):
        return config
    config = copy.deepcopy(config)
    config.model.update({k: saved.model[k] for k in keys if k in saved.model})
    return config


def _checkpoint_config(state: dict[str, Any]) -> Any:
    from dmlkit.config.schema import Config

    raw = state.get("config")
    if not isinstance(raw, dict):  # (a checkpoint without its config: nothing to compare)
        return None
    try:  # through YAML, as config.yaml is read: the two compare value for value
        return Config.from_yaml(Config.from_dict(raw).to_yaml())
    except (ValueError, TypeError, KeyError):
        return None


def epoch_line(record: dict[str, Any]) -> str:
    """The ``train.log`` line of one epoch's record."""
    return " ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}"
                    for k, v in record.items())


def append_log_line(path: Path, line: str) -> None:
    """Append ``line`` to the log at ``path``; a failed write is a ``WriteError``."""
    from dmlkit.training.checkpoint import write_error

    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as err:
        failure = write_error(err, path)
        raise (failure or err) from None


def restore_log(path: Path, history: list[dict[str, Any]]) -> None:
    """Make the log at ``path`` hold one line per epoch of ``history`` (a resumed run's
    checkpoint): a line lost to a kill between the checkpoint and its log line is
    written again, lines of epochs the checkpoint does not hold are dropped."""
    from dmlkit.training.checkpoint import atomic_write_text

    lines = [epoch_line(record) for record in history]
    try:
        current = path.read_text().splitlines() if path.is_file() else []
    except (OSError, UnicodeDecodeError):
        current = None
    if current != lines:
        atomic_write_text("".join(line + "\n" for line in lines), path)


__all__ = ["LOCK_FILE", "RunInUseError", "append_log_line", "check_resume",
           "check_trained_config", "checkpoint_weights", "claim_run_dir", "created_here",
           "epoch_line", "no_checkpoint_error", "read_metrics", "remove_stale_temps",
           "restore_log", "resume_command", "resumed_config", "saved_config_as_run",
           "saved_run_config"]
