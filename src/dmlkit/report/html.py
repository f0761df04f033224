"""The run report as one self-contained HTML file: inline SVG charts and PNG thumbnails,
no external script, style sheet, font or image, so it opens offline and makes no request."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from dmlkit.report import svg

STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px}h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:4px}
.row{display:flex;flex-wrap:wrap;gap:16px}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f3f3f3}
.gallery td{text-align:center;overflow-wrap:anywhere}.note{color:#555;font-size:13px}
.gallery-box{max-width:100%;overflow-x:auto}.gallery .item{display:inline-block;padding:2px 4px}
"""
# marks the page as fully rendered; a script error leaves data-errors for tests to read
SCRIPT = """
window.addEventListener('error', function (e) {
  document.body.setAttribute('data-errors', String(e.message)); });
window.addEventListener('load', function () { document.body.setAttribute('data-ok', '1'); });
"""


def _metrics_table(metrics: dict[str, Any]) -> str:
    keys = [k for k in ("precision_at_1", "r_precision", "map_at_r", "recall_at_1",
                        "recall_at_2", "recall_at_4", "recall_at_8") if k in metrics]
    if not keys:
        return '<p class="note">no metrics.json in this run</p>'
    cols = [("learned", metrics)] + [(name, metrics[name]) for name in
                                     ("baseline", "baseline_unnormalized") if name in metrics]
    head = "".join(f"<th>{escape(c)}</th>" for c, _ in cols)
    rows = "".join(
        f"<tr><th>{k}</th>" + "".join(f"<td>{_number(m.get(k))}</td>" for _, m in cols) + "</tr>"
        for k in keys)
    note = escape(str(metrics.get("baseline_inputs", "raw inputs")))
    return (f"<table><tr><th>metric</th>{head}</tr>{rows}</table>"
            f'<p class="note">baseline: {note}</p>')


def loss_points(history: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """The epochs of ``history`` that computed a training loss, and their losses. An
    epoch that trained no batch (nothing to train: a frozen model with ``head_type:
    none``) records no loss (``loss`` absent, or not a number), so it has no point."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v

    kept = [h for h in history if number(h.get("loss"))]
    return [float(h["epoch"]) for h in kept], [float(h["loss"]) for h in kept]


#: the name of the mark at the epoch whose weights the run kept
KEPT_MARK = "weights kept: epoch"


def _curves(history: list[dict[str, Any]], kept: int | None = None) -> str:
    """The loss, validation and learning-rate curves; ``kept`` (the epoch whose weights
    the run kept, by validation) is marked on the first two."""
    if not history:
        return '<p class="note">no per-epoch history recorded</p>'
    epochs = [float(h["epoch"]) for h in history]
    marks = {KEPT_MARK: float(kept)} if kept is not None else None
    loss_epochs, losses = loss_points(history)
    parts = [svg.lines({"train loss": (loss_epochs, losses)}, "training loss", "epoch", "loss",
                       marks=marks)
             if losses else '<p class="note">training loss: - (no epoch trained a batch: '
             "nothing to train, e.g. a frozen model with head_type: none)</p>"]
    val = {k: (epochs, [float(h[k]) for h in history]) for k in history[0]
           if k.startswith("val_") and all(k in h for h in history)}
    if val:
        parts.append(svg.lines(val, "validation metrics", "epoch", "value", marks=marks))
    if all("lr" in h for h in history):
        parts.append(svg.lines({"learning rate": (epochs, [float(h["lr"]) for h in history])},
                               "learning rate", "epoch", "lr"))
    return '<div class="row">' + "".join(parts) + "</div>"


def _gallery(gallery: list[dict[str, Any]], names: dict[int, str],
             among: str = "held-out items") -> str:
    """The queries and their neighbours (``among`` says which items they are found in);
    each item is named by its held-out row number."""
    rows = []
    for g in gallery:
        name = names.get(g["label"], str(g["label"]))
        tip = f"query: held-out item {g['query']}: {name}"
        cells = [f"<td>{_item(g['image'], '#333', tip, g['query'])}<br>{escape(name)}</td>"]
        for n in g["neighbours"]:
            mark = "#2ca02c" if n["correct"] else "#d62728"
            label = names.get(n["label"], str(n["label"]))
            tip = (f"held-out item {n['item']}: {label} "
                   f"({'right' if n['correct'] else 'wrong'})")
            cells.append(f"<td>{_item(n['image'], mark, tip, n['item'])}<br>{escape(label)} "
                         f"{'&#10003;' if n['correct'] else '&#10007;'}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="gallery-box"><table class="gallery"><tr><th>query</th>'
            f'<th colspan="99">nearest {escape(among)} (green: same class, red: other '
            "class)</th></tr>" + "".join(rows) + "</table></div>")


def _item(image: Any, border: str, tip: str, item: int) -> str:
    """Held-out item ``item`` in a gallery cell: its thumbnail, or (an item that is no
    image) a short "item N", the whole ``tip`` on hover."""
    if image is None:
        return (f'<span class="item" title="{escape(tip)}" style="border:3px solid {border}">'
                f"item {int(item)}</span>")
    return svg.image_tag(image, border, tip=tip)


def _number(value: Any) -> str:
    """A metric to four places, or "n/a" when there is none (None or NaN)."""
    import math

    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return f"{float(value):.4f}"


def _sample(data: dict[str, Any]) -> tuple[str, str]:
    """``(note, among)``: the note on sections computed on a random subsample of the
    held-out items (empty when they are all of them), and which items the gallery's
    neighbours are found in."""
    sample = data.get("sample") or {}
    n, total = sample.get("items"), sample.get("heldout")
    if n is None or total is None or n >= total:
        return "", "held-out items"
    table = any(k in data["metrics"] for k in ("precision_at_1", "map_at_r", "r_precision"))
    rest = f"; the table above on all {total}" if table else ""
    note = (f'<p class="note sample">Computed on a random {n} of the {total} held-out items '
            f"(--max-items){rest}.</p>")
    return note, f"among the {n} sampled held-out items (of {total})"


def _notes(data: dict[str, Any]) -> str:
    return "".join(f'<p class="note">Note: {escape(str(n))}</p>' for n in data.get("notes", []))


def _metric(data: dict[str, Any]) -> str:
    """The note naming the metric every section of the report measures."""
    metric = data.get("metric")
    if metric is None:  # (data collected before the report named it)
        return ""
    return (f'<p class="note metric">Metric: {escape(str(metric).capitalize())} distance between '
            "embeddings throughout (per-class retrieval, gallery neighbours, verification "
            "scores, confused classes), as in the run's held-out metrics and dmlkit "
            "evaluate's default.</p>")


def _trivial(data: dict[str, Any]) -> str:
    """The note that retrieval over a held-out set of one class is trivially 1.0 (empty
    for two classes or more)."""
    classes = data.get("heldout_classes")
    sample = data.get("sample") or {}
    if classes is None and sample.get("items") == sample.get("heldout"):
        classes = len(data["per_class"])  # (data collected before it was counted)
    if classes != 1:
        return ""
    return ('<p class="note trivial">Note: retrieval metrics are trivially 1.0 (here and '
            "per class below): the held-out set has one class, so every other held-out item "
            "is a match, whatever the embeddings; hold out at least two classes (e.g. more "
            "data.test_classes) to measure retrieval.</p>")


def _confusions(pairs: list[dict[str, Any]], names: dict[int, str], n_classes: int) -> str:
    """The table of the nearest pairs of class centroids, or one line saying why there
    is none (``n_classes``: the classes of the report's held-out items)."""
    if not pairs:
        why = (f"the report's held-out items are of {n_classes} class"
               f"{'es' if n_classes != 1 else ''}" if n_classes < 2
               else "none was computed")
        return f'<p class="note">Note: no pair of classes to compare: {why}.</p>'
    closeness = "centroid_distance" if all(
        "centroid_distance" in p for p in pairs) else "centroid_cosine"
    rows = "".join(
        f"<tr><td>{escape(names.get(p['a'], str(p['a'])))}</td>"
        f"<td>{escape(names.get(p['b'], str(p['b'])))}</td><td>{p[closeness]:.4f}</td></tr>"
        for p in pairs)
    return (f'<table><tr><th>class</th><th>class</th><th>{closeness.replace("_", " ")}</th>'
            f"</tr>{rows}\n</table>")


def _verification(ver: dict[str, Any]) -> str:
    """ROC, DET and the score histograms, or the reason they were skipped."""
    if "skipped" in ver:
        return f'<p class="note">skipped: {escape(ver["skipped"])}</p>'
    roc = svg.lines({"ROC": (ver["fpr"], ver["tpr"])}, "ROC", "false accept rate",
                    "true accept rate")
    det = svg.lines({"DET": ([max(f, 1e-4) for f in ver["fpr"]], ver["fnr"])}, "DET",
                    "false accept rate (log)", "false reject rate", log_x=True)
    centres = [(a + b) / 2 for a, b in zip(ver["bins"][:-1], ver["bins"][1:], strict=True)]
    hist = svg.lines({"same class": (centres, ver["same_hist"]),
                      "different class": (centres, ver["diff_hist"])},
                     f"pair scores; EER threshold {ver['threshold']:.3f}", ver["score"], "pairs",
                     marks={"EER threshold": ver["threshold"]})
    pairs, total = ver.get("pairs"), ver.get("all_pairs")
    over = ("" if pairs is None else f", over all {pairs} pairs" if pairs == total
            else f", over a random {pairs} of the {total} pairs (sampled)")
    return (f'<div class="row">{roc}{det}{hist}</div><p class="note">EER {ver["eer"]:.4f} at '
            f'{escape(ver["score"])} threshold {ver["threshold"]:.4f}{over}.</p>')


def render(data: dict[str, Any]) -> str:
    """The report page of :func:`~dmlkit.report.collect` data."""
    names = {int(k): v for k, v in data["class_names"].items()}
    mp = data["map"]
    hover = [f"item {i}: {names.get(c, c)}{' (unseen class)' if u else ''}"
             for i, c, u in zip(mp["items"], mp["labels"], mp["unseen"], strict=True)]
    scatter = svg.scatter(mp["x"], mp["y"], mp["labels"], hover, mp["unseen"],
                          f"{mp['method']} of held-out embeddings", names)
    ver = data["verification"]
    classes = sorted(data["per_class"], key=int)
    per = data["per_class"]
    bars = svg.bars(
        {"learned MAP@R": [per[c]["learned"]["map_at_r"] for c in classes],
         "raw MAP@R": [(per[c]["raw"] or {}).get("map_at_r", float("nan")) for c in classes]},
        [names.get(int(c), str(c)) for c in classes], "per-class MAP@R", "MAP@R")
    per_rows = "".join(
        f"<tr><th>{escape(names.get(int(c), str(c)))}</th>"
        f"<td>{per[c]['learned'].get('items', '')}</td><td>{per[c]['learned']['count']}</td>"
        f"<td>{_number(per[c]['learned']['r_precision'])}</td>"
        f"<td>{_number(per[c]['learned']['map_at_r'])}</td>"
        f"<td>{_number((per[c]['raw'] or {}).get('map_at_r'))}</td></tr>"
        for c in classes)
    unseen = sum(mp["unseen"])
    sampled, among = _sample(data)
    on_all = (f'<p class="note">On all {data["sample"]["heldout"]} held-out items.</p>'
              if sampled and any(k in data["metrics"] for k in ("map_at_r", "r_precision"))
              else "")
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8">
<title>dmlkit report: {escape(data['name'])}</title><style>{STYLE}</style>
<script>{SCRIPT}</script></head><body>
<h1>Run report: {escape(data['name'])}</h1>
<p class="note">{escape(data['run_dir'])} &middot; model {escape(str(data['config']['model']))}
&middot; loss {escape(str(data['config']['loss']))}</p>{_metric(data)}{_notes(data)}
<h2>Held-out retrieval (leave-one-out)</h2>{_metrics_table(data['metrics'])}{on_all}
{_trivial(data)}
<h2>Training</h2>{_curves(data['history'], data.get('kept_epoch'))}
<h2>Embedding map</h2>{sampled}<div class="row">{scatter}</div>
<p class="note">{len(mp['x'])} held-out items; {unseen} from classes unseen in training (rings).
Hover a point for its item.</p>
<h2>Retrieval gallery</h2>{sampled}{_gallery(data['gallery'], names, among)}
<h2>Verification</h2>{sampled}{_verification(ver)}
<h2>Per class: learned vs raw inputs</h2>{sampled}<div class="row">{bars}</div>
<table><tr><th>class</th><th>items</th><th>queries with a match</th><th>R-Precision</th>
<th>MAP@R</th><th>raw MAP@R</th></tr>
{per_rows}</table>
<p class="note">A class's metrics average over its items that have another item of the
class to find; n/a: none has.</p>
<h2>Most confused classes (nearest class centroids)</h2>{sampled}
{_confusions(data['confusions'], names, len(classes))}
</body></html>"""


#: the suffixes a report file may have
REPORT_SUFFIXES = (".html", ".htm")


def check_report_path(path: str | Path, run_dir: str | Path) -> None:
    """Raise a ``ValueError`` unless ``path`` may take the report of the run in
    ``run_dir``: an ``.html`` / ``.htm`` file that is none of a run directory's own files
    (:func:`~dmlkit.runs.run_files.check_not_run_file`), save the run's own
    ``report.html``."""
    from dmlkit.runs.run_files import check_not_run_file

    path = Path(path)
    check_not_run_file(path, run_dir=run_dir, allow=("report.html",),
                       fix="give the report another name (e.g. another-report.html)")
    if path.suffix.lower() not in REPORT_SUFFIXES:
        raise ValueError(f"{path}: a report is an HTML file; give a name ending in .html "
                         f"(e.g. {path.with_suffix('.html').name})")


def write_report(data: dict[str, Any], path: str | Path) -> Path:
    """Write :func:`render` output atomically (refusing a path :func:`check_report_path`
    refuses)."""
    from dmlkit.evaluation.evaluate import write_text

    check_report_path(path, data["run_dir"])
    return write_text(render(data), path)


__all__ = ["check_report_path", "loss_points", "render", "write_report", "REPORT_SUFFIXES"]
