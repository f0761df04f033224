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
        src = xa if name.startswith("a_") else xb
        base = (src.mean(0) if src.dim() == 3 else src).numpy()
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
            axes[0].imshow(base, cmap="gray")
            shown = axes[1].imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
        fig.colorbar(shown, ax=axes[1], label="similarity contribution")
        axes[0].set_title("input")
        axes[1].set_title(name.replace("_", " "))
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=120)
        plt.close(fig)
        figures[name] = f"{name}.png"
    return {"arrays": arrays, "figures": figures}


__all__ = ["centroid_text", "explain_metric", "heatmaps", "side_text", "similarity_line"]
