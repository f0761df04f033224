"""The inputs hierarchical metrics and the hierarchical triplet loss take: class-name
labels per level, refused zero-level labels, the warning for a single leaf class, and
margins given as arrays."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.evaluation import evaluate_embeddings, retrieval_metrics
from dmlkit.evaluation.hierarchical import hierarchical_retrieval_metrics
from dmlkit.losses import HierarchicalTripletLoss

NAMES = np.array(
    [
        ["animal", "cat"],
        ["animal", "cat"],
        ["animal", "dog"],
        ["animal", "dog"],
        ["plant", "oak"],
        ["plant", "oak"],
        ["plant", "fir"],
        ["plant", "fir"],
        ["animal", "cat"],
        ["plant", "fir"],
        ["animal", "dog"],
        ["plant", "oak"],
    ]
)
# the same hierarchy as integer ids per level
IDS = np.array(
    [[0, 0], [0, 0], [0, 1], [0, 1], [1, 0], [1, 0], [1, 1], [1, 1], [0, 0], [1, 1], [0, 1], [1, 0]]
)


def _emb(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)


def _trivial_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "trivially 1.0" in str(w.message)]


@pytest.mark.parametrize(
    "as_input", [lambda a: a, lambda a: a.astype(object), lambda a: a.tolist()]
)
def test_hierarchical_metrics_take_class_names_per_level(as_input) -> None:
    x = _emb(len(NAMES))
    ours = hierarchical_retrieval_metrics(x, as_input(NAMES), k=(1, 3))
    assert ours == hierarchical_retrieval_metrics(x, IDS, k=(1, 3))


def test_hierarchical_metrics_take_class_names_with_a_gallery() -> None:
    x, ref = _emb(6, seed=1), _emb(len(NAMES), seed=2)
    ours = hierarchical_retrieval_metrics(x, NAMES[:6], ref, NAMES, k=(1, 2))
    expected = hierarchical_retrieval_metrics(x, IDS[:6], ref, IDS, k=(1, 2))
    assert ours == expected
    # a level name shared by two parents is still told apart by its parent
    names = NAMES.copy()
    names[names == "oak"] = "cat"
    assert hierarchical_retrieval_metrics(x, names[:6], ref, names, k=(1, 2)) == expected
    with pytest.raises(TypeError, match="both be names or both ids"):
        hierarchical_retrieval_metrics(x, NAMES[:6], ref, IDS)


def test_retrieval_per_class_names_leaf_rows_of_class_names() -> None:
    result = retrieval_metrics(_emb(len(NAMES)), NAMES, per_class=True)
    assert set(result["per_class"]) == {
        ("animal", "cat"),
        ("animal", "dog"),
        ("plant", "fir"),
        ("plant", "oak"),
    }
    assert result["per_class"][("animal", "cat")]["count"] == 3


@pytest.mark.parametrize("where", ["query", "reference"])
def test_hierarchical_metrics_refuse_zero_level_labels(where) -> None:
    x, empty = _emb(20), np.zeros((20, 0), dtype=np.int64)
    args = (x, empty) if where == "query" else (x, np.zeros((20, 2), dtype=np.int64), x, empty)
    name = f"{where}_labels"
    with pytest.raises(ValueError, match=rf"{name} has shape \(20, 0\).*at least one column"):
        hierarchical_retrieval_metrics(*args, k=1)


def test_one_leaf_class_warns_metrics_are_trivially_one() -> None:
    x, labels = _emb(20), np.zeros((20, 2), dtype=np.int64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate_embeddings(x, labels, sections=["retrieval"])
    assert result["retrieval"]["precision_at_1"] == 1.0
    messages = _trivial_warnings(caught)
    assert messages and "all 20 labels are (0, 0)" in messages[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hierarchical_retrieval_metrics(x, labels, k=1)
    assert _trivial_warnings(caught)


def test_one_leaf_class_across_query_and_gallery_warns() -> None:
    labels = np.ones((10, 3), dtype=np.int64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        retrieval_metrics(_emb(10), labels, _emb(10, seed=1), labels, k=1)
    assert _trivial_warnings(caught)
    other = labels.copy()
    other[0, 2] = 2  # a second leaf in the gallery: not trivial
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        retrieval_metrics(_emb(10), labels, _emb(10, seed=1), other, k=1)
    assert not _trivial_warnings(caught)


def test_one_top_level_class_with_several_leaves_gives_no_trivial_warning() -> None:
    labels = np.stack([np.zeros(20, dtype=np.int64), np.arange(20) % 4], axis=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate_embeddings(_emb(20), labels, sections=["retrieval"])
    assert result["hierarchical"]["precision_at_1_level_0"] == 1.0
    assert not _trivial_warnings(caught)


@pytest.mark.parametrize(
    "margins",
    [
        np.array([0.3, 0.1]),
        np.array([0.3, 0.1], np.float32),
        torch.tensor([0.3, 0.1], dtype=torch.float64),
        np.array([3, 1]),
    ],
)
def test_loss_margins_take_one_dimensional_arrays(margins) -> None:
    loss_fn = HierarchicalTripletLoss(margins=margins)
    expected = tuple(float(m) for m in np.asarray(margins).tolist())
    assert loss_fn.margins == expected
    assert all(type(m) is float for m in loss_fn.margins)
    x = torch.from_numpy(_emb(len(IDS)))
    labels = torch.from_numpy(IDS)
    plain = HierarchicalTripletLoss(margins=list(expected))(x, labels)
    assert torch.equal(loss_fn(x, labels), plain)


@pytest.mark.parametrize(
    "margins, error, match",
    [
        (np.array([[0.3], [0.1]]), ValueError, r"shape \(2, 1\)"),
        (torch.tensor([[0.3, 0.1]]), ValueError, r"shape \(1, 2\)"),
        (np.array(0.3), ValueError, r"shape \(\)"),
        (np.array(["0.3", "0.1"]), TypeError, "one real number per level"),
        (np.array([True, False]), TypeError, "one real number per level"),
        (torch.tensor([1 + 1j, 2j]), TypeError, "one real number per level"),
        (["a", "b"], TypeError, "one real number per level"),
        ([0.3, [0.1]], TypeError, "one real number per level"),
    ],
)
def test_loss_margins_refuse_arrays_that_are_not_one_value_per_level(margins, error, match) -> None:
    with pytest.raises(error, match=match):
        HierarchicalTripletLoss(margins=margins)


def test_cli_evaluate_takes_class_names_per_level(tmp_path) -> None:
    x = _emb(len(NAMES))
    path = tmp_path / "e.npz"
    np.savez(path, embeddings=x, labels=NAMES)
    res = CliRunner().invoke(app, ["evaluate", str(path), "--sections", "retrieval"])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "e.evaluation.json").read_text())
    expected = hierarchical_retrieval_metrics(x, IDS)
    assert result["hierarchical"]["num_levels"] == 2
    for key in ("hierarchical_precision_at_1", "hierarchical_ndcg_at_4", "map_at_r_level_1"):
        assert result["hierarchical"][key] == pytest.approx(expected[key])


def test_cli_evaluate_reads_one_column_of_class_names_as_classes(tmp_path) -> None:
    x = _emb(len(NAMES))
    path = tmp_path / "e.npz"
    np.savez(path, embeddings=x, labels=NAMES[:, 1:])
    res = CliRunner().invoke(app, ["evaluate", str(path), "--sections", "retrieval"])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "e.evaluation.json").read_text())
    assert "hierarchical" not in result
    expected = retrieval_metrics(x, NAMES[:, 1])
    assert result["retrieval"]["precision_at_1"] == pytest.approx(expected["precision_at_1"])


def test_cli_evaluate_refuses_zero_columns_of_class_names(tmp_path) -> None:
    path = tmp_path / "e.npz"
    np.savez(path, embeddings=_emb(12), labels=np.zeros((12, 0), dtype="<U3"))
    res = CliRunner().invoke(app, ["evaluate", str(path), "--sections", "retrieval"])
    assert res.exit_code == 1 and "one label per embedding row" in res.output


def test_evaluate_embeddings_keys_per_class_leaf_rows_by_names():
    """Per-class results of (n, L) class names are keyed by the leaf's names, as those of
    (n,) names are keyed by the class's name."""
    from dmlkit.evaluation import evaluate_embeddings

    x = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    names = np.array([["animal", "cat"], ["animal", "dog"], ["vehicle", "car"]] * 4)
    result = evaluate_embeddings(x, names, sections=["retrieval"], per_class=True)
    assert set(result["retrieval"]["per_class"]) == {
        ("animal", "cat"), ("animal", "dog"), ("vehicle", "car")}
    assert all(v["count"] == 4 for v in result["retrieval"]["per_class"].values())
