"""``dmlkit evaluate``: every metric of a run's (or a saved array's) embeddings, as tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.4f}"
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
    for section in ("retrieval", "clustering", "verification", "sts", "triplets", "pairs"):
        if section in result:
            blocks.append(_table(section, result[section]))
    for name, shot in result.get("few_shot", {}).items():
        if "accuracy" in shot:
            blocks.append(f"few-shot {name}: {shot['accuracy']:.4f} ± {shot['ci95']:.4f} "
                          f"(95% CI, {shot['episodes']} episodes)")
        else:
            blocks.append(f"few-shot {name}: skipped ({shot.get('skipped')})")
    return "\n\n".join(blocks)


def evaluate(
    run_dir: Path = typer.Argument(
        ..., help="A run directory written by dmlkit train, or a .npz with embeddings, labels."
    ),
    data: str = typer.Option(
        "heldout", "--data",
        help="'heldout' or 'train' (the run's splits), a dataset name, .npz, IDX or image "
        "folder, or .yaml config.",
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="JSON output; default RUN_DIR/evaluation.json."
    ),
    metric: str = typer.Option("euclidean", "--metric", help="euclidean, cosine or dot."),
    sections: str = typer.Option(
        "retrieval,clustering,verification,few_shot", "--sections",
        help="Comma-separated subset of retrieval,clustering,verification,few_shot.",
    ),
    seed: int = typer.Option(0, "--seed"),
    episodes: int = typer.Option(600, "--episodes", help="Few-shot episodes per setting."),
    per_class: bool = typer.Option(False, "--per-class", help="Per-class retrieval in JSON."),
    full_ranking: bool = typer.Option(
        False, "--full-ranking", help="Also mAP over the full ranking and MRR (slower)."
    ),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Retrieval, clustering, verification and few-shot metrics, printed and saved as JSON."""
    from dmlkit.evaluation import evaluate_embeddings
    from dmlkit.runs import evaluate_run

    options = {"metric": metric, "sections": [s.strip() for s in sections.split(",") if s],
               "seed": seed, "episodes": episodes, "per_class": per_class,
               "full_ranking": full_ranking,
               "log": lambda line: typer.echo(line, err=True)}  # progress, on stderr
    try:
        if run_dir.suffix == ".npz" and run_dir.is_file():
            from dmlkit.data.npz import read_arrays

            arrays = read_arrays(run_dir)
            if "embeddings" not in arrays or "labels" not in arrays:
                raise ValueError(f"{run_dir} needs arrays 'embeddings' and 'labels'")
            emb, labels = arrays["embeddings"], arrays["labels"]
            target = out if out is not None else run_dir.with_suffix(".evaluation.json")
            result = evaluate_embeddings(emb.astype("float32"), labels, out=target, **options)
        else:
            target = out if out is not None else run_dir / "evaluation.json"
            result = evaluate_run(run_dir, data, out=target, device=device, **options)
    except (FileNotFoundError, ValueError, TypeError, KeyError) as err:
        raise _fail(str(err)) from None
    typer.echo(format_report(result))
    typer.echo(f"\nwrote {target}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
