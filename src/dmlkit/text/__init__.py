"""Text metric learning: train, evaluate and embed with a :class:`~dmlkit.models.SentenceEncoder`.

Run directories of text configs (``data.name`` ``text`` or ``stsb``) have the same files
as any run (config.yaml, model.pt, checkpoint.pt, metrics.json, train.log).
"""

from dmlkit.text.evaluate import embed_texts, evaluate_text_run, sts_spearman, text_metrics_table
from dmlkit.text.run import build_text_splits, train_text_run

__all__ = [
    "build_text_splits",
    "embed_texts",
    "evaluate_text_run",
    "sts_spearman",
    "text_metrics_table",
    "train_text_run",
]
