"""What ``dmlkit explain`` writes and prints: its metric, each signed map as ``.npy``
and, with matplotlib, as a heatmap beside its input, and its lines of text."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def explain_metric(metric: str | None) -> str:
    """The metric ``--metric`` names (``None``: the run's, the metric of dmlkit report
    and of dmlkit evaluate by default), as ``"euclidean"`` or ``"cosine"``."""
    from dmlkit.explain.attribution import METRICS
    from dmlkit.functional.retrieval import canonical_metric
    from dmlkit.report.collect import METRIC

    if metric is None:
        return METRIC
    try:
        name = canonical_metric(metric)
    except ValueError:
        name = None
    if name not in METRICS:
        raise ValueError(f"--metric {metric}: explain measures euclidean (the run's metric) "
                         "or cosine similarity; give --metric euclidean or --metric cosine")
    return name


def similarity_line(metric: str, name_a: str, name_b: str, sim: float) -> str:
    """The printed similarity of two items (``sim``: the explained similarity, cosine or
    the negated squared Euclidean distance)."""
    if metric == "cosine":
        return f"cosine similarity of {name_a} and {name_b}: {sim:.4f}"
    return (f"euclidean distance of {name_a} and {name_b}: {max(-sim, 0.0) ** 0.5:.4f} (the "
            f"maps explain the similarity -distance^2 = {sim:.4f})")


def centroid_text(metric: str, proto: dict[str, Any]) -> str:
    """A nearest centroid's closeness as printed: ``distance 0.512`` or ``cosine 0.931``."""
    if metric == "euclidean":
        return f"distance {proto['distance']:.3f}"
    return f"cosine {proto['cosine']:.3f}"


def side_text(patch: int | tuple[int, int]) -> str:
    """An occlusion patch as text: ``8`` (square) or ``8x16``."""
    return "x".join(map(str, patch)) if isinstance(patch, tuple) else str(patch)


def display_input(x: Any) -> Any:
    """An input as its heatmap's "input" panel draws it: a 3-channel ``(3, H, W)`` image
    as ``(H, W, 3)`` colour scaled to [0, 1]; other ``(C, H, W)`` images as the mean of
    their channels (grey); ``(H, W)`` images and 1-D inputs as they are."""
    import numpy as np

    if x.dim() == 3 and x.shape[0] == 3:
        rgb = x.permute(1, 2, 0).numpy().astype(np.float64)  # (H, W, 3)
        lo, hi = float(rgb.min()), float(rgb.max())
        return (rgb - lo) / (hi - lo if hi > lo else 1.0)
    return (x.mean(0) if x.dim() == 3 else x).numpy()


def conventions(metric: str, shape: tuple[int, ...], gradients: bool = True) -> dict[str, str]:
    """What explain.json's maps are, for items of ``shape`` explained under ``metric``:
    the similarity explained, each map's shape and the sign of its values, and what the
    heatmaps draw (``gradients``: whether integrated gradients were computed)."""
    spatial = tuple(shape[-2:] if len(shape) >= 2 else shape)  # (H, W), or (n,) 1-D
    similarity = ("-d^2, the negated squared Euclidean distance between the embeddings"
                  if metric == "euclidean" else "the cosine of the embeddings")
    out = {
        "similarity": f"the similarity explained is {similarity} (--metric {metric})",
        "occlusion": (f"*_occlusion.npy has shape {spatial}: one value per "
                      + ("pixel, its channels hidden together" if len(shape) >= 2
                         else "value") + "; a positive value is the (mean) drop in "
                      "similarity when a patch covering it is hidden (set to 0), a "
                      "negative one a rise"),
        "heatmaps": ("*.png draw each map beside its input on a diverging scale centred at "
                     "0 (red: positive, blue: negative); integrated gradients are summed "
                     "over channels there"),
    }
    if gradients:
        out["integrated_gradients"] = (
            f"*_integrated_gradients.npy has the input's shape {tuple(shape)}: one value per "
            "input value; a positive value raises the similarity, a negative one lowers it "
            "(from the all-zero input; the values sum to the similarity's change from it)")
    return out


def heatmaps(maps: dict[str, Any], xa: Any, xb: Any, out: Path) -> dict[str, Any]:
    """Save each signed map as ``NAME.npy`` and, with matplotlib, ``NAME.png`` (the input
    beside the map in a diverging colour map centred at 0, with a colour bar: red raises
    the similarity, blue lowers it). Returns ``{"arrays": {...}, "figures": {...}}``."""
    import numpy as np

    arrays = {}
    for name, m in maps.items():
        np.save(out / f"{name}.npy", m.numpy())
        arrays[name] = f"{name}.npy"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {"arrays": arrays}
    figures = {}
    for name, m in maps.items():
        img = (m.sum(0) if m.dim() == 3 else m).numpy()  # signed: channels summed
        base = display_input(xa if name.startswith("a_") else xb)
        lim = float(np.abs(img).max()) or 1e-12
        fig, axes = plt.subplots(1, 2, figsize=(7, 3))
        if base.ndim == 1:
            if len(base) <= 256:
                axes[0].bar(range(len(base)), base)
            else:
                axes[0].plot(base, linewidth=0.5)
            shown = axes[1].imshow(img[None, :], cmap="RdBu_r", vmin=-lim, vmax=lim,
                                   aspect="auto", interpolation="nearest")
            axes[1].set_yticks([])
        else:
            axes[0].imshow(base, cmap="gray" if base.ndim == 2 else None)  # (RGB: colour)
            shown = axes[1].imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
        fig.colorbar(shown, ax=axes[1], label="similarity contribution")
        axes[0].set_title("input")
        axes[1].set_title(name.replace("_", " "))
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=120)
        plt.close(fig)
        figures[name] = f"{name}.png"
    return {"arrays": arrays, "figures": figures}


def warn_incomplete(completeness: dict[str, Any], steps: int) -> None:
    """Record the completeness tolerance with the per-side gaps and say, in one
    ``warning:`` line, which sides' integrated gradients miss it."""
    import typer

    from dmlkit.explain.attribution import IG_COMPLETENESS_TOLERANCE, incomplete

    sides = [side for side in ("a", "b") if incomplete(completeness[side])]
    completeness["tolerance"] = IG_COMPLETENESS_TOLERANCE
    if sides:
        gaps = "; ".join(f"{side}'s map sums to {completeness[side]['sum']:.4g} where the "
                         f"similarity changes by {completeness[side]['difference']:.4g} "
                         f"({completeness[side]['relative_error']:.0%} off)" for side in sides)
        typer.echo(f"warning: integrated gradients are incomplete (over the "
                   f"{IG_COMPLETENESS_TOLERANCE:.0%} tolerance): {gaps} from the all-zero "
                   f"input; raise --steps (now {steps}), or read the occlusion maps, which "
                   "need no baseline (explain.json gives each side's completeness)",
                   err=True)


__all__ = ["centroid_text", "conventions", "display_input", "explain_metric", "heatmaps",
           "side_text", "similarity_line", "warn_incomplete"]
