"""``dmlkit classical fit|evaluate``: Mahalanobis learners on frozen embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from dmlkit.cli._npz_keys import labels_key_option, x_key_option

#: ``--x-key`` / ``--labels-key`` of an ``.npz`` SOURCE (its held-out arrays: heldout_KEY)
X_KEY = x_key_option("an .npz SOURCE (held out: heldout_KEY)", "'embeddings'")
LABELS_KEY = labels_key_option("an .npz SOURCE (held out: heldout_KEY)")

#: what ``classical fit`` and ``classical evaluate`` read as SOURCE
SOURCE_HELP = ("Run directory, or .npz with embeddings/labels (and heldout_embeddings/"
               "heldout_labels; with --x-key / --labels-key K: K and heldout_K).")
#: seconds between two of the solver's progress lines on stderr
PROGRESS_EVERY = 2.0

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
        key = key.strip()
        try:
            params[key] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            first = str(err).splitlines()[0]
            raise ValueError(f"--param {key}: the value {value!r} is not YAML ({first}); "
                             "quote it or fix it (e.g. --param bounds=[0.5,5])") from None
    return params


def _scores(components: Any, splits: Any) -> dict[str, Any]:
    """:func:`~dmlkit.classical.frozen.evaluate_metric`, its warnings (a k-NN vote over
    fewer rows, held-out classes never seen in training) printed once each as
    ``warning:`` lines on stderr."""
    import warnings

    from dmlkit.classical.frozen import evaluate_metric

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate_metric(components, splits)
    for message in dict.fromkeys(str(w.message) for w in caught):
        typer.echo(f"warning: {message}", err=True)
    return result


def _table(result: dict[str, Any]) -> str:
    """The held-out metrics of the inputs as given (``raw`` in the JSON: a run's own
    embeddings, or an array's rows) beside the learned metric's."""
    keys = list(result["raw"])
    width = max([16, *map(len, keys)])  # (knn_accuracy_seen_classes is longer)
    rows = [f"{'metric':<{width}} {'inputs':>8}"
            + (f" {'learned':>8}" if "learned" in result else "")]
    for key in keys:
        row = f"{key:<{width}} {result['raw'][key]:>8.4f}"
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
    if source.suffix.lower() == ".npz" and source.is_file():
        return embeddings_fingerprint(source)
    return None


def _check_out(out: Path, source: Path) -> None:
    """Refuse an ``--out`` folder that is the source, a run directory, a saved directory
    (an index, a kit) or lies inside one (:func:`check_output_folder`), or that holds
    other files than an earlier fit's (which are replaced, as ``index build`` replaces an
    earlier index: :func:`check_own_folder`)."""
    from dmlkit.classical.frozen import COMPONENTS_FILE, METRIC_FILE
    from dmlkit.cli._outputs import check_output_folder, check_own_folder
    from dmlkit.runs.run_files import is_run_dir

    if is_run_dir(out):
        raise ValueError(f"--out {out} is a run directory; the metric's files would be "
                         f"written among the run's own files: give another folder (e.g. "
                         f"{out / 'metric'})")
    check_output_folder(out, "--out", {"the source": source})
    own = (COMPONENTS_FILE, METRIC_FILE, COMPONENTS_FILE + ".tmp.npy", METRIC_FILE + ".tmp")
    check_own_folder(out, own, f"fitted metric ({COMPONENTS_FILE}, {METRIC_FILE})")


def _check_source(source: Path, x_key: str | None, labels_key: str | None) -> None:
    """Refuse a SOURCE that does not exist, and array names for a run directory (whose
    model embeds its own splits), before anything else is read."""
    if not source.exists():
        raise FileNotFoundError(f"{source} is neither a run directory nor an .npz file: it "
                                "does not exist; give a run directory or an .npz of "
                                "embeddings and labels")
    if source.is_dir() and (x_key is not None or labels_key is not None):
        raise ValueError("--x-key / --labels-key name the arrays of an .npz SOURCE; a run "
                         f"directory ({source}) embeds its own train and held-out splits")


def _load(source: Path, x_key: str | None, labels_key: str | None, device: str) -> Any:
    """The train / held-out splits of ``source``: a run's (embedded by its model) or an
    ``.npz``'s, its arrays named by ``x_key`` / ``labels_key``."""
    from dmlkit.classical.frozen import load_embeddings

    return load_embeddings(source, device=device, x_key=x_key or "embeddings",
                           labels_key=labels_key or "labels",
                           hint="; name the arrays with --x-key and --labels-key")


class _SolverProgress:
    """A text stream for a learner's ``verbose`` lines: each becomes a line on stderr
    behind ``prefix``, at most one every ``every`` seconds unless ``every`` is 0 (the
    first line always; :meth:`close` adds the last one when it was held back)."""

    def __init__(self, prefix: str, every: float = PROGRESS_EVERY) -> None:
        self.prefix, self.every = prefix, every
        self.pending, self.held, self.last = "", None, None

    def write(self, text: str) -> int:
        import time

        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in filter(str.strip, lines):
            now = time.monotonic()
            if self.last is None or now - self.last >= self.every:
                typer.echo(f"{self.prefix}{line}", err=True)
                self.held, self.last = None, now
            else:
                self.held = line
        return len(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.write("\n")
        if self.held is not None:
            typer.echo(f"{self.prefix}{self.held}", err=True)
            self.held = None


def _warn_no_heldout(splits: Any, source: Path, x_key: str | None, labels_key: str | None,
                     shown: str = "table") -> None:
    """Say on stderr when ``source`` has no held-out items, so that the ``shown`` output
    (the table, or the JSON) scores the metric on the training items."""
    if splits.heldout is splits.train or (splits.heldout.shape == splits.train.shape and bool(
            (splits.heldout == splits.train).all())):
        typer.echo(f"warning: {source} has no held-out items (heldout_"
                   f"{x_key or 'embeddings'} / heldout_{labels_key or 'labels'}): the {shown} "
                   "below scores the metric on the items it was fitted on, which flatters it",
                   err=True)


def _fit(splits: Any, method: str, params: dict[str, Any], source: Path) -> Any:
    """Fit ``method`` on the train split, saying on stderr what is fitted and, where the
    learner has a ``verbose`` option, the solver's progress (its own lines, thinned to one
    every :data:`PROGRESS_EVERY` seconds unless ``--param verbose=true`` asks for all)."""
    import contextlib

    from dmlkit.classical.frozen import fit_on_embeddings, make_learner

    n, dim = splits.train.shape
    typer.echo(f"classical fit: fitting {method} on {n} x {dim} train embeddings of "
               f"{source}", err=True)
    asked = "verbose" in params
    verbose = "verbose" in make_learner(method).get_params() and not asked
    stream = _SolverProgress("classical fit: ", PROGRESS_EVERY if verbose else 0.0)
    try:
        with contextlib.redirect_stdout(stream):  # (stdout keeps the final table alone)
            learner = fit_on_embeddings(splits.train, splits.train_labels, method,
                                        {**params, "verbose": True} if verbose else params)
    finally:
        stream.close()
    if verbose:
        learner.set_params(verbose=False)  # (metric.json's params: as the user gave them)
    return learner


@classical_app.command("fit")
def fit(
    source: Path = typer.Argument(..., help=SOURCE_HELP),
    method: str = typer.Option("nca", "--method", "-m", help="nca, lmnn, itml, lfda or mlkr."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: components.npy + "
                             "metric.json (new, empty, or an earlier fit's, which is "
                             "replaced)."),
    x_key: str | None = X_KEY,
    labels_key: str | None = LABELS_KEY,
    param: list[str] = typer.Option([], "--param", "-p", help="Learner parameter key=value."),
    device: str = typer.Option("cpu", "--device", help="Device for embedding the run."),
) -> None:
    """Fit a Mahalanobis metric on the train-split embeddings; save it and evaluate it.

    Progress goes to stderr; the table of held-out metrics to stdout.
    """
    import time

    from dmlkit.classical.frozen import make_learner, save_metric
    try:
        _check_source(source, x_key, labels_key)
        _check_out(out, source)  # before the fit, not after it
        params = _params(param)
        if "random_state" in make_learner(method).get_params():  # (unknown method: raises)
            params.setdefault("random_state", 0)  # a command gives one result (--param to vary)
        splits = _load(source, x_key, labels_key, device)
        model_sha = _source_fingerprint(source)  # the metric holds for that model's space
        start = time.perf_counter()
        learner = _fit(splits, method, params, source)
        seconds = time.perf_counter() - start
        extra: dict[str, Any] = {"source": str(source), "fit_seconds": round(seconds, 3)}
        if model_sha is not None:
            from dmlkit.index.provenance import EMBEDDINGS_MODEL_KEY

            extra[EMBEDDINGS_MODEL_KEY] = model_sha
        save_metric(learner, out, extra=extra)  # kept, whatever scoring it meets
    except (ValueError, TypeError, OSError) as err:  # TypeError: a bad --param
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    try:
        result = _scores(learner.components_, splits)
        save_metric(learner, out, extra={**extra, "evaluation": result})
    except (ValueError, TypeError, OSError) as err:
        typer.echo(f"error: the fitted metric is saved in {out}, but scoring it failed: "
                   f"{err}; score it with dmlkit classical evaluate {source} --metric {out}",
                   err=True)
        raise typer.Exit(1) from err
    typer.echo(f"{method}: fit on {splits.train.shape[0]} x {splits.train.shape[1]} in "
               f"{seconds:.2f} s -> {out}")
    _warn_no_heldout(splits, source, x_key, labels_key)
    typer.echo(_table(result))


@classical_app.command("evaluate")
def evaluate(
    source: Path = typer.Argument(..., help=SOURCE_HELP),
    metric: Path = typer.Option(..., "--metric", help="Directory written by `classical fit`."),
    x_key: str | None = X_KEY,
    labels_key: str | None = LABELS_KEY,
    device: str = typer.Option("cpu", "--device", help="Device for embedding the run."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Compare raw embeddings with a saved learned metric on the held-out split."""
    from dmlkit.classical.frozen import load_metric, to_json

    try:
        from dmlkit.index.provenance import EMBEDDINGS_MODEL_KEY

        _check_source(source, x_key, labels_key)  # the data first, then the metric
        if not metric.is_dir():
            raise FileNotFoundError(f"--metric {metric} " + (
                "is a file" if metric.exists() else "does not exist")
                + ": give a directory written by dmlkit classical fit")
        components, meta = load_metric(metric)
        splits = _load(source, x_key, labels_key, device)
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
        result = _scores(components, splits)
    except (ValueError, TypeError, OSError) as err:  # TypeError: non-numeric arrays
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from err
    _warn_no_heldout(splits, source, x_key, labels_key, "JSON" if as_json else "table")
    typer.echo(to_json(result) if as_json else _table(result))


def register(app: typer.Typer) -> None:
    app.add_typer(classical_app, name="classical")
