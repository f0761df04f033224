"""``dmlkit evaluate``: every metric of a run's (or a saved array's) embeddings, as tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from dmlkit.cli._errors import one_line
from dmlkit.cli._outputs import check_output_path, existing_inputs


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if value != value else f"{value:.4f}"  # (NaN: not measurable here)
    return str(value)


def _table(title: str, rows: dict[str, Any]) -> str:
    items = [(k, v) for k, v in rows.items() if not isinstance(v, (dict, list))]
    width = max((len(k) for k, _ in items), default=0)
    lines = [title] + [f"  {k.ljust(width)}  {_fmt(v)}" for k, v in items]
    return "\n".join(lines)


def format_report(result: dict[str, Any]) -> str:
    """Plain-text tables of an :func:`~dmlkit.evaluation.evaluate_embeddings` result."""
    head = [f"metric {result.get('metric')}"]
    if result.get("num_embeddings") is not None:
        head.insert(0, f"{result['num_embeddings']} embeddings")
    if result.get("seed") is not None:
        head.append(f"seed {result['seed']}")
    blocks = [", ".join(head)]
    for section in ("retrieval", "hierarchical", "clustering", "verification", "sts",
                    "triplets", "pairs"):
        if section in result:
            blocks.append(_table(section, result[section]))
    for name, shot in result.get("few_shot", {}).items():
        if "accuracy" in shot:
            ci = shot.get("ci95")
            spread = ("" if ci is None or ci != ci  # (one episode: no interval)
                      else f" ± {ci:.4f} (95% CI, {shot['episodes']} episodes)")
            blocks.append(f"few-shot {name}: {shot['accuracy']:.4f}{spread or ' (1 episode)'}")
        else:
            blocks.append(f"few-shot {name}: skipped ({shot.get('skipped')})")
    return "\n\n".join(blocks)


SECTIONS = ("retrieval", "clustering", "verification", "few_shot")


def _sections(text: str) -> list[str]:
    """``--sections`` as a list; empty or unknown names are a ``ValueError``."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        raise ValueError(f"--sections takes names from {','.join(SECTIONS)}, got {text!r}")
    return names


def read_embeddings(path: Path, emb_key: str | None = None,
                    labels_key: str | None = None) -> tuple[Any, Any]:
    """``(embeddings (n, dim), labels)`` of a ``.npz`` of embeddings.

    float64 embeddings stay float64 (every metric computes in it: float32 would flush
    tiny values to zero and overflow huge ones to infinity); any other real dtype is
    returned as float32.

    Labels may be ``(n,)`` integers, returned as int64, or class names, returned as a
    ``(n,)`` str array (:func:`~dmlkit.evaluation.evaluate_embeddings` numbers them and
    keys per-class results by name); ``(n, L)`` hierarchical labels, ids returned as
    int64 and names as a str array (a single column, ``(n, 1)``, is class labels:
    returned as ``(n,)``); or
    ``(n, C)`` bool multi-labels, returned as they are.

    Raises
    ------
    ValueError
        A missing array (naming the arrays the file has), embeddings that are not a
        finite ``(n, dim)`` matrix, labels that are not one per row, or whole-number
        float labels beyond the int64 range.
    TypeError
        Embeddings that are not real numbers (complex numbers, strings).
    """
    import numpy as np

    from dmlkit._checks import check_real_inputs
    from dmlkit.apps.embedding import check_finite_rows
    from dmlkit.data.npz import read_arrays

    arrays = read_arrays(path)
    emb_key, labels_key = emb_key or "embeddings", labels_key or "labels"
    for key, role in ((emb_key, "embeddings"), (labels_key, "labels")):
        if key not in arrays:
            raise ValueError(f"{path} has no array {key!r} (the {role}); its arrays are "
                             f"{list(arrays)}: name them with --x-key and --labels-key")
    emb, labels = arrays[emb_key], arrays[labels_key]
    if emb.ndim != 2:
        raise ValueError(f"{path}: {emb_key!r} must be a real (n, dim) matrix of embeddings, "
                         f"got shape {emb.shape} of dtype {emb.dtype}")
    check_real_inputs(emb, str(path), repr(emb_key),
                      hint="; name the embeddings array with --x-key")
    check_finite_rows(emb, f"{path}: {emb_key!r}")
    if labels.ndim not in (1, 2) or len(labels) != len(emb) or (
            labels.ndim == 2 and labels.shape[1] == 0):
        raise ValueError(f"{path}: {labels_key!r} must hold one label per embedding row "
                         f"({len(emb)}): (n,) class ids or names, (n, L) hierarchical "
                         f"ids or names or (n, C) bool multi-labels, got shape "
                         f"{labels.shape} of dtype {labels.dtype}")
    emb = emb if emb.dtype == np.float64 else emb.astype(np.float32)
    if labels.ndim == 2 and labels.dtype.kind == "b":  # multi-labels stay bool
        return emb, labels
    if labels.ndim == 2 and labels.shape[1] == 1:  # one column: class labels
        labels = labels[:, 0]
    if labels.dtype.kind in "USO":  # class names: kept, so results name the classes
        return emb, labels.astype(str)
    if labels.dtype.kind == "f" and np.array_equal(labels, np.round(labels)):
        from dmlkit.evaluation.retrieval import check_int64_range

        if labels.size:
            check_int64_range(float(labels.min()), float(labels.max()),
                              f"{path}: {labels_key!r}")
        labels = labels.astype(np.int64)
    elif labels.dtype.kind not in "iub":
        raise ValueError(f"{path}: {labels_key!r} must hold integer labels or class names, "
                         f"got dtype {labels.dtype}")
    return emb, labels.astype(np.int64)


def evaluate(
    run_dir: Path = typer.Argument(
        ..., help="A run directory written by dmlkit train, or a .npz with embeddings, labels."
    ),
    data: str = typer.Option(
        "heldout", "--data",
        help="'heldout' or 'train' (the run's splits), a dataset name, .npz, IDX, image or "
        "audio (speaker) folder, or .yaml config.",
    ),
    x_key: str | None = typer.Option(
        None, "--x-key", help="Array of a .npz --data that holds the inputs (default 'x'); "
        "when RUN_DIR is a .npz, the array of embeddings (default 'embeddings')."),
    labels_key: str | None = typer.Option(
        None, "--labels-key", "--y-key",
        help="Array of the .npz that holds the labels (default 'labels')."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="JSON output; default RUN_DIR/evaluation.json, or "
        "FILE.evaluation.json beside a .npz FILE of embeddings."
    ),
    metric: str = typer.Option("euclidean", "--metric", help="euclidean, cosine or dot."),
    sections: str = typer.Option(
        ",".join(SECTIONS), "--sections", help=f"Comma-separated subset of {','.join(SECTIONS)}.",
    ),
    seed: int = typer.Option(0, "--seed"),
    episodes: int = typer.Option(600, "--episodes", help="Few-shot episodes per setting."),
    per_class: bool = typer.Option(False, "--per-class", help="Per-class retrieval in JSON."),
    full_ranking: bool = typer.Option(
        False, "--full-ranking", help="Also mAP over the full ranking and MRR (slower)."
    ),
    device: str = typer.Option(
        "cpu", "--device", help="Where a run's model embeds (cpu, cuda); checked for a .npz "
        "of embeddings too."),
) -> None:
    """Retrieval, clustering, verification and few-shot metrics, printed and saved as JSON."""
    from dmlkit.cli._embedding_inputs import refuse_embeddings
    from dmlkit.cli._fewshot_checks import check_episodes
    from dmlkit.evaluation import evaluate_embeddings
    from dmlkit.runs import evaluate_run
    from dmlkit.training.device import check_device
    from dmlkit.training.rng import check_seed

    try:  # the seed rule of every command (refused first, exit status 1 as every error line)
        check_seed(seed, "--seed")
        check_episodes(episodes, "--episodes")
        check_device(device, "--device")  # (whatever RUN_DIR is: never silently ignored)
    except ValueError as err:
        raise _fail(str(err)) from None
    try:
        from dmlkit.functional.retrieval import canonical_metric

        metric = canonical_metric(metric)  # a bad name fails before any embedding
        options = {"metric": metric, "sections": _sections(sections), "seed": seed,
                   "episodes": episodes, "per_class": per_class, "full_ranking": full_ranking,
                   "log": lambda line: typer.echo(line, err=True)}  # progress, on stderr
        if run_dir.is_file() and run_dir.suffix.lower() != ".npz":
            raise ValueError(f"{run_dir} is a file, not a run directory or a .npz of "
                             "embeddings: save them with np.savez(path, embeddings=..., "
                             "labels=...)")
        if run_dir.suffix.lower() == ".npz" and run_dir.is_file():
            if data != "heldout":
                raise ValueError(f"{run_dir} holds embeddings already; --data names what a "
                                 "run directory's model embeds")
            target = out if out is not None else run_dir.with_suffix(".evaluation.json")
            check_output_path(target, "--out", {"the embeddings file": run_dir},
                              what="JSON file")
            emb, labels = read_embeddings(run_dir, x_key, labels_key)
            result = evaluate_embeddings(emb, labels, out=target, **options)
        else:
            target = out if out is not None else run_dir / "evaluation.json"
            given = None if data in ("heldout", "train") else data  # (a split of the run)
            refuse_embeddings(given, x_key, fix=f"evaluate them as they are with dmlkit "
                              f"evaluate {given} (the file in place of RUN_DIR)")
            check_output_path(target, "--out", existing_inputs({"the --data input": given}),
                              what="JSON file", run_dir=run_dir, allow=("evaluation.json",))
            result = evaluate_run(run_dir, data, out=target, device=device, x_key=x_key,
                                  labels_key=labels_key, **options)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise _fail(one_line(err)) from None
    typer.echo(format_report(result))
    typer.echo(f"\nwrote {target}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
