"""Edge inputs of the evaluation functions: padding, NaN, names, numpy ints, empty sets."""

from __future__ import annotations

import numpy as np
import pytest

from dmlkit.evaluation import evaluate_embeddings, few_shot_accuracy, retrieval_metrics
from dmlkit.evaluation.recommendation import recommendation_metrics


def test_coverage_does_not_count_padding() -> None:
    recommended = np.array([[-1, -1, -1], [1, 2, 3], [3, 0, -1]])
    out = recommendation_metrics(recommended, [[5], [2], [0]], n_items=4, k=3)
    assert out["coverage_at_3"] == pytest.approx(1.0)  # items 0, 1, 2, 3
    assert out["recall_at_3"] == pytest.approx(2 / 3)


def test_string_ids_pad_with_empty_string() -> None:
    recommended = np.array([["a", "", ""], ["b", "c", ""]])
    out = recommendation_metrics(recommended, [["a"], [""]], n_items=4, k=3)
    assert out["coverage_at_3"] == pytest.approx(3 / 4)
    assert out["recall_at_3"] == pytest.approx(0.5)  # padding is never a hit


def test_repeated_items_are_refused() -> None:
    with pytest.raises(ValueError, match="repeat an item"):
        recommendation_metrics(np.array([[1, 1, 1]]), [[1]], n_items=3, k=3)


def _blobs(n_classes: int = 6, per: int = 20, d: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(n_classes, d)) * 5
    y = np.repeat(np.arange(n_classes), per)
    return centres[y] + rng.normal(size=(len(y), d)), y


def test_few_shot_refuses_nan_embeddings() -> None:
    x, y = _blobs()
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite values \\(1 of 120 rows\\)"):
        few_shot_accuracy(x, y, n_way=3, n_query=5, episodes=5)


def test_few_shot_takes_numpy_integers() -> None:
    x, y = _blobs()
    out = few_shot_accuracy(x, y, n_way=np.int64(3), k_shot=np.int32(1), n_query=5, episodes=5)
    assert out["accuracy"] > 0.9
    assert type(out["n_way"]) is int
    with pytest.raises(ValueError, match="n_way"):
        few_shot_accuracy(x, y, n_way=True, episodes=5)


def test_evaluate_embeddings_takes_class_names() -> None:
    x, y = _blobs()
    names = np.array(["cat", "dog", "eel", "fox", "gnu", "hen"])[y]
    by_names = evaluate_embeddings(x, names, sections=("retrieval", "clustering", "few_shot"),
                                   few_shot=((3, 1),), episodes=20)
    by_ids = evaluate_embeddings(x, y, sections=("retrieval", "clustering", "few_shot"),
                                 few_shot=((3, 1),), episodes=20)
    assert by_names["retrieval"]["map_at_r"] == by_ids["retrieval"]["map_at_r"]
    assert by_names["clustering"] == by_ids["clustering"]
    assert by_names["few_shot"] == by_ids["few_shot"]
    listed = evaluate_embeddings(x, names.tolist(), sections=("retrieval",))
    assert listed["retrieval"]["map_at_r"] == by_ids["retrieval"]["map_at_r"]


def test_empty_inputs_are_errors() -> None:
    with pytest.raises(ValueError, match="no queries"):
        retrieval_metrics(np.zeros((0, 3)), np.zeros(0, dtype=np.int64))
    with pytest.raises(ValueError, match="non-empty"):
        evaluate_embeddings(np.zeros((0, 3)), np.zeros(0, dtype=np.int64))
