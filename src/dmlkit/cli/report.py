"""``dmlkit report`` and ``dmlkit explain``: what a run learned, for people."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def _item(run: Any, spec: str) -> tuple[Any, str]:
    """``heldout:N`` / ``train:N`` (a row of the run's data) or a ``.npy`` file."""
    import numpy as np
    import torch

    from dmlkit.runs import build_splits

    part, sep, index = spec.partition(":")
    if sep and part in ("heldout", "train"):
        train, heldout = build_splits(run.config)
        data = heldout if part == "heldout" else train
        if not index.isdigit() or int(index) >= len(data.labels):
            raise ValueError(f"{spec!r}: the {part} set has rows 0..{len(data.labels) - 1}")
        return data.x[int(index)], f"{spec} (class {int(data.labels[int(index)])})"
    path = Path(spec)
    if path.suffix == ".npy" and path.is_file():
        from dmlkit.data.npz import read_arrays

        x = read_arrays(path)["x"].astype(np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"{path} contains NaN or infinite values")
        return torch.from_numpy(x), spec
    raise ValueError(f"item {spec!r}: give heldout:N, train:N or a .npy file")


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
        a: str = typer.Option(..., "--a", help="heldout:N, train:N or a .npy file."),
        b: str = typer.Option(..., "--b", help="heldout:N, train:N or a .npy file."),
        out: Path = typer.Option(Path("explain"), "--out", "-o", help="Folder for heatmaps."),
        steps: int = typer.Option(64, "--steps", help="Integrated-gradients steps."),
        patch: int = typer.Option(2, "--patch", help="Occlusion patch size."),
    ) -> None:
        """Which parts of A and B drive their similarity (integrated gradients, occlusion)."""
        import json

        import torch

        from dmlkit.explain import integrated_gradients, nearest_prototypes, occlusion, similarity
        from dmlkit.runs import build_splits, load_run

        try:
            run = load_run(run_dir)
            xa, name_a = _item(run, a)
            xb, name_b = _item(run, b)
            with torch.no_grad():
                sim = float(similarity(run.model, xa[None], xb[None]))
            maps = {"a_integrated_gradients": integrated_gradients(run.model, xa, xb, steps=steps),
                    "b_integrated_gradients": integrated_gradients(run.model, xb, xa, steps=steps),
                    "a_occlusion": occlusion(run.model, xa, xb, patch=patch),
                    "b_occlusion": occlusion(run.model, xb, xa, patch=patch)}
            train, _ = build_splits(run.config)
            protos = {k: nearest_prototypes(run.model, x, train.x, train.labels)
                      for k, x in (("a", xa), ("b", xb))}
        except (ValueError, FileNotFoundError) as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        out.mkdir(parents=True, exist_ok=True)
        _heatmaps(maps, xa, xb, out)
        summary = {"a": name_a, "b": name_b, "cosine_similarity": sim,
                   "nearest_training_prototypes": protos}
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
