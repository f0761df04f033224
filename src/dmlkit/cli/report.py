"""``dmlkit report`` and ``dmlkit explain``: what a run learned, for people."""

from __future__ import annotations

import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import typer

from dmlkit.cli._errors import one_line
from dmlkit.cli._outputs import check_output_file, check_output_folder, check_outside_saved
from dmlkit.cli._recognition_options import device_option

ITEM_HELP = ("heldout:N or train:N (row N of the run's data), or a .npy file of one item "
             "(FILE.npy:N for row N of a file of several).")


TEXT_REPORT = ("dmlkit report does not cover text runs: their items are sentences, not "
               "arrays to map and show; dmlkit evaluate RUN_DIR gives a text run's held-out "
               "retrieval and verification metrics, and dmlkit text similarity SENTENCE "
               "OTHER... --run RUN_DIR ranks sentences by the run's similarity")
TEXT_EXPLAIN = ("dmlkit explain does not cover text runs: its attributions are over arrays, "
                "and a text run's items are sentences; dmlkit text similarity SENTENCE "
                "OTHER... --run RUN_DIR ranks sentences by the run's similarity")


def _class_name(label: Any, names: Any) -> str:
    """A class id's name when the data has names, else the id; a hierarchical label row
    (a list of ids, coarsest level first) as its ids joined by ``/`` (``"0/3"``)."""
    if isinstance(label, (list, tuple)):
        return "/".join(str(int(v)) for v in label)
    return str(names[label]) if names and 0 <= label < len(names) else str(label)


def _class_text(label: Any, names: Any) -> str:
    """``class NAME`` of a class id (see :func:`_class_name`)."""
    return f"class {_class_name(label, names)}"


def _item(run: Any, spec: str, shape: Any, splits: Any = None,
          checked: set[Path] | None = None) -> tuple[Any, str]:
    """One input of ``run``'s model, shaped as its training inputs, and its name.

    ``spec`` is ``heldout:N`` / ``train:N`` (a row of the run's data), ``FILE.npy`` (one
    item; flat or without a channel axis is fine) or ``FILE.npy:N`` (row ``N`` of a
    file of several). ``shape`` is the run's :class:`~dmlkit.runs.queries.InputSpec`;
    ``splits()``, when given, returns the run's ``(train, heldout)`` data.
    """
    import torch

    from dmlkit.runs.recorded_splits import run_splits

    part, sep, index = spec.partition(":")
    if sep and part in ("heldout", "train"):
        if run.config.data.tuples is not None:
            raise ValueError(
                f"{spec!r}: this run was trained from the {run.config.data.kind} in "
                f"{run.config.data.tuples}, which have no labelled train/held-out rows to "
                "pick from; give the items as arrays: --a FILE.npy:N --b FILE.npy:N (row N "
                "of a .npy file of items), or --a FILE.npy for a file of one item")
        try:
            train, heldout = splits() if splits is not None else run_splits(run, part)
        except (OSError, ValueError) as err:
            raise ValueError(f"{spec!r} is a row of the run's data, which cannot be read: "
                             f"{one_line(err)}; restore the data, or give the item as a "
                             ".npy file (FILE.npy:N for row N)") from err
        data = heldout if part == "heldout" else train
        if not index.isdigit() or int(index) >= len(data.labels):
            raise ValueError(f"{spec!r}: the {part} set has rows 0..{len(data.labels) - 1}")
        row = data.labels[int(index)]  # () class id, or (L,) hierarchical label row
        label = row.tolist() if row.dim() else int(row)
        return data.x[int(index)], f"{spec} ({_class_text(label, data.class_names)})"
    match = re.fullmatch(r"(.+\.npy):(\d+)", spec, flags=re.IGNORECASE)
    path, row = (Path(match[1]), int(match[2])) if match else (Path(spec), None)
    if path.suffix.lower() != ".npy":
        raise ValueError(f"item {spec!r}: give heldout:N, train:N, or a .npy file (FILE.npy:N "
                         "for row N of a file of several items)")
    from dmlkit.data.npz import read_arrays
    from dmlkit.runs.queries import (
        check_input_range,
        check_input_shape,
        input_fit,
        prepare_inputs,
    )

    x = read_arrays(path)["x"]  # (a missing file: FileNotFoundError naming it)
    if x.size == 0:
        raise ValueError(f"{path} holds no items (an array of shape {x.shape})")
    if row is not None:
        if x.ndim < 2 or (shape is not None and input_fit(x.shape[1:], shape) is None):
            if x.ndim < 2 or shape is None or input_fit(x.shape, shape) is not None:
                raise ValueError(f"{path} holds one item of shape {x.shape}, not rows of "
                                 f"items; give it without :{row}")
            check_input_shape(x.shape[1:], shape, f"{spec} (a row of {path})")  # says why
        if row >= x.shape[0]:
            raise ValueError(f"{spec!r}: {path} has rows 0..{x.shape[0] - 1}")
        whole, x = x, x[row]
    elif shape is not None and input_fit(x.shape, shape) is None:
        rows = x.ndim > len(shape.shape)  # a stack of items, going by its axes
        if x.ndim >= 2 and input_fit(x.shape[1:], shape) is not None:
            if x.shape[0] > 1:  # (one row is the one item it holds)
                raise ValueError(
                    f"{path} holds {x.shape[0]} items; explain one at a time: {path}:N "
                    f"with N in 0..{x.shape[0] - 1} (e.g. --a {path}:0 --b {path}:1)")
            x = x[0]
        else:
            check_input_shape(x.shape[1:] if rows else x.shape, shape, str(path))  # why
    if row is None:
        item = prepare_inputs(x[None], shape, str(path))[0]  # shaped and scaled as in training
        return torch.from_numpy(item), spec
    with warnings.catch_warnings():  # the range rule runs on the whole file below, so
        warnings.filterwarnings("ignore", message=".*inputs range over")  # every row of it
        item = prepare_inputs(x[None], shape, str(path))[0]  # gets one and the same hint
    if checked is None or path.resolve() not in checked:  # (once per file)
        check_input_range(_file_values(whole, str(path)), shape, str(path))
        if checked is not None:
            checked.add(path.resolve())
    return torch.from_numpy(item), spec


def _file_values(x: Any, source: str) -> Any:
    """The finite values of a file's raw inputs, scaled as the loaders scale them."""
    import numpy as np

    from dmlkit.data.npz import integer_inputs

    x = integer_inputs(x, source) if x.dtype.kind in "iu" else x.astype(np.float32)
    return x[np.isfinite(x)]


def _data_inputs(run_dir: Path) -> dict[str, Path | None]:
    """The files and folders the run in ``run_dir`` reads its data from (its config's
    ``data.path``, ``data.features``, ``data.tuples``; for ``fashion_mnist`` without a
    path, the default folder), named for :func:`check_output_folder`'s ``inputs``: an
    output there would change the run's data (PNGs in its image folder are images)."""
    import yaml

    try:
        config = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}  # (loading the run says what is wrong with it)
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, dict):
        return {}
    found: dict[str, Path | None] = {}
    for key in ("path", "features", "tuples"):
        value = data.get(key)
        if key == "path" and value is None and data.get("name") == "fashion_mnist":
            from dmlkit.data.idx import FASHION_MNIST_DIR

            value = FASHION_MNIST_DIR
        if isinstance(value, str) and value:
            kind = "folder" if Path(value).is_dir() else "file"
            found[f"the run's data {kind} (data.{key})"] = Path(value)
    return found


def _check_output_folder(path: Path, option: str, run_dir: Path, example: str) -> None:
    """:func:`check_output_folder` with the run's data as inputs; a run directory is
    refused with ``example`` (a folder name) as the folder to give instead."""
    from dmlkit.runs.run_files import is_run_dir

    if is_run_dir(path):
        raise ValueError(f"{option} {path} is a run directory; its outputs would be written "
                         f"among the run's own files: give another folder (e.g. "
                         f"{Path(path) / example})")
    check_output_folder(path, option, _data_inputs(run_dir))


#: the files ``dmlkit explain`` writes into its ``--out`` folder (besides explain.json)
EXPLAIN_MAPS = tuple(f"{side}_{kind}" for side in "ab"
                     for kind in ("integrated_gradients", "occlusion"))


def _clear_previous(out: Path) -> None:
    """Remove an earlier explanation's own files from ``out``: its maps and figures (the
    names :data:`EXPLAIN_MAPS` and its explain.json list) and explain.json, so that
    none of them is taken for part of the new one. Other files are never touched."""
    import json

    summary = out / "explain.json"
    if not summary.is_file():
        return
    names = {f"{m}.{ext}" for m in EXPLAIN_MAPS for ext in ("npy", "png")}
    try:
        listed = json.loads(summary.read_text())
    except (OSError, ValueError):
        listed = {}
    for group in ("arrays", "figures"):
        files = listed.get(group) if isinstance(listed, dict) else None
        for name in (files.values() if isinstance(files, dict) else []):
            if isinstance(name, str) and re.fullmatch(r"[ab]_\w+\.(npy|png)", name):
                names.add(name)
    for name in sorted(names) + ["explain.json"]:
        target = out / name
        if target.is_file() and not target.is_symlink():
            target.unlink()


class _Progress:
    """Progress lines on stderr, at most one every ``PROGRESS_SECONDS`` (none at all for
    work that is over sooner), as dmlkit's other long-running commands print them."""

    def __init__(self, prefix: str) -> None:
        from dmlkit.training.run import PROGRESS_SECONDS

        self.prefix, self.every = prefix, PROGRESS_SECONDS
        self.start = self.last = time.perf_counter()

    def __call__(self, message: str) -> None:
        now = time.perf_counter()
        if now - self.last >= self.every:
            print(f"{self.prefix}: {message} ({now - self.start:.0f} s)", file=sys.stderr,
                  flush=True)
            self.last = now

    def counter(self, what: str) -> Any:
        """A ``progress(done, total)`` callback reporting ``what``."""
        return lambda done, total: self(f"{what}: {done}/{total}")


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        run_dir: Path = typer.Argument(..., help="Run directory."),
        out: Path = typer.Option(None, "--out", "-o", help="HTML file, .html or .htm "
                                 "(default RUN_DIR/report.html; never the run's own "
                                 "files)."),
        png_dir: Path = typer.Option(None, "--png-dir", help="Also write PNG figures here "
                                     "(a folder: not a run directory, nor inside the "
                                     "run's data)."),
        projection: str = typer.Option("auto", "--projection",
                                       help="auto (UMAP, else t-SNE), umap, tsne or pca."),
        max_items: int = typer.Option(2000, "--max-items", help="Map, gallery, "
                                      "verification and per-class results of at most this "
                                      "many held-out items (a random sample of them when "
                                      "there are more; at least 20)."),
        device: str = device_option(),
    ) -> None:
        """One self-contained HTML report: curves, map, gallery, verification, per class."""
        import importlib.util

        from dmlkit.cli._recognition_options import cli_device
        from dmlkit.report import collect, write_report
        from dmlkit.report.collect import MIN_ITEMS, check_projection
        from dmlkit.report.html import check_report_path
        from dmlkit.runs.export import is_text_run
        from dmlkit.training.run import check_run_dir

        target = out or run_dir / "report.html"
        try:  # everything that can be checked before the work
            cli_device(device, "dmlkit report")
            check_run_dir(run_dir)  # (before the default --out inside it)
            check_projection(projection)
            if max_items < MIN_ITEMS:  # (collect's rule, with the option's name)
                raise ValueError(f"--max-items must be an integer >= {MIN_ITEMS} (the map "
                                 "and the retrieval metrics need several items of each "
                                 f"class), got {max_items}")
            check_output_file(target, ".html file")
            check_report_path(target, run_dir)
            check_outside_saved(target, "--out")
            if png_dir is not None:
                _check_output_folder(png_dir, "--png-dir", run_dir, "figures")
                if importlib.util.find_spec("matplotlib") is None:
                    raise ImportError("--png-dir needs matplotlib: pip install "
                                      "'dmlkit[report]'")
            if is_text_run(run_dir):
                raise ValueError(TEXT_REPORT)
            data = collect(run_dir, max_items=max_items, projection=projection,
                           log=lambda m: typer.echo(f"report: {m}", err=True))
            for note in data["notes"]:  # (those already warned of are not said again)
                if note not in data["warned"]:
                    typer.echo(f"note: {note}", err=True)
            if "skipped" in data["verification"]:
                typer.echo(f"note: verification skipped: {data['verification']['skipped']}",
                           err=True)
            write_report(data, target)
            figures = _write_figures(data, png_dir) if png_dir is not None else []
        except (ImportError, ValueError, OSError) as err:
            typer.echo(f"error: {one_line(err)}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"wrote {target}" + (f" and {len(figures)} PNG figures in {png_dir}"
                                        if figures else ""))

    @app.command("explain")
    def explain(
        run_dir: Path = typer.Argument(..., help="Run directory."),
        a: str = typer.Option(..., "--a", help=ITEM_HELP),
        b: str = typer.Option(..., "--b", help=ITEM_HELP),
        out: Path = typer.Option(Path("explain"), "--out", "-o", help="Folder for heatmaps "
                                 "(not the run directory itself, nor inside the run's "
                                 "data); an earlier explanation's files there are "
                                 "replaced."),
        steps: int = typer.Option(64, "--steps", help="Integrated-gradients steps; "
                                  "explain.json gives each map's completeness (its sum "
                                  "against the similarity's change from the all-zero "
                                  "input), and a miss over 5% is warned of."),
        patch: int = typer.Option(None, "--patch", help="Occlusion patch size (default: 2 "
                                  "on images; on 1-D inputs of n values max(2, n // 100): "
                                  "n - 1 windows up to 200 values, about 200 to 400 "
                                  "beyond)."),
        stride: int = typer.Option(None, "--stride", help="Occlusion stride, at most the "
                                   "patch (default: 1 on images, half the patch on 1-D "
                                   "inputs)."),
        metric: str = typer.Option(None, "--metric", help="euclidean or cosine: the "
                                   "similarity explained and the nearest centroids' "
                                   "measure (default: the run's metric, euclidean, as "
                                   "dmlkit report and evaluate measure it)."),
        device: str = device_option(),
    ) -> None:
        """Which parts of A and B drive their similarity (integrated gradients, occlusion)."""
        from dmlkit.cli._explain_figures import explain_metric
        from dmlkit.cli._recognition_options import cli_device
        from dmlkit.runs.export import is_text_run

        try:
            device = cli_device(device, "dmlkit explain")
            _check_output_folder(out, "--out", run_dir, "explain")  # never the run itself
            for name, value in (("--steps", steps), ("--patch", patch), ("--stride", stride)):
                if value is not None and value < 1:
                    raise ValueError(f"{name} must be >= 1, got {value}")
            if patch is not None and stride is not None:
                _check_stride(patch, stride)
            metric = explain_metric(metric)
            if is_text_run(run_dir):
                raise ValueError(TEXT_EXPLAIN)
            _, lines = _explain(run_dir, a, b, out, steps, patch, stride, metric, device)
        except (ValueError, TypeError, OSError) as err:
            typer.echo(f"error: {one_line(err)}", err=True)
            raise typer.Exit(1) from None
        for line in lines:
            typer.echo(line)


def _write_figures(data: dict[str, Any], png_dir: Path) -> list[Path]:
    """The report's PNG figures in ``png_dir``, saying on stderr which figures of an
    earlier report there it removes (those this report does not draw)."""
    from dmlkit.report.figures import stale_figures, write_figures

    stale = stale_figures(data, png_dir)
    if stale:
        typer.echo(f"note: removed {', '.join(p.name for p in stale)} from {png_dir}: an "
                   "earlier report's figures, which this report does not draw", err=True)
    return write_figures(data, png_dir)


def _check_stride(patch: int, stride: int) -> None:
    """Refuse an occlusion ``stride`` larger than its ``patch`` (before any work)."""
    if stride > patch:
        raise ValueError(f"--stride {stride} is larger than the patch ({patch}): the values "
                         "between patches would go unscored; give a stride of at most the "
                         "patch")


def _explain(run_dir: Path, a: str, b: str, out: Path, steps: int, patch: int | None,
             stride: int | None, metric: str = "euclidean",
             device: str = "cpu") -> tuple[dict[str, Any], list[str]]:
    """Compute and write the explanation of ``a`` and ``b`` under ``metric`` (the
    similarity explained, the nearest centroids' measure), with the run's model on
    ``device``; the summary and the lines to print."""
    import json

    import torch

    from dmlkit.cli._explain_figures import (
        centroid_text,
        conventions,
        heatmaps,
        side_text,
        similarity_line,
        warn_incomplete,
    )
    from dmlkit.explain import (
        NoInputGradientError,
        default_occlusion_window,
        integrated_gradients,
        nearest_prototypes,
        occlusion,
        similarity,
        stride_for_patch,
    )
    from dmlkit.report.collect import weights_note
    from dmlkit.report.split_notes import splits_with_notes
    from dmlkit.runs import embed, load_run
    from dmlkit.runs.queries import run_input_spec
    say = _Progress("explain")
    run = load_run(run_dir, device, metrics=False)  # (a damaged metrics.json is no matter)
    standing_in = weights_note(run_dir, "this explanation", run.weights)
    if standing_in is not None:
        typer.echo(f"note: {standing_in}", err=True)
    cache: dict[str, Any] = {}
    data_notes: list[str] = []  # (what reading the run's splits warned of)

    def splits() -> Any:
        if "splits" not in cache:  # (warns when not the run's held-out items)
            *cache["splits"], warned = splits_with_notes(run)
            data_notes.extend(warned)
        return cache["splits"]

    shape = run_input_spec(run)
    checked: set[Path] = set()  # (item files whose range was checked)
    xa, name_a = _item(run, a, shape, splits, checked)
    xb, name_b = _item(run, b, shape, splits, checked)
    if xa.shape != xb.shape:  # (a model that resizes takes both, one at a time)
        raise ValueError(f"{name_a} has shape {tuple(xa.shape)} and {name_b} "
                         f"{tuple(xb.shape)}; explain two items of one shape")
    if patch is None:
        patch, auto_stride = default_occlusion_window(tuple(xa.shape))
    else:
        auto_stride = stride_for_patch(tuple(xa.shape), patch)
    stride = stride or auto_stride
    _check_stride(patch, stride)  # before the integrated gradients
    from dmlkit.explain.attribution import ig_completeness, occlusion_window

    used = occlusion_window(tuple(xa.shape), patch, stride)  # (cut to the input)
    if used != (patch, stride):
        typer.echo(f"note: occlusion patch {patch} (stride {stride}) does not fit the "
                   f"{'x'.join(map(str, xa.shape))} input: patch {side_text(used[0])}, stride "
                   f"{used[1]} used", err=True)
    with torch.no_grad():
        sim = float(similarity(run.model, xa[None], xb[None], metric))
        cos = sim if metric == "cosine" else float(similarity(run.model, xa[None], xb[None]))
    maps: dict[str, Any] = {}
    notes: dict[str, Any] = {}
    try:
        for side, x, other in (("a", xa, xb), ("b", xb, xa)):
            say(f"integrated gradients of {side}")
            maps[f"{side}_integrated_gradients"] = integrated_gradients(
                run.model, x, other, steps=steps, metric=metric, check_completeness=False,
                progress=say.counter(f"integrated gradients of {side}, steps"))
            # (measured once here, and said below in the CLI's words)
            notes.setdefault("completeness", {})[side] = ig_completeness(
                run.model, x, other, maps[f"{side}_integrated_gradients"], metric=metric)
    except NoInputGradientError as err:  # a frozen backbone: occlusion only
        maps.clear()
        notes = {"integrated_gradients_skipped": str(err)}
        typer.echo(f"note: occlusion maps only: {err}", err=True)
    if "completeness" in notes:
        warn_incomplete(notes["completeness"], steps)
    for side, x, other in (("a", xa, xb), ("b", xb, xa)):
        maps[f"{side}_occlusion"] = occlusion(
            run.model, x, other, patch=patch, stride=stride, metric=metric,
            progress=say.counter(f"occlusion of {side}, windows"))
    protos: dict[str, Any] = {}
    try:
        if run.config.data.tuples is not None:
            raise ValueError(f"the run was trained from the {run.config.data.kind} in "
                             f"{run.config.data.tuples}, which have no classes")
        train, _ = splits()
    except (ValueError, OSError) as err:  # no labelled training data to take centroids of
        notes["nearest_training_prototypes_skipped"] = one_line(err)
        typer.echo(f"note: no nearest training class centroids: {one_line(err)}", err=True)
    else:
        say(f"embedding {len(train.labels)} training items")
        ref, _ = embed(run.model, train.x, device=device)  # once, for both items
        for side, x in (("a", xa), ("b", xb)):
            protos[side] = [{**p, "name": _class_name(p["label"], train.class_names)}
                            for p in nearest_prototypes(run.model, x, None, train.labels,
                                                        ref_embeddings=ref, metric=metric)]
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous(out)  # an earlier explanation's maps are not this one's
    files = heatmaps(maps, xa, xb, out)
    window: dict[str, Any] = {"patch": list(used[0]) if isinstance(used[0], tuple) else used[0],
                              "stride": used[1]}  # as used: cut to the input
    if used != (patch, stride):
        window["requested"] = {"patch": patch, "stride": stride}
    summary = {"a": name_a, "b": name_b, "weights": run.weights, "metric": metric,
               "similarity": sim, "cosine_similarity": cos,
               **({"euclidean_distance": max(-sim, 0.0) ** 0.5} if metric == "euclidean" else {}),
               "nearest_training_prototypes": protos, "maps": sorted(maps),
               "occlusion": window, **files, **notes, "notes": data_notes,
               "conventions": conventions(metric, tuple(xa.shape),
                                          "integrated_gradients_skipped" not in notes)}
    (out / "explain.json").write_text(json.dumps(summary, indent=2))
    lines = [similarity_line(metric, name_a, name_b, sim)]
    for side in protos:
        near = ", ".join(f"class {p['name']} ({centroid_text(metric, p)})" for p in protos[side])
        lines.append(f"{side}: nearest training class centroids: {near}")
    what = "heatmaps, signed maps (.npy)" if files.get("figures") else "signed maps (.npy)"
    lines.append(f"{what} and explain.json in {out}")
    return summary, lines
