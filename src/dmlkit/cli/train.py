"""``dmlkit train`` and ``dmlkit embed``: thin over :mod:`dmlkit.training`."""

from __future__ import annotations

import errno
import os
import re
import time
from pathlib import Path
from typing import Any

import typer

from dmlkit.cli._errors import one_line
from dmlkit.cli._npz_keys import LABELS_KEY, X_KEY
from dmlkit.cli._outputs import (
    check_output_dir,
    check_output_folder,
    check_output_path,
    existing_inputs,
)

RUNS_DIR = Path("runs")


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _latest_run(name: str) -> Path | None:
    """The newest run of the config ``name`` holding a checkpoint: ``runs/<name>``, or a
    directory named as ``dmlkit train`` names its runs, ``runs/<name>-<YYYYmmdd-HHMMSS>``
    (``-2``, ``-3``, ... when taken); never another config's (``runs/<name>-b-...``)."""
    own = re.compile(re.escape(name) + r"(-\d{8}-\d{6}(-\d+)?)?")
    found = sorted(RUNS_DIR.iterdir()) if RUNS_DIR.is_dir() else []
    candidates = [p for p in found
                  if own.fullmatch(p.name) and (p / "checkpoint.pt").is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def _saved_config(out: Path) -> Any:
    """The config the run in ``out`` trains with (its config.yaml, else its checkpoint's);
    an error saying what is missing and what to do when there is no run to resume."""
    from dmlkit.training.run_dir import no_checkpoint_error, saved_run_config
    from dmlkit.training.trainer import CHECKPOINT

    if not (out / CHECKPOINT).is_file():
        raise no_checkpoint_error(out)
    saved = saved_run_config(out)
    if saved is None:
        raise FileNotFoundError(
            f"cannot resume {out}: its config.yaml is missing and its {CHECKPOINT} holds no "
            "config this dmlkit can read: restore config.yaml, or train a new run "
            "(another --out)")
    return saved


def _system_error(err: OSError, out: Path | None) -> str:
    """A file system error of a training run on one line (a failed write names its file,
    ``cannot write PATH: no space left on device``), with the way to resume when the run
    kept a checkpoint."""
    from dmlkit.training.checkpoint import WriteError

    message = str(err) if isinstance(err, WriteError) else one_line(err)
    if out is None or err.errno is None:
        return message
    from dmlkit.training.checkpoint import load_checkpoint
    from dmlkit.training.run_dir import resume_command
    from dmlkit.training.trainer import CHECKPOINT

    if not (out / CHECKPOINT).is_file():
        return message
    try:
        kept = f"the checkpoint of epoch {int(load_checkpoint(out / CHECKPOINT)['epoch'])}"
    except (OSError, ValueError, KeyError, TypeError):
        kept = "the last checkpoint"
    free = "free some space, then " if err.errno == errno.ENOSPC else ""
    return f"{message}; {kept} is kept: {free}resume with: {resume_command(out)}"


def _stopped(why: str, out: Path | None, several: bool, code: int) -> typer.Exit:
    """The error line of a run stopped before its end: ``why``, and the command that
    resumes it where it kept a checkpoint."""
    from dmlkit.training.trainer import CHECKPOINT

    if out is not None and (out / CHECKPOINT).is_file():
        from dmlkit.training.run_dir import resume_command

        return _fail(f"{why}; resume with: {resume_command(out)}", code)
    return _fail(f"{why} before the first epoch ended (nothing to resume)"
                 + ("" if several else "; start again with the same command"), code)


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """``cfg`` with each ``KEY=VALUE`` (dotted key, YAML value) set, validated again.

    ``section.key`` goes through :func:`dmlkit.config.tune.set_path` (as the tuner sets
    its samples: a new loss or miner ``name`` drops the old parameters, a new model or
    sampler ``name`` keeps those its class accepts); deeper
    keys (``data.augment.degrees``) set an entry of that mapping.
    """
    import copy

    import yaml

    from dmlkit.config import Config
    from dmlkit.config.tune import get_path, set_path

    raw = cfg.to_dict()
    for item in _names_first(overrides):
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE (e.g. optimizer.lr=1e-3), got {item!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            first = str(err).splitlines()[0]
            raise ValueError(f"--set {key}: the value {text!r} is not YAML ({first})") from None
        section, _, rest = key.partition(".")
        head, _, deeper = rest.partition(".")
        if deeper:  # section.head.a.b: an entry of the mapping at section.head
            top = copy.deepcopy(get_path(raw, f"{section}.{head}"))
            top = {} if top is None else top
            node, where, *parts = top, head, *deeper.split(".")
            for part in [*parts[:-1], None]:  # walk to the last part's mapping
                if not isinstance(node, dict):
                    raise ValueError(f"--set {key}: {where!r} holds a value, not a section")
                if part is not None:
                    node, where = node.setdefault(part, {}), part
            node[parts[-1]] = value
            key, value = f"{section}.{head}", top
        set_path(raw, key, value)
        if key == "imports":  # now: the overrides after it may name the parts it registers
            from dmlkit.user_modules import check_entries, import_modules

            import_modules(check_entries(value))
    return Config.from_dict(raw)


def _names_first(overrides: list[str]) -> list[str]:
    """``imports`` first (the modules registering the parts the others may name), then a
    loss's or miner's new name (``loss.name=...``, ``loss=...``), then the other
    overrides, in their given order otherwise: a new name drops the old parameters, so
    ``--set loss.margin=0.3 --set loss.name=triplet_margin`` keeps the margin."""
    def order(item: str) -> int:
        key = item.partition("=")[0].strip()
        return 0 if key == "imports" else 1 if key in ("loss", "miner", "loss.name",
                                                         "miner.name") else 2

    return sorted(overrides, key=order)


def train(
    config: Path | None = typer.Argument(
        None, help="YAML config; default: the digits job (configs/digits.yaml)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run directory; default runs/<name>-<timestamp>."
    ),
    epochs: int | None = typer.Option(None, "--epochs", help="Override training.epochs."),
    seed: int | None = typer.Option(None, "--seed", help="Override training.seed."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out (default: the newest runs/NAME "
        "or runs/NAME-<timestamp> holding a checkpoint, NAME the config's name)."
    ),
    progress: bool | None = typer.Option(
        None, "--progress/--no-progress",
        help="Progress bar: --progress shows it on a terminal and also where stderr is "
             "not one (a log file: updated every 20 s); --no-progress hides it. Default: "
             "the config's training.progress, on terminals only."),
    overrides: list[str] | None = typer.Option(
        None, "--set",
        help="Override any config value: KEY=VALUE with a dotted key and a YAML value, "
             "e.g. --set data.path=wavs/ --set optimizer.lr=1e-3 (repeatable).",
    ),
) -> None:
    """Train an embedding; write config, weights, checkpoint, metrics and log to a run directory.

    Prints the held-out retrieval metrics of the raw inputs next to the learned metric.
    """
    from dmlkit.config import Config, digits_config
    from dmlkit.training import metrics_table, train_run

    # under torchrun only the first process prints progress; the others' errors say
    # which process they come from
    rank = int(os.environ.get("RANK", "0") or 0)
    say = typer.echo if rank == 0 else (lambda _msg: None)
    if rank != 0:  # the same warnings in every process: the first one's speak for the job
        import warnings

        warnings.simplefilter("ignore")
    try:
        if seed is not None:
            from dmlkit.training.rng import check_seed

            check_seed(seed, "--seed")
        # its names are checked below, once --set has changed them (it may fix one)
        cfg = Config.from_yaml(config) if config is not None else digits_config()
        if overrides and not resume:
            cfg = apply_overrides(cfg, overrides)
        if resume:
            out = out if out is not None else _latest_run(cfg.name)
            if out is None:
                raise _fail(
                    f"no run of {cfg.name!r} with a checkpoint under {RUNS_DIR}/; use --out"
                )
            saved_cfg = _saved_config(out)  # (as the run has it: a setting added since)
            deleted = not (out / "config.yaml").is_file()  # (its checkpoint's then)
            saved = out / ("checkpoint.pt" if deleted else "config.yaml")
            if seed is not None and seed != saved_cfg.training.seed:
                raise _fail(f"--seed cannot change on --resume (the run's seed is "
                            f"{saved_cfg.training.seed}); resume without it, or train a new "
                            "run with another --out")
            if config is not None or overrides:  # allowed when they repeat the saved config
                import copy

                from dmlkit.config.compare import config_changes

                given = copy.deepcopy(cfg if config is not None else saved_cfg)
                if overrides:
                    given = apply_overrides(given, overrides)
                changes = config_changes(given, saved_cfg)
                if changes:
                    from dmlkit.training.run_dir import resume_command

                    what = " and ".join(
                        ([str(config)] if config is not None else []) + (
                            ["--set"] if overrides else []))
                    raise _fail(
                        f"--resume continues {out} with the config saved in {saved}, but {what} "
                        f"differs in {'; '.join(changes)}; resume without them "
                        f"({resume_command(out)}), or train a new run (another --out)")
                if epochs is None and given.training.epochs != saved_cfg.training.epochs:
                    epochs = given.training.epochs  # more epochs, as --epochs would ask
                # where it runs on: a run trained on a GPU resumes on the CPU
                saved_cfg.training.device = given.training.device
                saved_cfg.training.num_threads = given.training.num_threads
                saved_cfg.training.progress = given.training.progress
            if deleted and rank == 0:
                typer.echo(f"note: {out / 'config.yaml'} is missing: resuming with the "
                           "config saved in its checkpoint (config.yaml is written again)",
                           err=True)
            cfg = saved_cfg
        if epochs is not None:
            cfg.training.epochs = epochs
        if seed is not None:
            cfg.training.seed = seed
        if progress is not None:  # (else the config's)
            cfg.training.progress = progress
        cfg.check()
        auto = out is None  # runs/<name>-<timestamp>, numbered when taken (-2, -3, ...)
        if out is None:
            from dmlkit.training.distributed import world_size_from_env

            if world_size_from_env() > 1:  # each process would stamp its own directory
                raise _fail("under torchrun, name the run directory: --out runs/NAME")
            out = RUNS_DIR / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        from dmlkit.training.interrupts import sigterm_as_terminated
        from dmlkit.training.run_dir import claim_run_dir

        check_output_dir(out)
        runner = train_run
        if cfg.data.name in ("text", "stsb"):  # sentence encoders (dmlkit.text)
            from dmlkit.text import train_text_run as runner
        # the run holds its directory alone until it ends: made atomically, locked; a
        # SIGTERM stops it as Ctrl-C does, named as what it is
        with sigterm_as_terminated(), claim_run_dir(out, resume=resume, unique=auto) as out:
            # named with the run's first message: a setting refused before then (a bad
            # model size) leaves no directory behind, so none is announced
            log = _announcing(say, f"{'resuming' if resume else 'run directory'}: {out}")
            from dmlkit.training.trainer import FORCE_PROGRESS

            # asked for: a bar in a log file too (the first process's, as it prints)
            forced = FORCE_PROGRESS.set(bool(progress) and rank == 0)
            try:
                result = runner(cfg, out, resume=resume, log=log)
            finally:
                FORCE_PROGRESS.reset(forced)
    except (FileNotFoundError, FileExistsError, ValueError, TypeError, KeyError,
            FloatingPointError, ImportError) as err:  # (a non-finite loss: the config's
        # fault too; a missing optional package: its error names the pip command)
        message = one_line(err)
        raise _fail(message if rank == 0 else f"(process {rank}) {message}") from None
    except OSError as err:  # a full disk, a read-only run directory: one line
        message = _system_error(err, out)
        raise _fail(message if rank == 0 else f"(process {rank}) {message}") from None
    except RuntimeError as err:
        from dmlkit.training.distributed import lost_peer, lost_peer_reason

        if not lost_peer(err):  # a bug: its traceback
            raise
        # another process is gone (its own error, a kill): every process left says so,
        # as the one that would speak for the job may be the one gone
        why = (f"stopped: lost the connection to another process of the job "
               f"({lost_peer_reason(err)}): it failed (its error is above) or was killed")
        raise _stopped(why if rank == 0 else f"(process {rank}) {why}", out, True, 1) from None
    except KeyboardInterrupt as err:
        from dmlkit.training.distributed import world_size_from_env
        from dmlkit.training.interrupts import interrupt_reason

        several = world_size_from_env() > 1
        if several and rank != 0:  # one process speaks for the job
            raise typer.Exit(130) from None
        # under torchrun the launcher also stops every process when one of them fails
        why = (f"stopped ({interrupt_reason(err)}, or another process of the job failed: "
               "if so, its error is above)" if several else interrupt_reason(err))
        raise _stopped(why, out, several, 130) from None
    if not result.metrics:  # a worker process of a multi-process run: rank 0 reports
        return
    if cfg.data.name in ("text", "stsb"):
        from dmlkit.text import text_metrics_table

        typer.echo(f"\nheld-out {cfg.data.kind} of {cfg.data.name}:")
        typer.echo(text_metrics_table(result.metrics))
    elif "num_tuples" in result.metrics:  # weak supervision evaluated on held-out tuples
        from dmlkit.training.weak import tuple_metrics_table

        typer.echo(f"\nheld-out {cfg.data.kind} ({result.metrics['num_tuples']}):")
        typer.echo(tuple_metrics_table(result.metrics))
    else:
        queries = result.metrics["num_queries"]
        typer.echo(f"\nheld-out retrieval ({queries} queries, leave-one-out):")
        typer.echo(metrics_table(result.metrics))
    typer.echo(f"\n{result.seconds:.1f} s; wrote {out}/ (model.pt, metrics.json, train.log, ...)")


def embed(
    run_dir: Path = typer.Argument(..., help="A run directory written by dmlkit train."),
    data: str = typer.Option(
        "heldout",
        "--data",
        help="'heldout' or 'train' (the run's splits), a dataset name (digits, "
        "fashion_mnist[:test]), a .npz file, an IDX or image folder, an audio folder (one "
        "sub-folder of .wav files per speaker, read with the run's sample rate and crop), "
        "or a .yaml config; a .npy (or a .npz without labels) of raw inputs gives "
        "embeddings alone. Inputs must have the shape the run was trained on (as for "
        "dmlkit search).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output .npz (embeddings, labels)."),
    x_key: str | None = X_KEY,
    labels_key: str | None = LABELS_KEY,
    batch_size: int = typer.Option(512, "--batch-size", help="Inputs per forward pass."),
    device: str = typer.Option("cpu", "--device"),
    store: bool = typer.Option(
        False, "--store", help="Write a memory-mapped store directory at --out in chunks "
        "(resumable: rerun to continue) instead of one .npz."),
    chunk_size: int = typer.Option(65536, "--chunk-size", help="Rows per store chunk."),
) -> None:
    """Embed a dataset with a trained run's model and save it as .npz (or a --store)."""
    import numpy as np

    from dmlkit.runs.data import describe, has_labels, run_data, unlabelled_inputs
    from dmlkit.training import embed as embed_data
    from dmlkit.training import load_run
    from dmlkit.training.run import MODEL_FILE

    if not store:
        out = out if out.suffix.lower() == ".npz" else out.with_name(out.name + ".npz")  # as numpy
    try:
        for option, value in (("--batch-size", batch_size), ("--chunk-size", chunk_size)):
            if value < 1:  # (before the run is loaded)
                raise ValueError(f"{option} must be an integer >= 1, got {value}")
        # never one of its inputs (the run, the --data file or folder), a run's own file,
        # a run directory itself, or inside a saved directory: before any work
        inputs = existing_inputs({"the run directory": run_dir, "the --data input": data})
        if store:  # (an earlier store of its own there: continued, as the help says)
            from dmlkit.index.store import FORMAT

            check_output_folder(out, "--out", inputs, own_format=FORMAT, example="store")
        else:
            check_output_path(out, "--out", inputs, what=".npz file", run_dir=run_dir)
        from dmlkit.cli._embedding_inputs import refuse_embeddings, refuse_text_files

        refuse_embeddings(data, x_key, fix="they are embeddings already: use the file as it is")
        refuse_text_files(data, run_dir, out)
        run = load_run(run_dir, device=device)
        if run.weights != MODEL_FILE:  # an unfinished run: its last checkpoint's weights
            typer.echo(f"note: {run_dir} has no {MODEL_FILE}: embedding with the weights of "
                       f"its {run.weights}", err=True)
        names = paths = None
        if has_labels(data, labels_key):
            dataset = run_data(run, data, x_key=x_key, labels_key=labels_key)
            x, labels = dataset.x, dataset.labels.numpy()
            paths = getattr(dataset, "paths", None)  # the files of an image folder
            # each file numbers its classes apart (folders in order): the names go with the
            # ids, so identify / verify / index compare two files by name
            if dataset.class_names is not None and labels.ndim == 1:
                names = np.asarray(dataset.class_names, dtype=str)
        else:  # raw inputs alone (a .npy, a .npz without labels): embeddings alone
            x = unlabelled_inputs(run, data, x_key=x_key, labels_key=labels_key)
            labels = None
        if store:
            from dmlkit.index.store import embed_to_store, model_fingerprint
            from dmlkit.runs.queries import input_spec, resizes_inputs

            def chunk(a: int, b: int) -> np.ndarray:
                return embed_data(run.model, x[a:b], batch_size, device)[0].numpy()

            # the weights are part of what the rows are: a retrained run starts a new store
            source = {"run_dir": str(run_dir.resolve()), "data": describe(data, x_key, labels_key),
                      "model_sha256": model_fingerprint(run.model)}
            # kept for the index built from the store, as dmlkit index build keeps them:
            # class names, source files, and what raw queries must look like
            spec = input_spec(x, any_size=resizes_inputs(run.model))
            done = embed_to_store(chunk, len(x), chunk(0, 1).shape[1], out, labels=labels,
                                  chunk_size=chunk_size, source=source,
                                  class_names=None if names is None else names.tolist(),
                                  paths=paths, input_info=spec.to_dict())
            typer.echo(f"stored {done.rows_done} embeddings of dim {done.dim} in {out}/")
            return
        emb = embed_data(run.model, x, batch_size=batch_size, device=device)[0]
        arrays = {} if labels is None else {"labels": labels}
        if names is not None:
            arrays["class_names"] = names
        from dmlkit.index.provenance import EMBEDDINGS_MODEL_KEY
        from dmlkit.index.store import model_fingerprint

        # the model that embedded them: dmlkit search refuses them for another model's index
        arrays[EMBEDDINGS_MODEL_KEY] = np.asarray(model_fingerprint(run.model))
        from dmlkit.training.checkpoint import atomic_write

        # through a temporary file beside it: a failure leaves no half-written .npz
        atomic_write(out, lambda f: np.savez(f, embeddings=emb.numpy(), **arrays))
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise _fail(one_line(err)) from None
    typer.echo(f"wrote {emb.shape[0]} embeddings of dim {emb.shape[1]} to {out}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("embed")(embed)


def _announcing(say: Any, first: str) -> Any:
    """``say``, printing ``first`` once before its first message."""
    pending = [first]

    def log(message: str) -> None:
        while pending:
            say(pending.pop())
        say(message)

    return log
