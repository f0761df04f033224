"""Evaluate sentence embeddings: STS (Spearman of cosine vs human scores), triplet
accuracy, text retrieval."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dmlkit.data.text import TextDataset, TextPairDataset, TextTripletDataset
from dmlkit.models.modes import eval_mode

RETRIEVAL_KEYS = ("precision_at_1", "r_precision", "map_at_r",
                  "recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8")
#: the fewest scored pairs whose Spearman / Pearson correlation :func:`sts_spearman` gives
MIN_STS_PAIRS = 3


def embed_texts(model: nn.Module, texts: Sequence[str], batch_size: int = 64) -> Tensor:
    """``(n, dim)`` float32 CPU embeddings of ``texts`` (eval mode, no gradients); every
    submodule of ``model`` is left in the mode it was in."""
    encode = getattr(model, "encode", None)
    if encode is not None:
        return torch.from_numpy(encode(list(texts), batch_size=batch_size))
    parts = []
    with eval_mode(model), torch.no_grad():
        for i in range(0, len(texts), batch_size):
            parts.append(model(list(texts[i : i + batch_size])).float().cpu())  # (b, dim)
    return torch.cat(parts)


def sts_spearman(
    model: nn.Module | None, pairs: TextPairDataset, *,
    first: Tensor | None = None, second: Tensor | None = None,
) -> dict[str, float]:
    """Spearman (and Pearson) correlation of the pairs' cosine similarities with their scores.

    Either a ``model`` embeds both sides, or ``first`` / ``second`` ``(n, dim)`` give them.
    """
    from scipy.stats import pearsonr, spearmanr

    if len(pairs) < MIN_STS_PAIRS:
        raise ValueError(f"STS needs at least {MIN_STS_PAIRS} scored pairs, got {len(pairs)}")
    if model is not None:
        both = embed_texts(model, pairs.first + pairs.second)  # (2n, dim)
        first, second = both[: len(pairs)], both[len(pairs) :]
    if first is None or second is None or first.shape != second.shape:
        raise ValueError("give a model, or first and second embeddings of the same shape")
    cos = nn.functional.cosine_similarity(first.double(), second.double(), dim=1).numpy()  # (n,)
    if np.ptp(pairs.scores) == 0:  # e.g. a pairs file without scores: every pair similar
        import warnings

        warnings.warn("all held-out pair scores are equal (a pairs file without a score "
                      "column?): Spearman and Pearson are NaN; the mean cosine of the pairs "
                      "is reported instead", UserWarning, stacklevel=2)
        return {"spearman": float("nan"), "pearson": float("nan"),
                "mean_cosine": float(cos.mean()), "num_pairs": len(pairs)}
    return {
        "spearman": float(spearmanr(cos, pairs.scores).statistic),
        "pearson": float(pearsonr(cos, pairs.scores).statistic),
        "num_pairs": len(pairs),
    }


def triplet_accuracy(model: nn.Module, triplets: TextTripletDataset) -> dict[str, Any]:
    """``triplet_accuracy``: the fraction of triplets with ``cos(a, p) > cos(a, n)``."""
    if len(triplets) == 0:
        raise ValueError("no triplets to evaluate")
    texts, _, t = triplets.get_batch(range(len(triplets)))
    emb = embed_texts(model, texts).double()  # (u, dim) each distinct sentence once
    cos = nn.functional.cosine_similarity
    pos = cos(emb[t.anchor], emb[t.positive], dim=1)  # (T,)
    neg = cos(emb[t.anchor], emb[t.negative], dim=1)  # (T,)
    return {"triplet_accuracy": float((pos > neg).double().mean()),
            "num_triplets": len(triplets)}


def text_heldout_metrics(model: nn.Module,
                         heldout: TextDataset | TextPairDataset | TextTripletDataset) -> dict:
    """STS correlations of held-out pairs, triplet accuracy of held-out triplets, or
    leave-one-out retrieval of held-out sentences."""
    if isinstance(heldout, TextPairDataset):
        return sts_spearman(model, heldout)
    if isinstance(heldout, TextTripletDataset):
        return triplet_accuracy(model, heldout)
    from dmlkit.evaluation import retrieval_metrics

    emb = embed_texts(model, heldout.texts)
    m = retrieval_metrics(emb, heldout.labels)
    out: dict[str, Any] = {k: m[k] for k in RETRIEVAL_KEYS}
    out["num_queries"] = m["num_queries"]
    out["num_classes"] = heldout.num_classes
    return out


def evaluate_text_run(run_dir: str | Path, data: Any = None, *, out: str | Path | None = None,
                      device: str = "cpu", **kwargs: Any) -> dict[str, Any]:
    """:func:`~dmlkit.runs.evaluate_run` for a text run: ``{"sts": ...}`` for pairs, else
    :func:`~dmlkit.evaluation.evaluate_embeddings` of the labelled sentences.

    ``data``: ``"heldout"`` (default) or ``"train"``, the run's splits.
    """
    from dmlkit.evaluation.evaluate import evaluate_embeddings, write_json
    from dmlkit.runs.recorded_splits import warn_if_parts_changed
    from dmlkit.text.run import build_text_splits, text_parts
    from dmlkit.training.run import load_run

    run = load_run(run_dir, device=device)
    if data not in (None, "heldout", "train"):
        raise ValueError(f"text runs evaluate on 'heldout' or 'train', got {data!r}")
    train, heldout = build_text_splits(run.config)
    split = "train" if data == "train" else "heldout"
    warn_if_parts_changed(run_dir, text_parts(train, heldout, split), split)
    dataset = train if data == "train" else heldout
    if isinstance(dataset, TextPairDataset):
        result: dict[str, Any] = {"sts": sts_spearman(run.model, dataset),
                                  "num_embeddings": 2 * len(dataset), "metric": "cosine",
                                  "seed": kwargs.get("seed")}
    elif isinstance(dataset, TextTripletDataset):
        result = {"triplets": triplet_accuracy(run.model, dataset), "metric": "cosine"}
    else:
        emb = embed_texts(run.model, dataset.texts)
        result = evaluate_embeddings(emb, dataset.labels, **kwargs)
    result["run_dir"], result["data"] = str(run_dir), data or "heldout"
    write_json(result, Path(run_dir) / "evaluation.json" if out is None else out)
    return result


def text_metrics_table(metrics: dict[str, Any]) -> str:
    """Pretrained vs fine-tuned encoder on the held-out data, as plain text."""
    base = metrics.get("baseline") or {}
    rows = [f"{'metric':<16} {'pretrained':>10} {'fine-tuned':>10}"]
    for key in ("spearman", "pearson", "mean_cosine", "triplet_accuracy") + RETRIEVAL_KEYS:
        if key in metrics:
            b = f"{base[key]:>10.4f}" if key in base else f"{'-':>10}"
            rows.append(f"{key:<16} {b} {metrics[key]:>10.4f}")
    return "\n".join(rows)


__all__ = ["embed_texts", "evaluate_text_run", "sts_spearman", "text_heldout_metrics",
           "triplet_accuracy",
           "text_metrics_table", "MIN_STS_PAIRS", "RETRIEVAL_KEYS"]
