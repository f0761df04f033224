"""Evaluate a run directory: embed its held-out data with its model, then
:func:`~dmlkit.evaluation.evaluate_embeddings`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dmlkit.config.schema import TEXT_SOURCES, Config
from dmlkit.evaluation.evaluate import evaluate_embeddings, write_json
from dmlkit.runs.data import describe, run_data
from dmlkit.training.run import MODEL_FILE, embed, load_run


def evaluate_run(
    run_dir: str | Path,
    data: Any = None,
    *,
    out: str | Path | None = None,
    device: str = "cpu",
    x_key: str | None = None,
    labels_key: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Embed a run's held-out data (``data``: ``"heldout"`` (default), ``"train"``, or any
    ``dmlkit.data.load_dataset`` spec, read by :func:`~dmlkit.runs.data.run_data`) with
    its model and evaluate it with :func:`evaluate_embeddings`; ``out`` defaults to
    ``RUN_DIR/evaluation.json``. ``x_key`` / ``labels_key`` name the arrays of a ``.npz``
    ``data``. ``result["weights"]`` says which weights were evaluated: ``model.pt``, or
    for a run without it, its last checkpoint's (noted through ``log`` too)."""
    config_path = Path(run_dir) / "config.yaml"
    if config_path.is_file() and Config.from_yaml(config_path).data.name in TEXT_SOURCES:
        from dmlkit.text import evaluate_text_run  # sentence-encoder runs

        if x_key is not None or labels_key is not None:
            raise ValueError("array names (x_key / labels_key) are for image and feature "
                             "runs; a sentence-encoder run reads its own data")
        return evaluate_text_run(run_dir, data, out=out, device=device, **kwargs)
    run = load_run(run_dir, device=device)
    if run.weights != MODEL_FILE and kwargs.get("log") is not None:  # (an unfinished run)
        kwargs["log"](f"note: {run_dir} has no {MODEL_FILE}: evaluating the weights of its "
                      f"{run.weights}")
    source = "heldout" if data is None else str(data)
    dataset = run_data(run, source, x_key=x_key, labels_key=labels_key)
    source = describe(source, x_key, labels_key)
    emb, labels = embed(run.model, dataset, device=device)
    if labels is None:
        raise ValueError("evaluation needs labelled data")
    out = Path(run_dir) / "evaluation.json" if out is None else out
    result = evaluate_embeddings(emb, labels, **kwargs)
    result["run_dir"], result["data"] = str(run_dir), source
    result["weights"] = run.weights  # model.pt, or the checkpoint of an unfinished run
    write_json(result, out)
    return result


__all__ = ["evaluate_run"]
