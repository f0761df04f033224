"""Metrics over embeddings: retrieval, clustering, verification and few-shot."""

from dmlkit.evaluation.clustering import clustering_metrics, kmeans_labels
from dmlkit.evaluation.evaluate import SECTIONS, evaluate_embeddings, write_json
from dmlkit.evaluation.few_shot import few_shot_accuracy
from dmlkit.evaluation.hierarchical import hierarchical_retrieval_metrics
from dmlkit.evaluation.retrieval import DEFAULT_K, retrieval_metrics
from dmlkit.evaluation.verification import (
    DEFAULT_FARS,
    ThresholdCalibrator,
    indexed_pair_scores,
    pair_scores,
    pairs_from_labels,
    verification_metrics,
)

__all__ = [
    "DEFAULT_FARS",
    "DEFAULT_K",
    "SECTIONS",
    "ThresholdCalibrator",
    "clustering_metrics",
    "evaluate_embeddings",
    "few_shot_accuracy",
    "hierarchical_retrieval_metrics",
    "indexed_pair_scores",
    "kmeans_labels",
    "pair_scores",
    "pairs_from_labels",
    "retrieval_metrics",
    "verification_metrics",
    "write_json",
]
