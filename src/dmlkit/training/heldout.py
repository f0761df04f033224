"""Held-out retrieval metrics of a trained run: the learned embeddings next to the raw
inputs' baselines, and the table the command line prints of them."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from dmlkit.data.dataset import ArrayDataset

METRIC_KEYS = (
    "precision_at_1", "r_precision", "map_at_r",
    "recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8",
)  # fmt: skip


def heldout_metrics(
    model: nn.Module, heldout: ArrayDataset, device: str | torch.device = "cpu",
    log: Any = None,
) -> dict[str, Any]:
    """Leave-one-out retrieval metrics of the learned embeddings and of the raw inputs:
    ``"baseline"`` ranks the flattened inputs after scaling each to unit L2 norm (as
    the field reports raw-feature baselines), ``"baseline_unnormalized"`` as they are.

    A warning the metrics raise (NaN metrics: no class of the held-out items has two) is
    given once, not once per set of embeddings scored."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = _heldout_metrics(model, heldout, device, log)
    seen: set[tuple[type, str]] = set()
    for item in caught:
        key = (item.category, str(item.message))
        if key not in seen:
            seen.add(key)
            warnings.warn(item.message, stacklevel=2)
    return metrics


def _heldout_metrics(model: nn.Module, heldout: ArrayDataset, device: str | torch.device,
                     log: Any) -> dict[str, Any]:
    from dmlkit.evaluation import retrieval_metrics
    from dmlkit.functional.distances import l2_normalize
    from dmlkit.training.frozen_features import feature_dataset, is_frozen_backbone
    from dmlkit.training.run import embed

    # a frozen backbone's features of the held-out items are cached like the training
    # items': a rerun (another head, loss or seed) does not pass them through it again
    inputs = feature_dataset(model, heldout, log) if is_frozen_backbone(model) else heldout
    emb, labels = embed(model, inputs, device=device)
    learned = retrieval_metrics(emb, labels)
    raw_x = heldout.x.flatten(1).float()  # (n, C*H*W)
    raw = retrieval_metrics(l2_normalize(raw_x), heldout.labels)
    unnormalized = retrieval_metrics(raw_x, heldout.labels)
    metrics: dict[str, Any] = {k: learned[k] for k in METRIC_KEYS}
    metrics["baseline"] = {k: raw[k] for k in METRIC_KEYS}
    metrics["baseline_unnormalized"] = {k: unnormalized[k] for k in METRIC_KEYS}
    metrics["baseline_inputs"] = "raw inputs, flattened, each row L2-normalized"
    metrics["num_queries"] = learned["num_queries"]
    if labels is not None and labels.dim() == 2 and labels.dtype != torch.bool:
        from dmlkit.evaluation.hierarchical import hierarchical_retrieval_metrics

        metrics["hierarchical"] = hierarchical_retrieval_metrics(emb, labels)
    return metrics


def metrics_table(metrics: dict[str, Any]) -> str:
    """A plain-text table: raw inputs (L2-normalized, and as they are) vs the learned
    metric on the held-out data."""
    names = {
        "precision_at_1": "P@1", "r_precision": "R-Precision", "map_at_r": "MAP@R",
        "recall_at_1": "Recall@1", "recall_at_2": "Recall@2",
        "recall_at_4": "Recall@4", "recall_at_8": "Recall@8",
    }  # fmt: skip
    plain = metrics.get("baseline_unnormalized") or {}  # absent from older runs
    rows = [f"{'metric':<12} {'raw (L2-normed)':>15} {'raw (as is)':>11} {'learned':>8}"]
    for key, label in names.items():
        rows.append(f"{label:<12} {_cell(metrics.get('baseline') or {}, key, 15)} "
                    f"{_cell(plain, key, 11)} {_cell(metrics, key, 8)}")
    rows.append("raw = the flattened held-out inputs; L2-normed = each scaled to unit length")
    return "\n".join(rows)


def _cell(metrics: dict[str, Any], key: str, width: int) -> str:
    """One metric right-aligned in ``width``: ``-`` when the file has none, ``n/a`` when it
    is undefined (NaN in memory, null in a metrics.json read back)."""
    value = metrics.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return f"{'n/a' if key in metrics else '-':>{width}}"
    return f"{'n/a':>{width}}" if math.isnan(value) else f"{value:>{width}.4f}"


__all__ = ["METRIC_KEYS", "heldout_metrics", "metrics_table"]
