"""Evaluation inputs: bfloat16 embeddings in every section, galleries that hold the
queries (``ref_includes_query``), cosine at any scale and the dot product's overflow."""

import warnings

import numpy as np
import pytest
import torch

from dmlkit.evaluation import (
    clustering_metrics,
    evaluate_embeddings,
    few_shot_accuracy,
    kmeans_labels,
    retrieval_metrics,
)
from dmlkit.evaluation.embedding_checks import queries_in_reference
from dmlkit.functional.distances import l2_normalize, unit_rows
from dmlkit.functional.retrieval import retrieval_per_query


def _data(n=200, d=8, classes=6, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(classes, d))[y] + 0.8 * rng.normal(size=(n, d))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def _bf16_set():
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.normal(size=(100, 8))).bfloat16()
    y = torch.tensor(rng.integers(0, 3, 100))
    return x, y


def _no_nan_equal(a, b):
    """Nested results equal, NaN equal to NaN."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _no_nan_equal(a[key], b[key])
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b)
    else:
        assert a == b


# --- 1. bfloat16 embeddings -----------------------------------------------------------


def test_bfloat16_embeddings_cluster_as_their_float32_values():
    x, y = _bf16_set()
    assert clustering_metrics(x, y) == clustering_metrics(x.float(), y)
    assert clustering_metrics(x, y, normalize=True) == clustering_metrics(
        x.float(), y, normalize=True)
    assert np.array_equal(kmeans_labels(x, 3), kmeans_labels(x.float(), 3))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_bfloat16_embeddings_run_few_shot_episodes_as_float32(metric):
    x, y = _bf16_set()
    got = few_shot_accuracy(x, y, n_way=3, n_query=5, episodes=5, metric=metric)
    assert got == few_shot_accuracy(x.float(), y, n_way=3, n_query=5, episodes=5,
                                    metric=metric)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_evaluate_embeddings_with_defaults_accepts_bfloat16(metric):
    x, y = _bf16_set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (TAR at tiny FARs on a small set)
        got = evaluate_embeddings(x, y, episodes=5, metric=metric)
        want = evaluate_embeddings(x.float(), y, episodes=5, metric=metric)
    assert set(got) >= {"retrieval", "clustering", "verification", "few_shot"}
    _no_nan_equal(got, want)


# --- 2. a gallery that holds the queries ----------------------------------------------


def test_evaluate_embeddings_passes_ref_includes_query_to_retrieval():
    x, y = _data()
    got = evaluate_embeddings(x[:50], y[:50], x, y, sections=("retrieval",),
                              ref_includes_query=True)["retrieval"]
    want = retrieval_metrics(x[:50], y[:50], x, y, ref_includes_query=True)
    assert got == want
    assert got["precision_at_1"] < 1.0  # (each query no longer finds itself)


def test_evaluate_embeddings_ref_includes_query_reaches_hierarchical_metrics():
    x, y = _data()
    labels = torch.stack([y // 3, y], dim=1)  # (n, 2): coarse, fine
    got = evaluate_embeddings(x[:50], labels[:50], x, labels, sections=("retrieval",),
                              ref_includes_query=True)
    loo = evaluate_embeddings(x, labels, sections=("retrieval",))
    assert got["hierarchical"]["precision_at_1_level_1"] == got["retrieval"]["precision_at_1"]
    assert got["retrieval"]["precision_at_1"] < 1.0
    assert "hierarchical" in loo


def test_queries_at_the_head_of_the_gallery_are_warned_about_with_the_option_to_pass():
    x, y = _data()
    with pytest.warns(UserWarning, match=r"first 50 rows are the 50 queries.*"
                                         r"pass ref_includes_query=True"):
        res = evaluate_embeddings(x[:50], y[:50], x, y, sections=("retrieval",))
    assert res["retrieval"]["precision_at_1"] == 1.0  # (what the warning is about)


def test_queries_elsewhere_in_the_gallery_are_warned_about_with_a_count():
    x, y = _data()
    with pytest.warns(UserWarning, match=r"20 of the 20 queries appear verbatim.*"
                                         r"query 0 is reference row 100"):
        retrieval_metrics(x[100:120], y[100:120], x, y)


def test_a_gallery_without_the_queries_warns_nothing():
    x, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        retrieval_metrics(x[:50], y[:50], x[50:], y[50:])
        retrieval_metrics(x[:50], y[:50], x, y, ref_includes_query=True)


def test_repeated_rows_of_discrete_embeddings_are_not_taken_for_the_queries():
    rng = np.random.default_rng(3)
    codes = torch.tensor(rng.integers(0, 2, size=(6, 4)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 3, 200))
    x = codes[torch.tensor(rng.integers(0, 6, 200))]  # binary codes: rows repeat
    rows, _ = queries_in_reference(x[:80], x[100:], y[:80], y[100:])
    assert len(rows) == 0


def test_queries_in_reference_needs_equal_rows_and_labels():
    x, y = _data()
    rows, refs = queries_in_reference(x[:10], x, y[:10], y)
    assert rows.tolist() == list(range(10)) and refs.tolist() == list(range(10))
    rows, _ = queries_in_reference(x[:10], x, (y[:10] + 1) % 6, y)
    assert len(rows) == 0
    near = x.clone()
    near[:10, 0] = torch.nextafter(near[:10, 0], torch.tensor(float("inf")))
    rows, _ = queries_in_reference(x[:10], near[:10])
    assert len(rows) == 0
    signed = x[:10].clone()
    signed[0, 0] = 0.0
    flipped = signed.clone()
    flipped[0, 0] = -0.0  # (equal values, different bits)
    assert queries_in_reference(signed, flipped)[0].tolist() == list(range(10))


# --- 3. ref_includes_query is checked -------------------------------------------------


def test_ref_includes_query_refuses_a_gallery_that_does_not_start_with_the_queries():
    x, y = _data()
    with pytest.raises(ValueError, match=r"ref_includes_query=True says the reference's "
                                         r"first 50 rows are the queries, but 50 of them "
                                         r"differ from the queries in their embedding"):
        retrieval_metrics(x[:50], y[:50], x[50:], y[50:], ref_includes_query=True)


def test_ref_includes_query_refuses_labels_that_are_not_the_queries():
    x, y = _data()
    wrong = y.clone()
    wrong[7] = (wrong[7] + 1) % 6
    with pytest.raises(ValueError, match=r"1 of them differ from the queries in their "
                                         r"label \(e\.g\. reference row 7 has label"):
        retrieval_metrics(x[:50], y[:50], x, wrong, ref_includes_query=True)


def test_ref_includes_query_is_checked_in_the_functional_layer_and_through_evaluate():
    x, y = _data()
    with pytest.raises(ValueError, match="ref_includes_query=True says"):
        retrieval_per_query(x[:20], y[:20], x[20:], y[20:], ref_includes_query=True)
    with pytest.raises(ValueError, match="ref_includes_query=True says"):
        evaluate_embeddings(x[:20], y[:20], x[20:], y[20:], sections=("retrieval",),
                            ref_includes_query=True)


def test_ref_includes_query_accepts_queries_recomputed_to_rounding():
    x, y = _data()
    q = (x[:30].double() * (1 + 1e-7)).float()  # (another pass: a last-bit difference)
    got = retrieval_metrics(q, y[:30], x, y, ref_includes_query=True)
    assert got == retrieval_metrics(x[:30], y[:30], x, y, ref_includes_query=True)


# --- 4. cosine at any scale; the dot product's overflow -------------------------------


def test_unit_rows_normalizes_rows_of_any_magnitude_and_keeps_ordinary_rows_bit_for_bit():
    x, _ = _data()
    assert torch.equal(unit_rows(x), l2_normalize(x))
    assert torch.equal(unit_rows(x.double()), l2_normalize(x.double()))
    assert torch.equal(unit_rows(torch.zeros(2, 3)), torch.zeros(2, 3))  # zero rows stay
    want = l2_normalize(x.double())
    for scaled in (x * 1e-20, x.double() * 1e-200, x.double() * 1e200):
        assert torch.allclose(unit_rows(scaled).double(), want, atol=1e-6)
    assert not torch.allclose(l2_normalize(x * 1e-20).double(), want, atol=1e-6)


@pytest.mark.parametrize("scaled", [
    lambda x: x * 1e-20, lambda x: x.double() * 1e-200, lambda x: x.double() * 1e200,
])
def test_cosine_retrieval_is_scale_invariant(scaled):
    x, y = _data(400, 16, 10, seed=1)
    want = retrieval_metrics(x, y, metric="cosine", average_precision=True)
    got = retrieval_metrics(scaled(x), y, metric="cosine", average_precision=True)
    for key in ("precision_at_1", "map_at_r", "r_precision", "mean_average_precision"):
        assert got[key] == pytest.approx(want[key], abs=1e-9), key


def test_cosine_evaluation_is_scale_invariant_in_every_section():
    x, y = _data(150, 6, 5, seed=2)
    kwargs = {"metric": "cosine", "episodes": 20, "few_shot": ((3, 1),)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (TAR at tiny FARs on a small set)
        want = evaluate_embeddings(x.double(), y, **kwargs)
        for s in (1e-200, 1e200):
            got = evaluate_embeddings(x.double() * s, y, **kwargs)
            for section in ("retrieval", "clustering", "verification"):
                for key, v in want[section].items():
                    if isinstance(v, float) and not np.isnan(v):
                        assert got[section][key] == pytest.approx(v, abs=1e-9), (s, key)
            assert got["few_shot"] == want["few_shot"]


def test_cosine_on_zero_rows_keeps_zero_similarity():
    x, y = _data()
    x[:5] = 0.0  # (zero rows stay zero: similarity 0 to every row, as before)
    x[5:10] *= 1e-20
    unit = l2_normalize(x.double() * torch.tensor([1e20] * 10 + [1.0] * 190)[:, None])
    got = retrieval_metrics(x, y, metric="cosine", average_precision=True)
    assert got == {**retrieval_metrics(unit, y, metric="dot", average_precision=True),
                   "metric": "cosine"}


def test_retrieval_metrics_refuses_dot_products_that_overflow_as_evaluate_does():
    x, y = _data()
    with pytest.raises(ValueError, match=r"query reach .*overflow float32.*rescale"):
        retrieval_metrics(x * 1e20, y, metric="dot")
    with pytest.raises(ValueError, match=r"reference reach .*overflow float32"):
        retrieval_metrics(x[:50], y[:50], x[50:] * 1e20, y[50:], metric="dot")
    with pytest.raises(ValueError, match=r"embeddings reach .*overflow float32"):
        evaluate_embeddings(x * 1e20, y, metric="dot", sections=("retrieval",))
    assert retrieval_metrics(x * 1e20, y, metric="cosine")["map_at_r"] == pytest.approx(
        retrieval_metrics(x, y, metric="cosine")["map_at_r"], abs=1e-9)


@pytest.mark.parametrize("scale", [1e-20, 1e-200, 1e200])
def test_few_shot_cosine_does_not_depend_on_the_embeddings_scale(scale):
    from dmlkit.evaluation import few_shot_accuracy

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 8))
    y = np.repeat(np.arange(10), 20)
    x = centres[y] + rng.normal(size=(200, 8))
    plain = few_shot_accuracy(x, y, metric="cosine", episodes=20)
    scaled = few_shot_accuracy(x * scale, y, metric="cosine", episodes=20)
    assert scaled["accuracy"] == plain["accuracy"]
