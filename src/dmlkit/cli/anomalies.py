"""``dmlkit detect-anomalies``: fit a detector on normal data, score a file, write scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from dmlkit._checks import is_number_text
from dmlkit.cli._recognition_options import device_option

#: the array of --data that marks its anomalous rows (1 anomaly, 0 normal) by default;
#: another one (class labels are not anomaly marks) only when named with --truth-key
TRUTH_KEY = "anomaly"


def read_rows(path: Path, key: str | None, extra: str | tuple[str, ...]) -> tuple[Any, Any]:
    """``(x, extra_or_None)`` from a ``.npz`` (array ``key``, by default ``x``, else
    ``embeddings`` as ``dmlkit embed`` writes them, and the first of the arrays
    named by ``extra`` that is present), a ``.npy`` or a numeric ``.csv`` (with or
    without a header line)."""
    x, found, _ = read_rows_named(path, key, (extra,) if isinstance(extra, str) else extra)
    return x, found


def read_rows_named(path: Path, key: str | None, extra: tuple[str, ...]
                    ) -> tuple[Any, Any, str | None]:
    """:func:`read_rows`, also giving the name of the ``extra`` array found (or None)."""
    import numpy as np

    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    from dmlkit.data.npz import read_arrays

    if suffix in (".npz", ".npy"):  # (an empty or truncated file: a ValueError naming it)
        arrays = read_arrays(path)
        if suffix == ".npy":
            return arrays["x"], None, None
        if key is None:  # (as verify, identify and fewshot: x, else embeddings)
            key = next((k for k in ("x", "embeddings") if k in arrays), "x")
        if key not in arrays:
            raise ValueError(f"{path} has no array {key!r} (arrays: {sorted(arrays)}); "
                             "name it with --x-key")
        found = [name for name in extra if name in arrays and name != key]
        return arrays[key], (arrays[found[0]] if found else None), (found[0] if found else None)
    if suffix == ".csv":
        lines = path.read_text().splitlines()
        first = lines[0] if lines else ""
        skip = 0 if all(is_number_text(v) for v in first.strip().split(",")) else 1
        if not any(line.strip() for line in lines[skip:]):  # empty, or a header only
            return np.zeros((0, 0)), None, None
        try:
            return np.loadtxt(path, delimiter=",", skiprows=skip, ndmin=2), None, None
        except ValueError as err:  # the file and line, not numpy's count of data rows
            raise ValueError(f"{path}: {_csv_problem(lines, skip) or err}") from None
    raise ValueError(f"{path}: expected a .npz, .npy or .csv file")


def read_scored(path: Path, key: str | None, truth_key: str | None
                ) -> tuple[Any, Any, str | None, str | None]:
    """``(x, truth_or_None, truth_name, note)`` of the ``--data`` file ``path``: its rows
    and the array marking its anomalous rows, ``truth_key`` (``--truth-key``; a
    ``ValueError`` when ``path`` lacks it) or else ``"anomaly"``. A ``labels`` array is
    never read as the marks unless named: the ``note`` then says how to get metrics."""
    extra = (truth_key,) if truth_key is not None else (TRUTH_KEY, "labels")
    x, truth, name = read_rows_named(path, key, extra)
    if truth_key is not None and name is None:
        raise ValueError(_missing_truth(path, truth_key))
    if truth_key is None and name == "labels":
        return x, None, None, (
            f"--data {path} has a 'labels' array but no 'anomaly' array: AUROC and average "
            "precision need an 'anomaly' array (1 anomaly, 0 normal per row), or --truth-key "
            "labels when its labels are such marks")
    return x, truth, name, None


def _missing_truth(path: Path, truth_key: str) -> str:
    """Why the ``--truth-key`` array ``truth_key`` cannot be read from ``path``."""
    if path.suffix.lower() != ".npz":
        return (f"--truth-key {truth_key} names an array of a .npz --data, but {path} is a "
                f"{path.suffix or 'suffixless'} file; save the rows and the marks in a .npz")
    from dmlkit.data.npz import read_arrays

    names = sorted(read_arrays(path))
    if truth_key in names:  # (it is the array of the rows)
        return (f"--truth-key {truth_key} names the array of the rows of {path}; name the "
                "array of 1 (anomaly) / 0 (normal) marks")
    return f"--data {path} has no array {truth_key!r} (--truth-key); its arrays are {names}"


def check_same_width(x_normal: Any, normal: Path, x: Any, data: Path) -> None:
    """Refuse ``--normal`` and ``--data`` rows of different widths (or shapes) before a
    detector is fitted on one of them and saved."""
    if tuple(x_normal.shape[1:]) == tuple(x.shape[1:]):
        return

    def per_row(a: Any) -> str:
        return f"{a.shape[1]} features" if a.ndim == 2 else f"shape {tuple(a.shape[1:])}"

    raise ValueError(f"--normal {normal} has rows of {per_row(x_normal)} but --data {data} "
                     f"rows of {per_row(x)}: a detector scores data of the features it is "
                     "fitted on; give both files the same columns")


def _csv_problem(lines: list[str], skip: int) -> str | None:
    """What is wrong with the first bad line of a numeric CSV (its number in the file,
    blank lines counted), or None when no line is found wrong."""
    width = None
    for number, line in enumerate(lines[skip:], start=skip + 1):
        if not line.strip():
            continue
        fields = line.split(",")
        width = len(fields) if width is None else width
        if len(fields) != width:
            return (f"line {number} has {len(fields)} fields, the lines above {width}; give "
                    "every row the same number of values")
        bad = next((c for c, v in enumerate(fields) if not is_number_text(v)), None)
        if bad is not None:
            return (f"line {number}, column {bad + 1}: {fields[bad].strip()!r} is not a "
                    "number; fill it in or drop the line")
    return None


def truth_metrics(truth: Any, scores: Any, path: Path,
                  name: str = "anomaly") -> tuple[dict[str, float], str | None]:
    """``(metrics, why_none)``: AUROC and average precision of ``scores`` (higher = more
    normal) against ``truth`` (array ``name`` of ``path``: 1 = anomaly, 0 = normal), or no
    metrics and the reason."""
    import numpy as np

    from dmlkit._checks import first_few

    truth = np.asarray(truth)
    if truth.ndim != 1 or len(truth) != len(scores):
        return {}, (f"the {name} array of {path} has shape {truth.shape}, not one value per "
                    f"row ({len(scores)} rows)")
    values = np.unique(truth)
    if truth.dtype.kind not in "biuf" or not set(values.tolist()) <= {0, 1}:
        shown = first_few(values, 6)
        return {}, (f"the {name} array of {path} must be 0 (normal) or 1 (anomaly) per row, "
                    f"got the values {shown}; mark the anomalous rows with 1 and the rest "
                    "with 0 (class labels are not anomaly marks)")
    if len(values) < 2:
        kind = "anomalies" if values.size and values[0] == 1 else "normal rows"
        return {}, (f"every row of {path} is marked as {kind}: AUROC and average precision "
                    "need both normal (0) and anomalous (1) rows")
    from sklearn.metrics import average_precision_score, roc_auc_score

    anomalous = truth == 1
    return {"auroc": float(roc_auc_score(anomalous, -scores)),
            "average_precision": float(average_precision_score(anomalous, -scores))}, None


def check_rows(x: Any, option: str, path: Path) -> None:
    """Raise a ``ValueError`` naming ``option`` and ``path`` when ``x`` is not rows (fewer
    than 2 dimensions), has no rows or holds NaN or infinite values (a ``TypeError`` when
    it holds no numbers)."""
    import numpy as np

    from dmlkit._checks import check_real_inputs
    from dmlkit.apps.embedding import check_finite_rows

    if np.ndim(x) < 2:
        raise ValueError(f"{option} {path} holds a {np.ndim(x)}-D array of {np.size(x)} "
                         "values, not rows: save one row per item, shape (n, d) (one "
                         "feature per item: x.reshape(-1, 1))")
    if len(x) == 0:
        raise ValueError(f"{option} {path} holds no items")
    check_real_inputs(np.asarray(x), f"{option} {path}", "its rows")
    check_finite_rows(x, f"{option} {path}")


#: the options of the settings a saved detector fixes (:data:`dmlkit.apps.detectors.SETTINGS`)
OPTIONS = ("--method", "--contamination", "--k")


def check_save(save: Path, kind: str) -> None:
    """Refuse, before any fitting, a ``--save`` directory the detector (class ``kind``)
    cannot be saved to: a file, a folder of other files (a run, an embedding store),
    another kind of saved model, or a folder inside a saved directory."""
    from dmlkit.apps.persistence import KIT_FORMAT
    from dmlkit.cli._outputs import check_outside_saved
    from dmlkit.index.io import check_replaceable

    check_replaceable(save, KIT_FORMAT, kind)  # (a FileExistsError naming what is there)
    check_outside_saved(save, "--save")


def warn_input_range(run_dir: Path | str, *inputs: tuple[Any, str]) -> None:
    """Print a ``warning:`` line for each ``(x, source)`` of ``inputs`` whose raw inputs
    ``x`` range far beyond those the model of ``run_dir`` was trained on: the check
    ``dmlkit embed`` makes (:func:`~dmlkit.runs.queries.check_input_range`). A run whose
    data cannot be read (nothing to compare with) passes."""
    import warnings

    import numpy as np

    from dmlkit.runs import load_run
    from dmlkit.runs.queries import check_input_range, run_input_spec

    try:
        spec = run_input_spec(load_run(run_dir))
    except (OSError, ValueError):
        return  # (loading the run to embed says what is wrong with it)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for x, source in inputs:
            check_input_range(np.asarray(x), spec, source)
    for w in caught:
        typer.echo(f"warning: {w.message}", err=True)


def option_words(message: str) -> str:
    """A detector's message with its parameter ``n_neighbors`` named as this command's
    option ``--k`` (``n_neighbors=1000`` reads ``--k 1000``)."""
    import re

    message = re.sub(r"(?<![\w/.-])n_neighbors=", "--k ", message)
    return re.sub(r"(?<![\w/.-])n_neighbors\b", "--k", message)


def summary_file(out: Path) -> Path:
    """The JSON summary written beside the scores ``out`` (``x.json`` for ``x.csv``;
    ``x.summary.json`` when ``out`` itself ends in ``.json``)."""
    summary_path = out.with_suffix(".json")
    if summary_path == out:  # --out x.json: the summary must not replace the scores
        summary_path = out.with_name(out.stem + ".summary.json")
    return summary_path


def register(app: typer.Typer) -> None:
    @app.command("detect-anomalies")
    def detect_anomalies(
        run_dir: Path = typer.Argument(
            None, help="Run directory whose model embeds the inputs (omit: raw features)."),
        normal: Path = typer.Option(None, "--normal",
                                    help="Normal data to fit on (.npz/.npy/.csv)."),
        data: Path = typer.Option(..., "--data", help="Data to score (.npz/.npy/.csv)."),
        out: Path = typer.Option(Path("anomaly_scores.csv"), "--out", "-o",
                                 help="CSV of row, score, outlier (+ a .json summary)."),
        method: str = typer.Option(None, "--method", help="knn (default), prototype, "
                                   "mahalanobis or deep_svdd."),
        contamination: float = typer.Option(None, "--contamination", help="Expected "
                                            "fraction of outliers; sets the threshold "
                                            "(default 0.1)."),
        n_neighbors: int = typer.Option(None, "--k", "-k", help="Neighbours of the knn "
                                        "score (default 5)."),
        key: str | None = typer.Option(None, "--x-key", "--key", help="Array of the .npz "
                                       "--normal and --data that holds the rows (default "
                                       "'x', else 'embeddings')."),
        truth_key: str | None = typer.Option(None, "--truth-key", help="Array of the .npz "
                                             "--data marking its anomalous rows (1 anomaly, "
                                             "0 normal) for AUROC and average precision "
                                             "(default 'anomaly'; e.g. --truth-key labels)."),
        save: Path = typer.Option(None, "--save", help="Also save the fitted detector to "
                                  "this directory (reuse it with --detector)."),
        detector: Path = typer.Option(None, "--detector", help="Score with a detector saved "
                                      "by --save instead of fitting one on --normal."),
        device: str = device_option(),
    ) -> None:
        """Score how anomalous each row of --data is, relative to --normal.

        Higher scores are more normal (scikit-learn's convention); rows below the
        threshold set by --contamination are flagged as outliers. When --data carries
        an ``anomaly`` array (or the array named by --truth-key) of 1 (anomaly) / 0
        (normal) per row, AUROC and average precision are reported; a ``labels`` array
        holds class labels and is read as such marks only with --truth-key labels.
        With --detector the saved detector's own method, embedder and threshold are used.
        Fitted on embeddings (no RUN_DIR), --save records the fingerprint of the model that
        embedded --normal (as dmlkit embed writes it), and a saved detector refuses --data
        embedded by another model.
        """
        import warnings

        import numpy as np

        from dmlkit.apps import detectors
        from dmlkit.apps.persistence import run_embedder
        from dmlkit.cli._outputs import check_output_path
        from dmlkit.cli._recognition_data import data_model
        from dmlkit.cli._recognition_options import check_detector_options, cli_device
        from dmlkit.evaluation import write_json
        from dmlkit.index.provenance import check_same_model

        try:
            cli_device(device, None if run_dir is None and detector is None
                       else "dmlkit detect-anomalies")
            if (normal is None) == (detector is None):
                raise ValueError("pass --normal (data to fit a detector on) or --detector (a "
                                 "saved one), not both or neither")
            if detector is not None and run_dir is not None:
                raise ValueError("a saved --detector keeps its own embedder: omit RUN_DIR")
            given = dict(zip(OPTIONS, (method, contamination, n_neighbors), strict=True))
            if detector is not None:
                fixed = [name for name, value in given.items() if value is not None]
                if fixed:
                    raise ValueError("a saved --detector keeps the method, contamination "
                                     f"and neighbours it was fitted with: omit "
                                     f"{', '.join(fixed)} (or fit a new detector on --normal)")
            else:
                check_detector_options(contamination, n_neighbors)
                method, contamination, n_neighbors = detectors.detector_settings(
                    method, contamination, n_neighbors, run_dir=run_dir)
            summary_path = summary_file(out)
            inputs = {"the --data file": data, "the --normal file": normal,
                      "the --detector directory": detector, "the --save directory": save}
            check_output_path(out, "--out", inputs, what="CSV file", run_dir=run_dir)
            check_output_path(summary_path, f"--out {out}: its summary", inputs,
                              what="JSON file", run_dir=run_dir)
            if run_dir is not None:  # it embeds raw inputs: never embeddings
                detectors.check_raw_inputs(normal, "--normal", f"RUN_DIR {run_dir}")
                detectors.check_raw_inputs(data, "--data", f"RUN_DIR {run_dir}")
            x, truth, truth_name, truth_note = read_scored(data, key, truth_key)
            check_rows(x, "--data", data)
            if detector is not None:
                det = detectors.load_detector(detector)
                embeds = run_embedder(det)
                if embeds is not None:
                    detectors.check_raw_inputs(
                        data, "--data", f"the detector {detector} (it embeds with the run "
                        f"{embeds})")
                    warn_input_range(embeds, (x, f"--data {data}"))
                detectors.check_detector_model(det, detector, data)
                if getattr(det, "embedder", "") is None:  # fitted on rows of features
                    detectors.check_features(x, f"--data {data}", detector)
                if save is not None:
                    check_save(save, type(det).__name__)
                embedded_by = None  # (the detector records its own)
            else:
                if run_dir is None and normal.is_file():  # embeddings: both of one model
                    check_same_model(normal, data, "--normal and --data")
                x_normal, y_normal = read_rows(normal, key, "labels")
                check_rows(x_normal, "--normal", normal)
                if method in ("prototype", "mahalanobis"):  # (the methods that use labels)
                    detectors.check_labels(y_normal, f"--normal {normal}")
                if run_dir is not None:
                    warn_input_range(run_dir, (x_normal, f"--normal {normal}"),
                                     (x, f"--data {data}"))
                if run_dir is None and method != "deep_svdd":
                    detectors.check_features(x_normal, f"--normal {normal}")
                    detectors.check_features(x, f"--data {data}")
                if run_dir is None:  # (RUN_DIR shapes both as its model takes them)
                    check_same_width(x_normal, normal, x, data)
                if save is not None:  # before the fitting, which may take long
                    check_save(save, detectors.detector_kind(method))
                with warnings.catch_warnings(record=True) as caught:
                    det = detectors.fit_detector(x_normal, y_normal, method, contamination,
                                                 n_neighbors, run_dir,
                                                 log=lambda line: typer.echo(line, err=True))
                for w in caught:  # the library's parameter names as this command's options
                    warnings.showwarning(option_words(str(w.message)), w.category,
                                         w.filename, w.lineno)
                embedded_by = data_model(run_dir, str(normal), str(data))
            if save is not None:
                det.save(save, model_sha256=detectors.fitted_model(det, embedded_by))
            scores = det.score_samples(x)
        except (ValueError, TypeError, FileNotFoundError, FileExistsError) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None
        flags = scores < det.offset_
        out.parent.mkdir(parents=True, exist_ok=True)
        rows = np.column_stack([np.arange(len(scores)), scores, flags.astype(int)])
        tmp = out.with_name(f".{out.name}.tmp")
        np.savetxt(tmp, rows, delimiter=",", header="row,score,outlier", comments="",
                   fmt=["%d", "%.8g", "%d"])
        tmp.replace(out)
        summary: dict[str, Any] = {
            "method": getattr(det, "method", "deep_svdd"),
            "run_dir": str(run_dir) if run_dir else None,
            "normal": str(normal) if normal else None, "data": str(data),
            "rows": int(len(scores)), "flagged": int(flags.sum()),
            "threshold": float(det.offset_), "contamination": float(det.contamination),
        }
        if detector is not None:
            summary["detector"] = str(detector)
        no_metrics = None
        if truth is not None:
            metrics, no_metrics = truth_metrics(truth, scores, data, str(truth_name))
            summary.update(metrics)
            if no_metrics is not None:
                summary["metrics_skipped"] = no_metrics
        write_json(summary, summary_path)
        typer.echo(f"{summary['flagged']} of {summary['rows']} rows flagged as outliers "
                   f"(threshold {summary['threshold']:.6g}); scores in {out}, summary in "
                   f"{summary_path}")
        for name in ("auroc", "average_precision"):
            if name in summary:
                typer.echo(f"{name:18s} {summary[name]:.4f}")
        if no_metrics is not None:
            typer.echo(f"warning: no AUROC / average precision: {no_metrics}", err=True)
        if truth_note is not None:
            typer.echo(f"note: {truth_note}", err=True)
