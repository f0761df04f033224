"""Metrics over embeddings: retrieval, clustering, verification and few-shot."""

from dmlkit.evaluation.retrieval import DEFAULT_K, retrieval_metrics

__all__ = ["DEFAULT_K", "retrieval_metrics"]
