"""``dmlkit report`` and ``dmlkit explain``: what a run learned, for people."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from dmlkit.cli._errors import check_output_dir, one_line

ITEM_HELP = ("heldout:N or train:N (row N of the run's data), or a .npy file of one item "
             "(FILE.npy:N for row N of a file of several).")


def _item(run: Any, spec: str, shape: Any) -> tuple[Any, str]:
    """One input of ``run``'s model, shaped as its training inputs, and its name.

    ``spec`` is ``heldout:N`` / ``train:N`` (a row of the run's data), ``FILE.npy`` (one
    item; flat or without a channel axis is fine) or ``FILE.npy:N`` (row ``N`` of a
    file of several). ``shape`` is the run's :class:`~dmlkit.runs.queries.InputSpec`.
    """
    import torch

    from dmlkit.runs import build_splits

    part, sep, index = spec.partition(":")
    if sep and part in ("heldout", "train"):
        train, heldout = build_splits(run.config)
        data = heldout if part == "heldout" else train
        if not index.isdigit() or int(index) >= len(data.labels):
            raise ValueError(f"{spec!r}: the {part} set has rows 0..{len(data.labels) - 1}")
        return data.x[int(index)], f"{spec} (class {int(data.labels[int(index)])})"
    match = re.fullmatch(r"(.+\.npy):(\d+)", spec)
    path, row = (Path(match[1]), int(match[2])) if match else (Path(spec), None)
    if path.suffix != ".npy":
        raise ValueError(f"item {spec!r}: give heldout:N, train:N, or a .npy file (FILE.npy:N "
                         "for row N of a file of several items)")
    from dmlkit.data.npz import read_arrays
    from dmlkit.runs.queries import check_input_shape, input_fit, prepare_inputs

    x = read_arrays(path)["x"]  # (a missing file: FileNotFoundError naming it)
    if row is not None:
        if x.ndim < 2 or (shape is not None and input_fit(x.shape[1:], shape) is None):
            raise ValueError(f"{path} holds one item of shape {x.shape}, not rows of items; "
                             f"give it without :{row}")
        if row >= x.shape[0]:
            raise ValueError(f"{spec!r}: {path} has rows 0..{x.shape[0] - 1}")
        x = x[row]
    elif shape is not None and input_fit(x.shape, shape) is None:
        rows = x.ndim > len(shape.shape)  # a stack of items, going by its axes
        if rows and x.shape[0] == 0:
            raise ValueError(f"{path} holds no items")
        if x.ndim >= 2 and input_fit(x.shape[1:], shape) is not None:
            raise ValueError(
                f"{path} holds {x.shape[0]} items; explain one at a time: "
                f"{path}:N with N in 0..{x.shape[0] - 1} (e.g. --a {path}:0 --b {path}:1)")
        check_input_shape(x.shape[1:] if rows else x.shape, shape, str(path))  # says why
    item = prepare_inputs(x[None], shape, str(path))[0]  # shaped and scaled as in training
    return torch.from_numpy(item), spec


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        run_dir: Path = typer.Argument(..., help="Run directory."),
        out: Path = typer.Option(None, "--out", "-o", help="HTML file (default "
                                 "RUN_DIR/report.html)."),
        png_dir: Path = typer.Option(None, "--png-dir", help="Also write PNG figures here."),
        projection: str = typer.Option("auto", "--projection",
                                       help="auto (UMAP, else t-SNE), umap, tsne or pca."),
        max_items: int = typer.Option(2000, "--max-items"),
    ) -> None:
        """One self-contained HTML report: curves, map, gallery, verification, per class."""
        from dmlkit.report import collect, write_figures, write_report

        target = out or run_dir / "report.html"
        try:
            data = collect(run_dir, max_items=max_items, projection=projection,
                           log=lambda m: typer.echo(f"report: {m}", err=True))
            write_report(data, target)
            figures = write_figures(data, png_dir) if png_dir is not None else []
        except (ImportError, ValueError, FileNotFoundError) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"wrote {target}" + (f" and {len(figures)} PNG figures in {png_dir}"
                                        if figures else ""))

    @app.command("explain")
    def explain(
        run_dir: Path = typer.Argument(..., help="Run directory."),
        a: str = typer.Option(..., "--a", help=ITEM_HELP),
        b: str = typer.Option(..., "--b", help=ITEM_HELP),
        out: Path = typer.Option(Path("explain"), "--out", "-o", help="Folder for heatmaps."),
        steps: int = typer.Option(64, "--steps", help="Integrated-gradients steps."),
        patch: int = typer.Option(2, "--patch", help="Occlusion patch size."),
    ) -> None:
        """Which parts of A and B drive their similarity (integrated gradients, occlusion)."""
        import json

        import torch

        from dmlkit.explain import (
            NoInputGradientError,
            integrated_gradients,
            nearest_prototypes,
            occlusion,
            similarity,
        )
        from dmlkit.runs import build_splits, load_run
        from dmlkit.runs.queries import run_input_spec

        try:
            check_output_dir(out)
            if steps < 1 or patch < 1:
                raise ValueError(f"--steps and --patch must be >= 1, got {steps} and {patch}")
            run = load_run(run_dir)
            shape = run_input_spec(run)
            xa, name_a = _item(run, a, shape)
            xb, name_b = _item(run, b, shape)
            if xa.shape != xb.shape:  # (a model that resizes takes both, one at a time)
                raise ValueError(f"{name_a} has shape {tuple(xa.shape)} and {name_b} "
                                 f"{tuple(xb.shape)}; explain two items of one shape")
            with torch.no_grad():
                sim = float(similarity(run.model, xa[None], xb[None]))
            maps, skipped = {}, None
            try:
                maps = {"a_integrated_gradients": integrated_gradients(run.model, xa, xb,
                                                                       steps=steps),
                        "b_integrated_gradients": integrated_gradients(run.model, xb, xa,
                                                                       steps=steps)}
            except NoInputGradientError as err:  # a frozen backbone: occlusion only
                skipped = str(err)
                typer.echo(f"note: occlusion maps only: {err}", err=True)
            maps["a_occlusion"] = occlusion(run.model, xa, xb, patch=patch)
            maps["b_occlusion"] = occlusion(run.model, xb, xa, patch=patch)
            train, _ = build_splits(run.config)
            protos = {k: nearest_prototypes(run.model, x, train.x, train.labels)
                      for k, x in (("a", xa), ("b", xb))}
            out.mkdir(parents=True, exist_ok=True)
            _heatmaps(maps, xa, xb, out)
        except (ValueError, TypeError, OSError) as err:
            typer.echo(f"error: {one_line(err)}", err=True)
            raise typer.Exit(2) from None
        summary = {"a": name_a, "b": name_b, "cosine_similarity": sim,
                   "nearest_training_prototypes": protos, "maps": sorted(maps),
                   **({"integrated_gradients_skipped": skipped} if skipped else {})}
        (out / "explain.json").write_text(json.dumps(summary, indent=2))
        typer.echo(f"cosine similarity of {name_a} and {name_b}: {sim:.4f}")
        for side in ("a", "b"):
            near = ", ".join(f"class {p['label']} ({p['cosine']:.3f})" for p in protos[side])
            typer.echo(f"{side}: nearest training class centroids: {near}")
        typer.echo(f"heatmaps and explain.json in {out}")


def _heatmaps(maps: dict[str, Any], xa: Any, xb: Any, out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        import numpy as np

        for name, m in maps.items():
            np.save(out / f"{name}.npy", m.numpy())
        return
    for name, m in maps.items():
        img = m.abs().sum(0) if m.dim() == 3 else m.abs()
        src = xa if name.startswith("a_") else xb
        base = src.mean(0) if src.dim() == 3 else src
        fig, axes = plt.subplots(1, 2, figsize=(6, 3))
        if base.dim() == 1:
            axes[0].bar(range(len(base)), base.numpy())
            axes[1].bar(range(len(img)), img.numpy(), color="crimson")
        else:
            axes[0].imshow(base.numpy(), cmap="gray")
            axes[1].imshow(img.numpy(), cmap="inferno")
        axes[0].set_title("input")
        axes[1].set_title(name.replace("_", " "))
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=120)
        plt.close(fig)
