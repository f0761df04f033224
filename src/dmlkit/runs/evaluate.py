"""Evaluate a run directory: embed its held-out data with its model, then
:func:`~dmlkit.evaluation.evaluate_embeddings`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dmlkit.config.schema import TEXT_SOURCES, Config
from dmlkit.evaluation.evaluate import evaluate_embeddings, write_json
from dmlkit.training.run import build_splits, embed, load_run


def evaluate_run(
    run_dir: str | Path,
    data: Any = None,
    *,
    out: str | Path | None = None,
    device: str = "cpu",
    **kwargs: Any,
) -> dict[str, Any]:
    """Embed a run's held-out data (``data``: ``"heldout"`` (default), ``"train"``, or any
    ``dmlkit.data.load_dataset`` spec) with its model and evaluate it with
    :func:`evaluate_embeddings`; ``out`` defaults to ``RUN_DIR/evaluation.json``."""
    config_path = Path(run_dir) / "config.yaml"
    if config_path.is_file() and Config.from_yaml(config_path).data.name in TEXT_SOURCES:
        from dmlkit.text import evaluate_text_run  # sentence-encoder runs

        return evaluate_text_run(run_dir, data, out=out, device=device, **kwargs)
    run = load_run(run_dir, device=device)
    if data is None or data in ("heldout", "train"):
        train_set, heldout = build_splits(run.config)
        dataset = train_set if data == "train" else heldout
        source = data or "heldout"
    else:
        from dmlkit.data import load_dataset

        dataset = load_dataset(data)
        source = str(data)
    emb, labels = embed(run.model, dataset, device=device)
    if labels is None:
        raise ValueError("evaluation needs labelled data")
    out = Path(run_dir) / "evaluation.json" if out is None else out
    result = evaluate_embeddings(emb, labels, **kwargs)
    result["run_dir"], result["data"] = str(run_dir), source
    write_json(result, out)
    return result


__all__ = ["evaluate_run"]
