"""Small inline-SVG charts for the self-contained HTML report (no scripts, no network).

Hover text uses SVG ``<title>`` elements, which every browser shows as a tooltip.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from html import escape
from typing import Any

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]
W, H, PAD = 480, 300, 44


#: most classes named in a chart's legend; the rest are counted
MAX_LEGEND = 20
LEGEND_W = 190
#: a gallery thumbnail's longest side, in stored pixels (twice the 56 px it is drawn at):
#: larger images are downscaled to it, smaller ones kept as they are
THUMBNAIL_PX = 112
#: the width of a character, in ems (a text of ``n`` characters at ``size`` px spans
#: about ``CHAR_EM * size * n`` px)
CHAR_EM = 0.6


def text_px(text: str, size: float) -> float:
    """About how many pixels ``text`` spans at font size ``size`` (:data:`CHAR_EM`)."""
    return CHAR_EM * size * len(text)


def colour(i: int, n: int = len(PALETTE)) -> str:
    """Colour ``i`` of ``n``: the ten-colour palette, or ``n`` evenly spaced hues past it
    (alternating in lightness), so no two of ``n`` groups share a colour."""
    if n <= len(PALETTE):
        return PALETTE[i % len(PALETTE)]
    return f"hsl({round(360 * i / n)},70%,{40 if i % 2 else 55}%)"


def short_name(name: str, most: int) -> str:
    """``name`` in at most ``most`` characters: a longer one keeps its start and its end
    around an ellipsis (``"class_with\u2026g_name_17"``), so names sharing a long prefix
    (or suffix) stay apart."""
    if len(name) <= most:
        return name
    tail = (most - 1) // 2
    return name[: most - 1 - tail] + "\u2026" + (name[-tail:] if tail else "")


def _finite(values: Sequence[float]) -> list[float]:
    """The finite values of ``values`` (a class without an evaluable query has NaN)."""
    import math

    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _scale(values: Sequence[float], lo_px: float, hi_px: float, log: bool = False,
           centre: bool = True):
    """A map from data to pixels spanning the finite ``values`` (NaN and inf skipped),
    and their range. Values of no spread (one point, a flat curve) are drawn halfway
    between ``lo_px`` and ``hi_px`` when ``centre`` (at ``lo_px`` otherwise)."""
    import math

    finite = _finite(values) or [0.0, 1.0]
    vals = [math.log10(max(v, 1e-6)) if log else v for v in finite]
    lo, hi = min(vals), max(vals)
    if hi <= lo:  # no spread: pad the range (around the value, when centred)
        pad = abs(lo) * 0.1 or 0.5
        lo, hi = (lo - pad, lo + pad) if centre else (lo, lo + 1.0)

    def f(v: float) -> float:
        v = math.log10(max(v, 1e-6)) if log else v
        return lo_px + (v - lo) / (hi - lo) * (hi_px - lo_px)

    return f, (min(finite), max(finite))


def _frame(body: str, title: str, xlabel: str, ylabel: str, xr: tuple | None, yr: tuple,
           extra_w: int = 0) -> str:
    """The chart's frame and axis titles (``xr`` None: no range after the x title)."""
    width = W + extra_w
    x_range = f" [{xr[0]:.3g}, {xr[1]:.3g}]" if xr is not None else ""
    return (
        f'<svg class="chart" viewBox="0 0 {width} {H}" width="{width}" height="{H}" '
        f'role="img"><title>{escape(title)}</title>'
        f'<rect x="{PAD}" y="10" width="{W - PAD - 10}" height="{H - PAD - 10}" fill="#fafafa" '
        f'stroke="#999"/>{body}'
        f'<text x="{W / 2}" y="{H - 6}" text-anchor="middle" font-size="12">{escape(xlabel)}'
        f"{x_range}</text>"
        f'<text x="12" y="{H / 2}" font-size="12" transform="rotate(-90 12 {H / 2})" '
        f'text-anchor="middle">{escape(ylabel)} [{yr[0]:.3g}, {yr[1]:.3g}]</text></svg>'
    )


def lines(series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str,
          xlabel: str, ylabel: str, log_x: bool = False,
          marks: dict[str, float] | None = None) -> str:
    """One polyline per named ``(xs, ys)`` series, with a legend in rows above the
    curves (which never run through it); ``marks`` are named x values drawn as dashed
    vertical lines (e.g. a threshold)."""
    marks = marks or {}
    xs_all = [x for xs, _ in series.values() for x in xs] + list(marks.values()) or [0.0, 1.0]
    ys_all = [y for _, ys in series.values() for y in ys] or [0.0, 1.0]
    fx, xr = _scale(xs_all, PAD, W - 10, log_x)
    fy, yr = _scale(ys_all, H - PAD, 20 + 14 * len(series))  # the legend's rows above
    body = []
    for i, (name, (xs, ys)) in enumerate(series.items()):
        pts = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in zip(xs, ys, strict=True))
        body.append(f'<polyline fill="none" stroke="{colour(i)}" stroke-width="2" '
                    f'points="{pts}"><title>{escape(name)}</title></polyline>')
        if len(xs) <= 30:  # few points (e.g. a short run): mark each one
            body += [f'<circle cx="{fx(x):.1f}" cy="{fy(y):.1f}" r="3" fill="{colour(i)}">'
                     f"<title>{escape(name)}: {y:.4g} at {x:.4g}</title></circle>"
                     for x, y in zip(xs, ys, strict=True)]
        if len(xs) == 1:  # one point (e.g. a one-epoch run): its value beside it
            body.append(f'<text class="value" x="{fx(xs[0]) + 6:.1f}" y="{fy(ys[0]) - 6:.1f}" '
                        f'font-size="11" fill="{colour(i)}">{ys[0]:.4g}</text>')
        body.append(f'<text x="{PAD + 8}" y="{26 + 14 * i}" font-size="11" '
                    f'fill="{colour(i)}">{escape(name)}</text>')
    for name, x in marks.items():
        body.append(f'<line class="mark" x1="{fx(x):.1f}" y1="10" x2="{fx(x):.1f}" '
                    f'y2="{H - PAD}" stroke="#333" stroke-width="1.5" stroke-dasharray="5,3">'
                    f"<title>{escape(name)} {x:.4g}</title></line>")
    return _frame("".join(body), title, xlabel, ylabel, xr, yr)


def scatter(xs: Sequence[float], ys: Sequence[float], groups: Sequence[int],
            hover: Sequence[str], hollow: Sequence[bool], title: str,
            names: dict[int, str] | None = None) -> str:
    """Points coloured by group, with a legend of the groups' ``names`` (at most
    :data:`MAX_LEGEND`, the largest groups; the rest counted); ``hollow`` points (e.g.
    unseen classes) drawn as rings."""
    fx, xr = _scale(xs, PAD, W - 10)
    fy, yr = _scale(ys, H - PAD, 10)
    kinds = sorted(set(groups))
    order = {g: i for i, g in enumerate(kinds)}
    body = []
    for x, y, g, text, ring in zip(xs, ys, groups, hover, hollow, strict=True):
        c = colour(order[g], len(kinds))
        style = f'fill="white" stroke="{c}"' if ring else f'fill="{c}"'
        body.append(f'<circle cx="{fx(x):.1f}" cy="{fy(y):.1f}" r="3" {style}>'
                    f"<title>{escape(text)}</title></circle>")
    legend, legend_w = _legend(kinds, groups, hollow, names or {})
    body.append(legend)
    return _frame("".join(body), title, "dimension 1", "dimension 2", xr, yr, legend_w)


def _legend(kinds: list[int], groups: Sequence[int], hollow: Sequence[bool],
            names: dict[int, str]) -> tuple[str, int]:
    """The scatter's legend, right of the plot: one row per group, largest first when
    there are more than :data:`MAX_LEGEND`; and its width (at least :data:`LEGEND_W`,
    wider when its longest row needs it, by :func:`text_px`)."""
    import math
    from collections import Counter

    sizes = Counter(groups)
    ring = {g: h for g, h in zip(groups, hollow, strict=True)}
    shown = kinds if len(kinds) <= MAX_LEGEND else sorted(
        sorted(kinds, key=lambda g: -sizes[g])[: MAX_LEGEND - 1])
    rows = ['<g class="legend">']
    step = min(14.0, (H - PAD - 20) / (len(shown) + 1))
    size = round(min(11, step))
    width = float(LEGEND_W)
    for r, g in enumerate(shown):
        c = colour(kinds.index(g), len(kinds))
        y = 18 + r * step
        style = f'fill="white" stroke="{c}"' if ring[g] else f'fill="{c}"'
        name = str(names.get(g, g))
        label = short_name(name, 20) + (" (unseen)" if ring[g] else "")
        rows.append(f'<circle cx="{W + 4}" cy="{y:.1f}" r="4" {style}/>'
                    f'<text x="{W + 12}" y="{y + 4:.1f}" font-size="{size}">'
                    f"{escape(label)}<title>{escape(name)}</title></text>")
        width = max(width, 12 + text_px(label, size) + 4)
    if len(shown) < len(kinds):
        y = 18 + len(shown) * step
        more = f"+{len(kinds) - len(shown)} more classes (hover)"
        rows.append(f'<text x="{W - 2}" y="{y + 4:.1f}" font-size="11" fill="#555">'
                    f"{more}</text>")
        width = max(width, -2 + text_px(more, 11) + 4)
    return "".join(rows) + "</g>", math.ceil(width)


def bars(groups: dict[str, Sequence[float]], categories: Sequence[str], title: str,
         ylabel: str) -> str:
    """Grouped bars: one bar per series for each category, the categories named under
    the axis (every k-th name when there are many); a NaN value is drawn as "n/a"."""
    import math

    n_series, n_cat = len(groups), max(len(categories), 1)
    values = [v for vs in groups.values() for v in vs] + [0.0]
    # (the legend's rows above the bars; bars of no spread stand on the axis)
    fy, yr = _scale(values, H - PAD, 20 + 14 * n_series, centre=False)
    slot = (W - PAD - 10) / n_cat
    width = slot * 0.8 / max(n_series, 1)
    body = []
    for s, (name, vs) in enumerate(groups.items()):
        for c, v in enumerate(vs):
            x = PAD + c * slot + slot * 0.1 + s * width
            if v is None or not math.isfinite(float(v)):
                body.append(f'<text x="{x + width / 2:.1f}" y="{fy(0) - 3:.1f}" '
                            f'font-size="8" text-anchor="middle" fill="{colour(s)}">n/a'
                            f"<title>{escape(name)} {escape(categories[c])}: n/a (no "
                            "evaluable query)</title></text>")
                continue
            body.append(f'<rect x="{x:.1f}" y="{fy(v):.1f}" width="{width:.1f}" '
                        f'height="{max(fy(0) - fy(v), 0):.1f}" fill="{colour(s)}">'
                        f"<title>{escape(name)} {escape(categories[c])}: {v:.4f}</title></rect>")
        body.append(f'<text x="{PAD + 8}" y="{26 + 14 * s}" font-size="11" '
                    f'fill="{colour(s)}">{escape(name)}</text>')
    ticks = [short_name(str(c), 12) for c in categories]
    label_px = text_px(max(ticks, key=len, default="x"), 9) + 6  # 9 px type, a gap
    every = max(1, math.ceil(label_px / slot))  # every k-th name, so none overlap
    for c in range(0, len(ticks), every):
        x = PAD + (c + 0.5) * slot
        body.append(f'<text class="tick" x="{x:.1f}" y="{H - PAD + 12}" font-size="9" '
                    f'text-anchor="middle">{escape(ticks[c])}'
                    f"<title>{escape(str(categories[c]))}</title></text>")
    return _frame("".join(body), title, "class", ylabel, None, yr)


def _area_weights(n_in: int, n_out: int) -> Any:
    """``(n_out, n_in)`` weights averaging each output pixel's span of input pixels (by
    how much of each input pixel it covers); rows sum to one."""
    import numpy as np

    step = n_in / n_out
    lo = np.arange(n_out)[:, None] * step  # (n_out, 1)
    start = np.arange(n_in)[None, :]  # (1, n_in)
    cover = np.clip(np.minimum(lo + step, start + 1) - np.maximum(lo, start), 0, None)
    return cover / cover.sum(axis=1, keepdims=True)  # (n_out, n_in)


def downscale(pixels: Any, most: int = THUMBNAIL_PX) -> Any:
    """A ``(H, W)`` or ``(H, W, 3)`` image with its longer side at most ``most`` pixels,
    its aspect ratio kept, each pixel the area average of those it covers; an image that
    fits is returned as it is (the browser scales it up)."""
    import numpy as np

    img = np.asarray(pixels, dtype=float)
    h, w = img.shape[:2]
    if max(h, w) <= most:
        return pixels
    scale = most / max(h, w)
    rows = _area_weights(h, max(1, round(h * scale)))  # (h', h)
    cols = _area_weights(w, max(1, round(w * scale)))  # (w', w)
    img = np.tensordot(rows, img, axes=(1, 0))  # (h', w[, 3])
    return np.tensordot(cols, img, axes=(1, 1)).swapaxes(0, 1)  # (h', w'[, 3])


def image_tag(pixels: Any, border: str = "#999", size: int = 56, tip: str = "") -> str:
    """An inline PNG (data URI) of a ``(H, W)`` or ``(H, W, 3)`` image in [0, 1], drawn
    ``size`` pixels along its longer side (its aspect ratio kept) and stored at most
    :data:`THUMBNAIL_PX` pixels along it (:func:`downscale`)."""
    import numpy as np

    pixels = np.asarray(pixels, dtype=float)
    h, w = pixels.shape[:2]
    width, height = (max(1, round(size * side / max(h, w, 1))) for side in (w, h))
    arr = (np.clip(downscale(pixels), 0, 1) * 255).astype(np.uint8)
    png = _png(arr)
    data = base64.b64encode(png).decode()
    return (f'<img src="data:image/png;base64,{data}" width="{width}" height="{height}" '
            f'style="image-rendering:pixelated;border:3px solid {border}" '
            f'title="{escape(tip)}" alt="{escape(tip)}">')


def _png(arr: Any) -> bytes:
    """Minimal PNG encoder (8-bit grey or RGB), so the report needs no imaging library."""
    import struct
    import zlib

    import numpy as np

    arr = np.asarray(arr)
    h, w = arr.shape[:2]
    kind = 0 if arr.ndim == 2 else 2
    raw = b"".join(b"\x00" + arr[r].tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", w, h, 8, kind, 0, 0, 0)
    out = io.BytesIO()
    out.write(b"\x89PNG\r\n\x1a\n")
    out.write(chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return out.getvalue()


__all__ = ["lines", "scatter", "bars", "image_tag", "colour", "short_name"]
