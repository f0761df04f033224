"""Everything a run report shows, as plain data (lists and numbers).

The HTML report and the PNG figures are both drawn from :func:`collect`'s result, so
they always show the same numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmlkit.evaluation import indexed_pair_scores, pairs_from_labels, retrieval_metrics
from dmlkit.functional.verification import equal_error_rate, roc_curve
from dmlkit.report.metrics_file import check_metrics
from dmlkit.report.projection import PROJECTIONS, check_projection, project_2d
from dmlkit.report.split_notes import REPORT_SPLIT_NOTE, splits_with_notes
from dmlkit.report.svg import downscale
from dmlkit.runs import embed, load_run

#: the metric of every section of the report: the run's held-out metrics (metrics.json)
#: and ``dmlkit evaluate`` (by default) measure Euclidean distances between embeddings
METRIC = "euclidean"
#: what a pair's verification score is, by metric
SCORES = {"euclidean": "negated Euclidean distance", "cosine": "cosine similarity",
          "dot": "dot product"}


def _per_class(x: torch.Tensor, labels: torch.Tensor) -> dict[int, dict[str, float]]:
    """Per class: R-Precision and MAP@R (NaN when no item of the class has another of
    its class to find), ``items`` (the class's held-out items in the report) and
    ``count`` (those items that are evaluable queries, i.e. have a match)."""
    m = retrieval_metrics(x, labels, per_class=True, metric=METRIC)
    items = {int(c): int(n) for c, n in zip(*torch.unique(labels, return_counts=True),
                                            strict=True)}
    return {int(k): {"r_precision": float(v["r_precision"]), "map_at_r": float(v["map_at_r"]),
                     "count": int(v["count"]), "items": items.get(int(k), 0)}
            for k, v in m["per_class"].items()}


def _classes(labels: torch.Tensor, train_labels: torch.Tensor, names: list[str] | None
             ) -> tuple[torch.Tensor, dict[int, str], list[bool]]:
    """The report's classes: ``(n,)`` ids, each id's name and whether each item's class
    is unseen in training.

    Hierarchical ``(n, L)`` labels become one id per leaf (distinct label row, in sorted
    order) named by its row, coarsest level first (``"0/3"``); the report then treats
    leaves as its classes, as retrieval's "same label" (equal at every level) does.
    """
    if labels.dim() == 2:
        rows, codes = torch.unique(labels, dim=0, return_inverse=True)  # (C, L), (n,)
        seen_rows = set(map(tuple, train_labels.reshape(len(train_labels), -1).tolist()))
        row_names = {i: "/".join(map(str, row)) for i, row in enumerate(rows.tolist())}
        return (codes.reshape(-1).long(), row_names,
                [tuple(row) not in seen_rows for row in labels.tolist()])
    seen = set(torch.unique(train_labels).tolist())
    class_names = {int(c): (names[int(c)] if names and int(c) < len(names) else str(int(c)))
                   for c in torch.unique(labels).tolist()}
    return labels, class_names, [int(c) not in seen for c in labels.tolist()]


def _confusions(z: torch.Tensor, labels: torch.Tensor, top: int = 10) -> list[dict[str, Any]]:
    """The ``top`` pairs of classes whose centroids (mean embeddings) are nearest, by
    :data:`METRIC`: ``{"a", "b", "centroid_distance"}``, nearest first."""
    classes = torch.unique(labels)
    centres = torch.stack([z[labels == c].mean(0) for c in classes]).double()  # (C, d)
    dist = torch.cdist(centres, centres)  # (C, C)
    pairs = [(float(dist[i, j]), int(classes[i]), int(classes[j]))
             for i in range(len(classes)) for j in range(i + 1, len(classes))]
    pairs.sort()
    return [{"a": a, "b": b, "centroid_distance": d} for d, a, b in pairs[:top]]


#: at most this many pairs are scored, as ``dmlkit evaluate`` scores (its ``max_pairs``):
#: all pairs of up to 1414 items, so that the report's EER is evaluate's
MAX_PAIRS = 1_000_000


def _verification(z: torch.Tensor, labels: torch.Tensor, seed: int,
                  max_pairs: int = MAX_PAIRS, metric: str = "cosine") -> dict[str, Any]:
    """ROC, DET and score histograms of same- and different-class pairs, scored by
    ``metric``'s similarity (the report's is :data:`METRIC`): all pairs of the items, or
    a seeded random ``max_pairs`` of them when there are more (``"pairs"`` and
    ``"all_pairs"`` say which); with one class (or no two items of one class) only
    ``{"skipped": reason}``."""
    i, j, same = pairs_from_labels(labels, max_pairs=max_pairs, seed=seed)
    if same.all() or not same.any():
        kind = "different" if same.all() else "same"
        n_classes = len(torch.unique(labels))
        why = f"{n_classes} class{'es' if n_classes > 1 else ''}"
        return {"skipped": f"no {kind}-class pairs among the held-out items ({len(labels)} "
                           f"items of {why}), so there is nothing to verify"}
    scores = indexed_pair_scores(z, i, j, metric)  # chunked by bytes, not by pairs
    fpr, tpr, thr = roc_curve(scores, same)
    eer, eer_threshold = equal_error_rate(fpr, tpr, thr)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 400)).astype(int))
    lo, hi = float(scores.min()), float(scores.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, 41)
    return {
        "fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist(),
        "fnr": (1 - tpr[keep]).tolist(), "eer": float(eer), "threshold": float(eer_threshold),
        "bins": edges.tolist(),
        "same_hist": np.histogram(scores[same], edges)[0].tolist(),
        "diff_hist": np.histogram(scores[~same], edges)[0].tolist(),
        "score": SCORES[metric],
        "pairs": int(len(same)), "all_pairs": len(labels) * (len(labels) - 1) // 2,
    }


def _thumbnail(x: np.ndarray) -> list[list[Any]] | None:
    """An image row as ``(H, W)`` or ``(H, W, 3)`` floats in [0, 1], at most
    :data:`~dmlkit.report.svg.THUMBNAIL_PX` pixels along its longer side (a larger image
    area-averaged down to it, :func:`~dmlkit.report.svg.downscale`), else None."""
    if x.ndim == 3 and x.shape[0] in (1, 3):
        img = x[0] if x.shape[0] == 1 else np.transpose(x, (1, 2, 0))
    elif x.ndim == 2:
        img = x
    else:
        return None
    lo, hi = float(img.min()), float(img.max())
    img = downscale((img - lo) / (hi - lo if hi > lo else 1.0))
    return np.asarray(img).round(3).tolist()


def _gallery(z: torch.Tensor, labels: torch.Tensor, x: np.ndarray, n_queries: int, k: int,
             seed: int, rows: np.ndarray) -> list[dict[str, Any]]:
    """Queries and their ``k`` nearest neighbours among the report's items; ``z``,
    ``labels`` and ``x`` are those items, ``rows`` their held-out row numbers, which
    each ``"query"`` and ``"item"`` is."""
    from dmlkit.functional.retrieval import knn

    rng = np.random.default_rng(seed)
    queries = rng.choice(len(z), size=min(n_queries, len(z)), replace=False)
    _, nbrs = knn(z[torch.from_numpy(queries)], z, k + 1, metric=METRIC, exclude_self=False)
    out = []
    for q, row in zip(queries.tolist(), nbrs.tolist(), strict=True):
        row = [r for r in row if r != q and r >= 0][:k]  # (-1: no more items to find)
        out.append({
            "query": int(rows[q]), "label": int(labels[q]), "image": _thumbnail(x[q]),
            "neighbours": [{"item": int(rows[r]), "label": int(labels[r]),
                            "correct": int(labels[r]) == int(labels[q]),
                            "image": _thumbnail(x[r])} for r in row],
        })
    return out


def weights_note(run_dir: str | Path, user: str = "this report",
                 weights: str | None = None) -> str | None:
    """What ``user`` (the command's output) says when the run has no ``model.pt`` and
    its checkpoint's weights stand in (``None`` when it has one); ``weights`` is the
    loaded run's account of them (:attr:`~dmlkit.runs.Run.weights`: which epoch's)."""
    from dmlkit.training.run import MODEL_FILE
    from dmlkit.training.trainer import CHECKPOINT

    run_dir = Path(run_dir)
    if (run_dir / MODEL_FILE).is_file() or not (run_dir / CHECKPOINT).is_file():
        return None
    return (f"the run has no {MODEL_FILE} (it did not finish, or the file was removed): "
            f"{user} uses the weights of its last checkpoint, {CHECKPOINT}"
            + (f": the {weights}" if weights else ""))


def _weights_note(run_dir: Path, weights: str | None) -> str | None:
    """The report's :func:`weights_note`, and which weights its metrics table is of."""
    note = weights_note(run_dir, weights=weights)
    return note and (f"{note}; the held-out metrics table, when there is one, is of the "
                     "weights model.pt held, which these are for a finished run")


#: fewest held-out items a report is meant for: the least ``max_items`` may ask for; a
#: run whose held-out set is smaller gets a report with a note saying so (two items at
#: the least, :data:`FEWEST_ITEMS`)
MIN_ITEMS = 20
#: fewest held-out items a report can be made of (a pair to compare)
FEWEST_ITEMS = 2


def collect(run_dir: str | Path, *, max_items: int = 2000, projection: str = "auto",
            n_queries: int = 8, k: int = 5, seed: int = 0,
            log: Any = None) -> dict[str, Any]:
    """The report's data for a run directory (held-out items, at most ``max_items``).

    The metrics (``metrics.json``) are of all held-out items; the map, gallery,
    verification, per-class results and confusions of a random ``max_items`` of them
    when there are more, as ``sample`` (``{"items": N, "heldout": M}``) says. Item
    numbers (``map["items"]``, the gallery's ``"query"`` and ``"item"``) are held-out
    row numbers. ``verification`` is ``{"skipped": reason}`` when the held-out items hold
    a single class (``heldout_classes``, the held-out set's number of classes, says
    when the retrieval metrics are trivially 1.0); ``per_class`` values give each
    class's ``items`` and evaluable
    ``count``; ``notes`` are what the report should say about the run (e.g. that its
    checkpoint's weights stand in for a missing ``model.pt``, that the held-out split
    rebuilt from an edited ``config.yaml`` is not the run's own, which is also warned of
    and listed in ``warned``, that the weights evaluated are of the best validated epoch,
    ``kept_epoch``, or that the map is not the projection asked for). Every section
    measures :data:`METRIC` (``metric``).

    Raises
    ------
    ValueError
        When the held-out set has fewer than :data:`FEWEST_ITEMS` items.
    """
    say = log or (lambda _m: None)
    check_projection(projection)
    if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < MIN_ITEMS:
        raise ValueError(f"max_items must be an integer >= {MIN_ITEMS} (the map and the "
                         f"retrieval metrics need several items of each class), got {max_items!r}")
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    if run.config.data.tuples is not None:
        raise ValueError(
            f"the report needs a labelled held-out split (its map, gallery, verification and "
            f"per-class results are of held-out classes), and this run has none: it was "
            f"trained from the {run.config.data.kind} in {run.config.data.tuples}, "
            "without class labels")
    metrics = run_metrics(run)  # metrics.json as load_run read it, of the report's shape
    say("loading data")
    train, heldout, warned = splits_with_notes(run)  # (warns: not the run's held-out items)
    warned = [n + REPORT_SPLIT_NOTE if "held-out split" in n else n for n in warned]
    notes = [n for n in [_weights_note(run_dir, run.weights), *warned, _kept_epoch_note(metrics),
                         _size_note(len(heldout.labels))] if n]
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(heldout.labels), size=min(max_items, len(heldout.labels)),
                              replace=False))
    x = heldout.x[torch.from_numpy(rows)]
    labels = heldout.labels[torch.from_numpy(rows)]
    say(f"embedding {len(rows)} held-out items")
    z, _ = embed(run.model, x)
    raw = torch.nn.functional.normalize(x.flatten(1).float(), dim=1)
    labels, class_names, unseen = _classes(labels, train.labels, heldout.class_names)
    say("projecting to 2-D")
    xy, method = project_2d(z.numpy(), projection, seed, notes=notes)
    say("per-class retrieval, confusions and verification")
    learned_pc, raw_pc = _per_class(z, labels), _per_class(raw, labels)
    return {
        "run_dir": str(run_dir), "name": run.config.name,
        "config": run.config.to_dict(), "metrics": metrics,
        # the map, gallery, verification, per-class and confusions are of these items
        "sample": {"items": len(rows), "heldout": len(heldout.labels)},
        # (one: every held-out item is a match of every other; retrieval is trivially 1.0)
        "heldout_classes": int(len(torch.unique(heldout.labels, dim=0))),
        "notes": notes, "metric": METRIC,
        "warned": warned,  # (notes already given as warnings: the CLI does not repeat them)
        "kept_epoch": kept_epoch(metrics),  # (the epoch whose weights are evaluated, or None)
        "history": metrics.get("history") or _history_from_log(run_dir),
        "map": {"method": method, "x": xy[:, 0].tolist(), "y": xy[:, 1].tolist(),
                "labels": labels.tolist(), "items": rows.tolist(),
                "unseen": unseen},
        "class_names": class_names,
        "per_class": {c: {"learned": learned_pc[c], "raw": raw_pc.get(c)} for c in learned_pc},
        "confusions": _confusions(z, labels),
        "verification": _verification(z, labels, seed, metric=METRIC),
        "gallery": _gallery(z, labels, x.numpy(), n_queries, k, seed, rows),
    }


def run_metrics(run: Any) -> dict[str, Any]:
    """A loaded run's ``metrics.json`` (``{}`` when it has none), refused in one line
    naming the file when it is not of the shape the report reads
    (:func:`~dmlkit.report.metrics_file.check_metrics`)."""
    from dmlkit.training.run import METRICS_FILE
    from dmlkit.training.run_dir import resume_command

    return check_metrics(run.metrics, Path(run.run_dir) / METRICS_FILE,
                         f"rewrite it with: {resume_command(run.run_dir)} (or delete the file)")


def kept_epoch(metrics: dict[str, Any]) -> int | None:
    """The epoch whose weights a run trained with validation kept (``model.pt``: its best
    by validation MAP@R, ``metrics.json``'s ``validation.best_epoch``), or None (no
    validation, or no epoch scored: the last epoch's weights)."""
    validation = metrics.get("validation")
    best = validation.get("best_epoch") if isinstance(validation, dict) else None
    return best if isinstance(best, int) and not isinstance(best, bool) and best > 0 else None


def _kept_epoch_note(metrics: dict[str, Any]) -> str | None:
    """The note naming the epoch whose weights the report evaluates, for a run trained
    with validation (None for one without, or whose best epoch is its last)."""
    best = kept_epoch(metrics)
    epochs = [h.get("epoch") for h in metrics.get("history") or []]
    last = max((e for e in epochs if isinstance(e, (int, float))), default=None)
    if best is None or last is None or best >= last:
        return None
    return (f"the run kept the weights of epoch {best} of {int(last)}, its best by "
            "validation MAP@R (model.pt holds them): the held-out metrics, map, gallery, "
            "verification and per-class results are of those weights, not of the last "
            "epoch's; the curves run over every epoch trained (the best one marked)")


def _size_note(n: int) -> str | None:
    """What the report says of a held-out set of ``n`` items: nothing for
    :data:`MIN_ITEMS` or more; a ``ValueError`` below :data:`FEWEST_ITEMS`."""
    if n >= MIN_ITEMS:
        return None
    fix = ("retrain with more data, or hold out more of it (a larger data.test_fraction, "
           "or more data.test_classes)")
    if n < FEWEST_ITEMS:
        raise ValueError(f"the run's held-out set has {n} item{'s' if n != 1 else ''}, and a "
                         f"report compares held-out items with one another (at least "
                         f"{FEWEST_ITEMS}; it is meant for {MIN_ITEMS} or more): {fix}")
    return (f"the run's held-out set has only {n} items (a report is meant for {MIN_ITEMS} "
            f"or more), so its map and per-class results say little: {fix}")


def _history_from_log(run_dir: Path) -> list[dict[str, Any]]:
    log = run_dir / "train.log"
    out: list[dict[str, Any]] = []
    if not log.is_file():
        return out
    for line in log.read_text().splitlines():
        parts = line.split()
        record: dict[str, Any] = {}
        for key, value in zip(parts[::2], parts[1::2], strict=False):
            try:  # (only numbers are drawn: a word where one stood is left out)
                record[key] = float(value)
            except ValueError:
                continue
        if "epoch" in record:  # a line whose epoch is no number is no epoch's record
            out.append(record)
    return out


__all__ = ["collect", "project_2d", "check_projection", "PROJECTIONS", "METRIC", "MIN_ITEMS",
           "kept_epoch", "run_metrics", "weights_note"]
