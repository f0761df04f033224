"""``dmlkit classical fit|evaluate``: Mahalanobis learners on frozen embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

classical_app = typer.Typer(
    help="Classical Mahalanobis metric learning (NCA, LMNN, ITML, LFDA, MLKR) on frozen "
    "embeddings.",
    no_args_is_help=True,
)


def _params(items: list[str]) -> dict[str, Any]:
    import yaml

    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param needs key=value (e.g. --param n_components=8), got "
                             f"{item!r}")
        params[key.strip()] = yaml.safe_load(value)
    return params


def _table(result: dict[str, Any]) -> str:
    """The held-out metrics of the inputs as given (``raw`` in the JSON: a run's own
    embeddings, or an array's rows) beside the learned metric's."""
    keys = list(result["raw"])
    rows = [f"{'metric':<16} {'inputs':>8}"
            + (f" {'learned':>8}" if "learned" in result else "")]
    for key in keys:
        row = f"{key:<16} {result['raw'][key]:>8.4f}"
        if "learned" in result:
            row += f" {result['learned'][key]:>8.4f}"
        rows.append(row)
    return "\n".join(rows)


def _source_fingerprint(source: Path) -> str | None:
    """The fingerprint of the model whose embeddings ``source`` holds: a run directory's
    weights, or what an ``.npz`` of ``dmlkit embed`` records (``None``: unknown)."""
    from dmlkit.index.provenance import embeddings_fingerprint

    if source.is_dir():
        from dmlkit.apps.persistence import run_fingerprint

        return run_fingerprint(source)
    if source.suffix == ".npz" and source.is_file():
        return embeddings_fingerprint(source)
    return None


def _check_out(out: Path, source: Path) -> None:
    """Refuse an ``--out`` folder that is the source, a run directory, a saved directory
    (an index, a kit) or lies inside one (:func:`check_output_folder`)."""
    from dmlkit.cli._outputs import check_output_folder
    from dmlkit.runs.run_files import is_run_dir

    if is_run_dir(out):
        raise ValueError(f"--out {out} is a run directory; the metric's files would be "
                         f"written among the run's own files: give another folder (e.g. "
                         f"{out / 'metric'})")
    check_output_folder(out, "--out", {"the source": source})


@classical_app.command("fit")
def fit(
    source: Path = typer.Argument(..., help="Run directory, or .npz with embeddings/labels."),
    method: str = typer.Option("nca", "--method", "-m", help="nca, lmnn, itml, lfda or mlkr."),
    out: Path = typer.Option(..., "--out", "-o", help="Output: components.npy + metric.json."),
    param: list[str] = typer.Option([], "--param", "-p", help="Learner parameter key=value."),
    device: str = typer.Option("cpu", "--device", help="Device for embedding the run."),
) -> None:
    """Fit a Mahalanobis metric on the train-split embeddings; save it and evaluate it."""
    import time

    from dmlkit.classical.frozen import (
        evaluate_metric,
        fit_on_embeddings,
        load_embeddings,
        make_learner,
        save_metric,
    )
    try:
        _check_out(out, source)  # before the fit, not after it
        params = _params(param)
        if "random_state" in make_learner(method).get_params():  # (unknown method: raises)
            params.setdefault("random_state", 0)  # a command gives one result (--param to vary)
        splits = load_embeddings(source, device=device)
        model_sha = _source_fingerprint(source)  # the metric holds for that model's space
        start = time.perf_counter()
        learner = fit_on_embeddings(splits.train, splits.train_labels, method, params)
        seconds = time.perf_counter() - start
        result = evaluate_metric(learner.components_, splits)
        extra: dict[str, Any] = {"source": str(source), "fit_seconds": round(seconds, 3),
                                 "evaluation": result}
        if model_sha is not None:
            from dmlkit.index.provenance import EMBEDDINGS_MODEL_KEY

            extra[EMBEDDINGS_MODEL_KEY] = model_sha
        save_metric(learner, out, extra=extra)
    except (ValueError, TypeError, OSError) as err:  # TypeError: a bad --param
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    typer.echo(f"{method}: fit on {splits.train.shape[0]} x {splits.train.shape[1]} in "
               f"{seconds:.2f} s -> {out}")
    if splits.heldout is splits.train or (splits.heldout.shape == splits.train.shape and bool(
            (splits.heldout == splits.train).all())):
        typer.echo(f"warning: {source} has no held-out items (heldout_embeddings / "
                   "heldout_labels): the table below scores the metric on the items it was "
                   "fitted on, which flatters it", err=True)
    typer.echo(_table(result))


@classical_app.command("evaluate")
def evaluate(
    source: Path = typer.Argument(..., help="Run directory, or .npz with embeddings/labels."),
    metric: Path = typer.Option(..., "--metric", help="Directory written by `classical fit`."),
    device: str = typer.Option("cpu", "--device", help="Device for embedding the run."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Compare raw embeddings with a saved learned metric on the held-out split."""
    from dmlkit.classical.frozen import evaluate_metric, load_embeddings, load_metric, to_json

    try:
        from dmlkit.index.provenance import EMBEDDINGS_MODEL_KEY

        components, meta = load_metric(metric)
        splits = load_embeddings(source, device=device)
        fitted_sha, source_sha = meta.get(EMBEDDINGS_MODEL_KEY), _source_fingerprint(source)
        if fitted_sha is not None and source_sha is not None and fitted_sha != source_sha:
            fitted_on = meta.get("source") or "another model's embeddings"
            raise ValueError(
                f"the metric {metric} was fitted on embeddings of another model than "
                f"{source}: it was fitted on {fitted_on}, and {source} was embedded by a model "
                "with different weights, so its learned map does not apply; embed both with "
                "the same run, or fit the metric again on embeddings of this model "
                f"(dmlkit classical fit {source} --out DIR)")
        if components.shape[1] != splits.heldout.shape[1]:
            raise ValueError(f"metric expects dim {components.shape[1]}, embeddings have "
                             f"{splits.heldout.shape[1]}")
        if fitted_sha is not None and source_sha is None:
            typer.echo(f"warning: {source} records no model fingerprint, so the model that "
                       f"embedded it cannot be checked against the one the metric {metric} "
                       f"was fitted on ({EMBEDDINGS_MODEL_KEY} {str(fitted_sha)[:12]}); the "
                       "metric is applied assuming both come from that model (embed the data "
                       "with `dmlkit embed` to record it)", err=True)
        result = evaluate_metric(components, splits)
    except (ValueError, TypeError, OSError) as err:  # TypeError: non-numeric arrays
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    typer.echo(to_json(result) if as_json else _table(result))


def register(app: typer.Typer) -> None:
    app.add_typer(classical_app, name="classical")
