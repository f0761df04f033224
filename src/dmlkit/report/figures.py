"""The report's figures as PNG files for papers (matplotlib), from the same data."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dmlkit.report.html import loss_points

#: the per-class figure's width (inches) and its class names' type size (points)
PER_CLASS_WIDTH, TICK_POINTS = 6.0, 7
#: longest class name drawn whole under a bar (longer ones are cut, as the HTML cuts them),
#: and when there are too many classes for them all, upright under every k-th bar
TICK_CHARS, UPRIGHT_TICK_CHARS = 12, 24


def plain_text(text: str) -> str:
    """``text`` (data: a class name) as matplotlib draws it literally: ``$`` escaped, so
    that it never starts mathtext, and a leading ``_`` (which hides a legend entry)
    behind a space."""
    text = str(text).replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def thinned_ticks(names: list[str], width_points: float, points: float = TICK_POINTS,
                  upright: bool = False) -> list[int]:
    """Positions of ``names`` to label along an axis ``width_points`` long in type of
    ``points``, written across (or ``upright``): every k-th, so that no two labels
    overlap (as the HTML report thins its per-class names)."""
    if not names:
        return []
    slot = width_points / len(names)
    label = (1.4 * points if upright  # a line of type
             else 0.6 * points * max(len(n) for n in names) + 0.5 * points)  # a gap between
    return list(range(0, len(names), max(1, math.ceil(label / slot))))


#: every figure :func:`write_figures` may write, by name
FIGURES = ("curves.png", "learning_rate.png", "map.png", "roc_det.png", "scores.png",
           "per_class.png")


def planned_figures(data: dict[str, Any]) -> list[str]:
    """The names of the figures :func:`write_figures` writes of ``data``."""
    hist = data["history"]
    val = any(k.startswith("val_") and all(k in h for h in hist) for k in
              (hist[0] if hist else {}))
    return [name for name, drawn in (
        ("curves.png", bool(loss_points(hist)[1]) or val),
        ("learning_rate.png", bool(hist) and all("lr" in h for h in hist)),
        ("map.png", True),
        ("roc_det.png", "skipped" not in data["verification"]),
        ("scores.png", "skipped" not in data["verification"]),
        ("per_class.png", True)) if drawn]


def stale_figures(data: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """The files in ``out_dir`` named as a figure of :data:`FIGURES` that the report of
    ``data`` does not write (an earlier report's); other files, and links, are not
    among them."""
    out, planned = Path(out_dir), set(planned_figures(data))
    return [out / name for name in FIGURES if name not in planned
            and (out / name).is_file() and not (out / name).is_symlink()]


def write_figures(data: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """``curves.png``, ``learning_rate.png``, ``map.png``, ``roc_det.png``,
    ``scores.png`` and ``per_class.png`` of :func:`~dmlkit.report.collect` data (also
    after a round trip through JSON, which turns class keys into strings). Verification
    figures are left out when the data skipped verification; a class without an
    evaluable query has no bar; an epoch that recorded no training loss (nothing was
    trained) has no point on the loss curve. An earlier report's figures in ``out_dir``
    that this one does not write (:func:`stale_figures`) are removed first, so that the
    folder holds one report's figures."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("PNG figures need matplotlib: pip install 'dmlkit[report]'") from None
    given = {int(k): str(v) for k, v in data["class_names"].items()}
    names = {k: plain_text(v) for k, v in given.items()}  # drawn as they are
    per_class = {int(k): v for k, v in data["per_class"].items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in stale_figures(data, out):
        stale.unlink()
    paths: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=150)
        plt.close(fig)
        paths.append(out / name)

    sample = data.get("sample") or {}
    n, total = sample.get("items"), sample.get("heldout")
    # (as the HTML says it: these figures are of a random --max-items of the held-out set)
    of = f"\n(a random {n} of {total} held-out items)" if n and total and n < total else ""
    hist = data["history"]
    loss_epochs, losses = loss_points(hist)  # (none where no batch was trained)
    val_keys = [k for k in (hist[0] if hist else {})
                if k.startswith("val_") and all(k in h for h in hist)]  # (as the HTML)
    if losses or val_keys:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        if losses:
            ax.plot(loss_epochs, losses, label="train loss", marker=_marker(losses))
        for key in val_keys:
            ax.plot([h["epoch"] for h in hist], [h[key] for h in hist], label=key,
                    marker=_marker(hist))
        if data.get("kept_epoch") is not None:  # (as the HTML marks it)
            ax.axvline(data["kept_epoch"], color="k", linestyle="--", linewidth=1,
                       label=f"weights kept: epoch {data['kept_epoch']}")
        ax.set_xlabel("epoch")
        ax.legend()
        save(fig, "curves.png")
    if hist and all("lr" in h for h in hist):  # as the HTML report shows it
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([h["epoch"] for h in hist], [float(h["lr"]) for h in hist],
                marker=_marker(hist))
        ax.set_xlabel("epoch")
        ax.set_ylabel("learning rate")
        save(fig, "learning_rate.png")
    mp = data["map"]
    fig, ax = plt.subplots(figsize=(5, 4.5))
    kinds = sorted(set(mp["labels"]))
    for i, c in enumerate(kinds):
        idx = [j for j, v in enumerate(mp["labels"]) if v == c]
        unseen = mp["unseen"][idx[0]]
        ax.scatter([mp["x"][j] for j in idx], [mp["y"][j] for j in idx], s=6,
                   label=names.get(int(c), str(c)) + (" (unseen)" if unseen else ""),
                   marker="o" if not unseen else "x",
                   color=mpl_colour(i, len(kinds)))  # (the HTML map's colours: all distinct)
    ax.set_title(f"{mp['method']} of held-out embeddings{of}", fontsize=9 if of else None)
    if len(set(mp["labels"])) <= 30:  # a legend of more classes hides the map
        ax.legend(fontsize=6, markerscale=2)
    save(fig, "map.png")
    ver = data["verification"]
    if "skipped" not in ver:
        _verification(ver, plt, save, of.strip())
    classes = sorted(per_class)
    fig, ax = plt.subplots(figsize=(PER_CLASS_WIDTH, 3.2))
    xs = range(len(classes))
    nan = float("nan")  # a NaN bar is not drawn
    ax.bar([x - 0.2 for x in xs], [per_class[c]["learned"]["map_at_r"] for c in classes],
           0.4, label="learned")
    ax.bar([x + 0.2 for x in xs],
           [(per_class[c]["raw"] or {}).get("map_at_r", nan) for c in classes], 0.4,
           label="raw inputs")
    ticks = [_cut(given.get(c, str(c))) for c in classes]
    width = PER_CLASS_WIDTH * 72 * 0.85  # points: the axes' share of the figure
    shown, rotation = thinned_ticks(ticks, width), 0
    if len(shown) < len(ticks):  # names do not all fit across: upright, more of them
        ticks = [_cut(given.get(c, str(c)), UPRIGHT_TICK_CHARS) for c in classes]
        shown, rotation = thinned_ticks(ticks, width, upright=True), 90
        fig.set_size_inches(PER_CLASS_WIDTH, 4.4)
    ax.set_xticks(shown, [plain_text(ticks[i]) for i in shown], fontsize=TICK_POINTS,
                  rotation=rotation)
    ax.set_xlim(-0.6, len(classes) - 0.4)
    ax.set_ylabel("MAP@R")
    if of:
        ax.set_title(f"per-class MAP@R{of}", fontsize=9)
    ax.legend()
    save(fig, "per_class.png")
    return paths


def mpl_colour(i: int, n: int) -> tuple[float, float, float]:
    """Colour ``i`` of ``n`` as an RGB triple for matplotlib: the HTML map's colour
    (:func:`~dmlkit.report.svg.colour`: its palette, or ``n`` distinct hues past it)."""
    import colorsys
    import re

    from dmlkit.report.svg import colour

    c = colour(i, n)
    if c.startswith("#"):
        return tuple(int(c[k : k + 2], 16) / 255 for k in (1, 3, 5))  # type: ignore[return-value]
    hue, sat, light = (float(v) for v in re.findall(r"[\d.]+", c))  # hsl(H,S%,L%)
    return colorsys.hls_to_rgb(hue / 360, light / 100, sat / 100)


def _marker(points: list[Any]) -> str | None:
    """A dot for a curve of one point (a one-epoch run), which a line alone never draws."""
    return "o" if len(points) == 1 else None


def _cut(name: str, most: int = TICK_CHARS) -> str:
    """A class name of at most ``most`` characters (a longer one keeps its start and its
    end around an ellipsis, :func:`~dmlkit.report.svg.short_name`)."""
    from dmlkit.report.svg import short_name

    return short_name(name, most)


def _verification(ver: dict[str, Any], plt: Any, save: Any, of: str = "") -> None:
    """``roc_det.png`` and ``scores.png`` (``of``: which items, when a sample)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.5))
    if of:
        fig.suptitle(of, fontsize=9)
    a.plot(ver["fpr"], ver["tpr"])
    a.set_xlabel("false accept rate")
    a.set_ylabel("true accept rate")
    a.set_title("ROC")
    b.plot(ver["fpr"], ver["fnr"])
    b.set_xscale("log")
    b.set_xlabel("false accept rate")
    b.set_ylabel("false reject rate")
    b.set_title("DET")
    save(fig, "roc_det.png")
    fig, ax = plt.subplots(figsize=(5, 3.2))
    centres = [(x + y) / 2 for x, y in zip(ver["bins"][:-1], ver["bins"][1:], strict=True)]
    ax.plot(centres, ver["same_hist"], label="same class")
    ax.plot(centres, ver["diff_hist"], label="different class")
    ax.axvline(ver["threshold"], color="k", linestyle="--", label="EER threshold")
    ax.set_xlabel(ver["score"])
    if of:
        ax.set_title(of, fontsize=9)
    ax.legend()
    save(fig, "scores.png")


__all__ = ["FIGURES", "plain_text", "planned_figures", "stale_figures", "thinned_ticks",
           "write_figures"]
