"""The refusal of a data spec that describes tuple data where a labelled dataset is read.

A data section ``{kind: pairs | triplets, tuples: FILE}`` names pairs or triplets of
items (rows of ``data.features``, or image paths) and no class labels; its ``data.name``
(``digits`` by default) is not read by such a run. A command that reads a labelled
dataset from it (``dmlkit evaluate`` / ``embed`` / ``index build`` with ``--data
CONFIG.yaml``, :func:`~dmlkit.data.load.load_dataset`) would read that unused source in
its place, so it is refused, saying what to pass instead. Tuples drawn from labels
(``kind: pairs | triplets`` without ``tuples``) keep their labelled source and pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def refuse_tuple_data(cfg: Any, source: str | Path | None = None) -> None:
    """Raise a ``ValueError`` when the data config ``cfg`` describes tuple data from a
    file (``data.kind`` pairs or triplets with ``data.tuples``), naming ``source`` (the
    ``.yaml`` file it came from, else the tuple file) and what to pass instead: the
    features file to embed, ``dmlkit verify`` for pairs, labelled data for metrics."""
    tuples = getattr(cfg, "tuples", None)
    kind = getattr(cfg, "kind", "labels")
    if tuples is None or kind not in ("pairs", "triplets"):
        return
    features = getattr(cfg, "features", None)
    where = f"{source} describes" if source is not None else "the data section describes"
    items = (f"rows of data.features {features}" if features is not None
             else "image files")
    if features is not None:
        key = getattr(cfg, "x_key", "x")
        keyed = f" --x-key {key}" if Path(features).suffix.lower() == ".npz" and key != "x" \
            else ""
        embed = f"to embed the items, pass the features file: --data {features}{keyed}"
        verify_data = f"{features}{keyed}"
    else:
        embed = ("to embed the items, pass a folder holding the images in one sub-folder "
                 "per class (--data FOLDER)")
        verify_data = "DATA"  # (verify reads rows of labelled data, not image paths)
    if kind == "pairs" and features is not None:
        score = (f"to score the pairs, dmlkit verify RUN_DIR --data {verify_data} --pairs "
                 f"{tuples} (it reads rows i,j,same, the header optional; similar flags "
                 "written true / false must be 1 / 0 there)")
    elif kind == "pairs":
        score = (f"to score pairs, dmlkit verify RUN_DIR --data {verify_data} --pairs "
                 "PAIRS.csv (rows i,j,same, i and j rows of --data)")
    else:
        score = ("the run's held-out triplet accuracy is in its metrics.json "
                 "(dmlkit train printed it)")
    raise ValueError(
        f"{where} tuple data (data.kind: {kind}, data.tuples: {tuples}, items: {items}), "
        "which holds no labelled dataset to evaluate or embed (its data.name "
        f"{getattr(cfg, 'name', 'digits')!r} is not the run's data and is not read in its "
        f"place): {embed}; {score}; for retrieval metrics, pass labelled data (a .npz "
        "with x and labels arrays, an image or IDX folder)")


__all__ = ["refuse_tuple_data"]
