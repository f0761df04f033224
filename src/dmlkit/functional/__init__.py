"""Pure tensor functions: distances, label relations, index tuples, chunking, metrics."""

from dmlkit.functional.chunking import chunk_size_for, maybe_checkpoint, row_chunks
from dmlkit.functional.distances import (
    check_embeddings,
    l2_normalize,
    pairwise_cosine,
    pairwise_dot,
    pairwise_euclidean,
    pairwise_squared_euclidean,
    rowwise_cosine,
    rowwise_dot,
    rowwise_euclidean,
    rowwise_squared_euclidean,
    safe_sqrt,
)
from dmlkit.functional.labels import (
    check_labels,
    pos_neg_masks,
    same_label,
    same_label_at_level,
    self_mask,
)
from dmlkit.functional.reference import resolve_reference
from dmlkit.functional.retrieval import knn, retrieval_per_query, topk_lexicographic
from dmlkit.functional.topk_filter import exact_topk
from dmlkit.functional.tuples import (
    IndexTuple,
    Pairs,
    Quadruplets,
    Triplets,
    all_pairs,
    all_triplets,
    as_index_tuple,
    check_indices,
    empty_pairs,
    empty_triplets,
    pairs_to_triplets,
    triplets_to_pairs,
)

__all__ = [
    "chunk_size_for",
    "maybe_checkpoint",
    "row_chunks",
    "check_embeddings",
    "l2_normalize",
    "pairwise_cosine",
    "pairwise_dot",
    "pairwise_euclidean",
    "pairwise_squared_euclidean",
    "rowwise_cosine",
    "rowwise_dot",
    "rowwise_euclidean",
    "rowwise_squared_euclidean",
    "safe_sqrt",
    "check_labels",
    "pos_neg_masks",
    "same_label",
    "same_label_at_level",
    "self_mask",
    "resolve_reference",
    "exact_topk",
    "knn",
    "retrieval_per_query",
    "topk_lexicographic",
    "IndexTuple",
    "Pairs",
    "Quadruplets",
    "Triplets",
    "all_pairs",
    "all_triplets",
    "as_index_tuple",
    "check_indices",
    "empty_pairs",
    "empty_triplets",
    "pairs_to_triplets",
    "triplets_to_pairs",
]
