"""Verification pair scores: chunked by bytes (bounded memory for wide embeddings), with
the same scores and metrics as a naive pair-by-pair computation."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from dmlkit.evaluation import evaluate_embeddings, pairs_from_labels, verification_metrics
from dmlkit.evaluation.verification import (
    PAIR_BYTES_PER_DIM,
    PAIR_CHUNK_BYTES,
    indexed_pair_scores,
    pair_chunk_size,
    pair_scores,
)
from dmlkit.functional.verification import equal_error_rate, roc_curve

METRICS = ("euclidean", "cosine", "dot")


def naive_scores(x: np.ndarray, i: np.ndarray, j: np.ndarray, metric: str) -> np.ndarray:
    """fp64, one pair at a time."""
    out = np.empty(len(i))
    for k, (a, b) in enumerate(zip(i.tolist(), j.tolist(), strict=True)):
        u, v = x[a].astype(np.float64), x[b].astype(np.float64)
        if metric == "euclidean":
            out[k] = -np.sqrt(((u - v) ** 2).sum())
        elif metric == "cosine":
            out[k] = (u * v).sum() / max(np.linalg.norm(u) * np.linalg.norm(v), 1e-12)
        else:
            out[k] = (u * v).sum()
    return out


def small_set(n: int = 40, d: int = 7, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("budget", [1, 200 * PAIR_BYTES_PER_DIM * 7, PAIR_CHUNK_BYTES])
def test_indexed_pair_scores_match_naive(metric, budget):
    x, y = small_set()
    i, j, _ = pairs_from_labels(y)
    got = indexed_pair_scores(x, i, j, metric, budget_bytes=budget)
    want = naive_scores(x.numpy(), i, j, metric)
    assert got.dtype == np.float64 and got.shape == (len(i),)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # the same numbers as scoring the gathered rows at once
    np.testing.assert_array_equal(got, pair_scores(x[i], x[j], metric))


@pytest.mark.parametrize("metric", METRICS)
def test_evaluate_verification_matches_naive(metric):
    x, y = small_set(n=60, d=5)
    got = evaluate_embeddings(x, y, metric=metric, sections=("verification",))["verification"]
    i, j, same = pairs_from_labels(y, max_pairs=1_000_000, seed=0)
    want = verification_metrics(naive_scores(x.numpy(), i, j, metric), same)
    assert got.keys() == want.keys()
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-9, atol=1e-12, err_msg=key)


def test_evaluate_verification_sampled_pairs_match_naive():
    x, y = small_set(n=80, d=9)
    got = evaluate_embeddings(x, y, metric="cosine", sections=("verification",),
                              max_pairs=500, seed=3)["verification"]
    i, j, same = pairs_from_labels(y, max_pairs=500, seed=3)
    want = verification_metrics(naive_scores(x.numpy(), i, j, "cosine"), same, seed=3)
    assert got["num_pairs"] == 500
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-9, atol=1e-12, err_msg=key)


def test_report_verification_matches_naive():
    collect = importlib.import_module("dmlkit.report.collect")
    x, y = small_set(n=50, d=6, classes=5, seed=1)
    got = collect._verification(x, y, seed=0)
    i, j, same = pairs_from_labels(y, max_pairs=collect.MAX_PAIRS, seed=0)
    scores = naive_scores(x.numpy(), i, j, "cosine")
    eer, threshold = equal_error_rate(*roc_curve(scores, same))
    assert got["pairs"] == len(i)
    np.testing.assert_allclose([got["eer"], got["threshold"]], [eer, threshold], rtol=1e-9)


def test_pair_chunk_size_stays_under_budget_for_wide_embeddings():
    n_pairs = 500 * 499 // 2
    for dim in (2, 128, 512, 2496, 8192, 1 << 20):
        chunk = pair_chunk_size(n_pairs, dim)
        assert 1 <= chunk <= n_pairs
        if chunk > 1:
            assert chunk * dim * PAIR_BYTES_PER_DIM <= PAIR_CHUNK_BYTES
    # wide embeddings: far fewer pairs per chunk than narrow ones, never a 64K-pair gather
    assert pair_chunk_size(n_pairs, 2496) < 4096 < pair_chunk_size(n_pairs, 16)
    assert pair_chunk_size(10, 4) == 10  # never more than there are
    assert pair_chunk_size(n_pairs, 2496, budget_bytes=1) == 1
    with pytest.raises(ValueError, match="budget_bytes"):
        pair_chunk_size(n_pairs, 2496, budget_bytes=0)


def test_indexed_pair_scores_rejects_bad_indices():
    x, _ = small_set()
    with pytest.raises(ValueError, match="pair indices"):
        indexed_pair_scores(x, np.arange(3), np.arange(4))
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        indexed_pair_scores(x[0], np.arange(3), np.arange(3))


def test_wide_embeddings_verification_peak_memory_is_bounded():
    """500 x 2496 embeddings: all 124,750 pairs scored with well under 1 GB of growth
    (gathering 64K-pair chunks of both sides took about 4 GB)."""
    code = textwrap.dedent("""
        import resource
        import torch
        from dmlkit.evaluation import evaluate_embeddings
        g = torch.Generator().manual_seed(0)
        x = torch.randn(500, 2496, generator=g)
        y = torch.randint(0, 10, (500,), generator=g)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = evaluate_embeddings(x, y, sections=("verification",), n_folds=2)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert out["verification"]["num_pairs"] == 124750, out
        print((after - before) // 1024)
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr
    growth_mb = int(run.stdout.split()[-1])
    assert growth_mb < 1024, f"peak RSS grew by {growth_mb} MB"



def test_verifier_scores_labelled_pairs_without_gathering_them_all(monkeypatch):
    """Verifier.fit / evaluate on labels score pairs through the byte-chunked scorer, and
    give the scores of the pairs' members gathered whole."""
    import dmlkit.apps.verifier as verifier_module
    from dmlkit.apps import Verifier
    from dmlkit.evaluation.verification import pairs_from_labels

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 8)).astype(np.float32)
    y = np.repeat(np.arange(6), 10)
    calls = []
    real = verifier_module.indexed_pair_scores

    def spy(z, i, j, metric, **kw):
        calls.append(len(i))
        return real(z, i, j, metric, **kw)

    monkeypatch.setattr(verifier_module, "indexed_pair_scores", spy)
    v = Verifier(metric="cosine", max_pairs=500, random_state=0).fit(x, y)
    i, j, same = pairs_from_labels(y, max_pairs=500, seed=0)
    assert calls == [len(i)]
    whole = Verifier(metric="cosine", max_pairs=500, random_state=0).fit_pairs(x[i], x[j], same)
    assert v.threshold_ == whole.threshold_
    assert v.evaluate(x, y)["eer"] == whole.evaluate_pairs(x[i], x[j], same)["eer"]
    assert calls == [len(i), len(i)]
