"""Steps of ``dmlkit index build`` beside the command itself: the chunked build from an
embedding store, and what a build prints after the index is saved (a warning for an
index of no items, the recall line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def echo_built(index: Any, line: str) -> None:
    """Print the ``indexed N embeddings ...`` line, and a warning when ``index`` holds no
    items (a search of it finds nothing)."""
    typer.echo(line)
    if not index.ntotal:
        typer.echo("warning: the index holds no items (the source has no rows): every "
                   "search of it finds nothing; build it from embeddings with rows",
                   err=True)


def echo_recall(index: Any, recall: dict[str, Any] | None, target_recall: float) -> None:
    """Print the recall line, and a warning when it is below the target."""
    from dmlkit.index.calibrate import low_recall_advice

    if recall is None:
        return
    if recall["recall_at_k"] is None:  # an empty index
        typer.echo(f"recall not measured: {recall['skipped']}, nothing to tune")
        return
    typer.echo(recall_line(recall))
    if recall["recall_at_k"] < target_recall:
        typer.echo(f"warning: recall {recall['recall_at_k']:.4f} is below {target_recall}; "
                   f"{low_recall_advice(index, recall)}", err=True)


def build_from_store(store_dir: Path, out: Path, factory: str, metric: str,
                     knobs: dict[str, Any], target_recall: float) -> None:
    """Build a faiss index from an embedding store chunk by chunk (see dmlkit embed --store),
    calibrated like an in-memory build (queries sampled from the store), with the class
    names, source paths and input description the store records."""
    from dmlkit.index.store import EmbeddingStore, build_index_from_store

    exact = factory == "exact"
    if exact:
        factory = "Flat"  # the chunked build is faiss; Flat is exact
    store = EmbeddingStore.open(store_dir)
    index = build_index_from_store(store, factory, metric, **knobs, show_progress=True,
                                   target_recall=None if exact else target_recall)
    recall = index.info.get("recall")
    # the inputs' description as a direct build records it: raw queries are checked by it
    index.info = {"store": str(store_dir.resolve()), **store.manifest.get("source", {}),
                  **store.input_info, **({"recall": recall} if recall is not None else {})}
    index.save(out)
    echo_built(index, f"indexed {index.ntotal} embeddings of dim {store.dim} ({factory}, "
               f"{metric}) from store {store_dir} in {out}")
    echo_recall(index, recall, target_recall)


def recall_line(recall: dict[str, Any]) -> str:
    """``recall@10 vs exact search on 1000 indexed items: 0.98 (nprobe 8, tuned)``."""
    line = (f"recall@{recall['k']} vs exact search on {recall['queries']} indexed items: "
            f"{recall['recall_at_k']:.4f}")
    knobs = [f"{key} {recall[key]:g}, {'tuned' if recall[tuned] else 'as given'}"
             for key, tuned in (("nprobe", "tuned"), ("ef_search", "tuned"),
                                ("k_factor", "k_factor_tuned")) if key in recall]
    return line + (f" ({'; '.join(knobs)})" if knobs else "")


__all__ = ["build_from_store", "echo_built", "echo_recall", "recall_line"]
