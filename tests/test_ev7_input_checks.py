"""Inputs of the evaluation API and `dmlkit evaluate`, checked once and up front: labels
one per embedding whatever the sections, float64 embeddings evaluated in float64 by the
command as by the API, k / chunk_size / max_pairs / --device refused with one clear line,
and verification scores that are not 1-d refused rather than flattened."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.evaluation import (
    evaluate_embeddings,
    hierarchical_retrieval_metrics,
    pairs_from_labels,
    retrieval_metrics,
    verification_metrics,
)

runner = CliRunner()


def blobs(seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(6), 20)
    x = rng.normal(size=(120, 8)) + y[:, None] * 0.5  # (120, 8) float64
    return x, y


@pytest.mark.parametrize("section", ["verification", "clustering", "few_shot"])
@pytest.mark.parametrize("n_labels", [40, 240])
def test_label_length_checked_whatever_the_sections(section, n_labels):
    x, y = blobs()
    labels = np.resize(y, n_labels)
    with pytest.raises(ValueError, match=f"labels has {n_labels} rows but embeddings has 120"):
        evaluate_embeddings(x.astype(np.float32), labels, sections=[section], episodes=2)


def test_gallery_checked_up_front():
    x, y = blobs()
    with pytest.raises(ValueError, match="ref_labels has 4 rows but ref_embeddings has 5"):
        evaluate_embeddings(x, y, x[:5], y[:4], sections=["verification"])
    with pytest.raises(ValueError, match="dim 8 but ref_embeddings have dim 3"):
        evaluate_embeddings(x, y, x[:5, :3], y[:5], sections=["verification"])
    with pytest.raises(ValueError, match="together"):
        evaluate_embeddings(x, y, x[:5], None, sections=["verification"])


def test_labels_as_a_list_still_accepted():
    x, y = blobs()
    out = evaluate_embeddings(x, list(y), sections=["verification"])
    assert out["verification"]["num_pairs"] == 120 * 119 // 2


def test_float64_beyond_float32_range_is_evaluated_by_the_api():
    x, y = blobs()
    want = retrieval_metrics(x, y)["precision_at_1"]
    out = evaluate_embeddings(x * 1e38, y, sections=["retrieval", "clustering"])
    assert out["retrieval"]["precision_at_1"] == pytest.approx(want)
    cos = evaluate_embeddings(x * 1e38, y, sections=["clustering"], metric="cosine")
    ref = evaluate_embeddings(x, y, sections=["clustering"], metric="cosine")
    assert cos["clustering"]["nmi"] == pytest.approx(ref["clustering"]["nmi"])


@pytest.mark.parametrize("scale", [1e-46, 1e38])
def test_cli_evaluates_float64_embeddings_as_the_api(tmp_path, scale):
    x, y = blobs()
    np.savez(tmp_path / "e.npz", embeddings=x * scale, labels=y)
    res = runner.invoke(app, ["evaluate", str(tmp_path / "e.npz"), "--sections",
                              "retrieval,verification", "-o", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "e.json").read_text())
    want = evaluate_embeddings(x * scale, y, sections=["retrieval", "verification"])
    assert got["retrieval"]["precision_at_1"] == pytest.approx(
        retrieval_metrics(x, y)["precision_at_1"])
    assert got["retrieval"]["precision_at_1"] == pytest.approx(
        want["retrieval"]["precision_at_1"])
    assert got["verification"]["auc"] == pytest.approx(want["verification"]["auc"])
    assert got["verification"]["auc"] > 0.6  # (not chance)


@pytest.mark.parametrize("device", ["nonsense", "meta"])
def test_cli_device_checked_for_a_file_of_embeddings(tmp_path, device):
    x, y = blobs()
    np.savez(tmp_path / "e.npz", embeddings=x, labels=y)
    res = runner.invoke(app, ["evaluate", str(tmp_path / "e.npz"), "--device", device])
    assert res.exit_code == 1
    assert "error: --device" in res.output
    assert not (tmp_path / "e.evaluation.json").exists()


def test_cli_cuda_device_refused_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    x, y = blobs()
    np.savez(tmp_path / "e.npz", embeddings=x, labels=y)
    res = runner.invoke(app, ["evaluate", str(tmp_path / "e.npz"), "--device", "cuda"])
    assert res.exit_code == 1 and "CUDA is not available" in res.output


def test_cli_out_help_names_both_defaults():
    res = runner.invoke(app, ["evaluate", "--help"], env={"COLUMNS": "200"})
    text = " ".join(res.output.split())
    assert "RUN_DIR/evaluation.json" in text and "FILE.evaluation.json" in text


def test_hierarchical_k_follows_retrieval_rule():
    x, y = blobs()
    labels = np.stack([y // 3, y], axis=1)
    for bad in ([1.5], 1.5, [0], [], True):
        with pytest.raises(ValueError, match="k must be"):
            retrieval_metrics(x, y, k=bad)
        with pytest.raises(ValueError, match="k must be"):
            hierarchical_retrieval_metrics(x, labels, k=bad)
    out = hierarchical_retrieval_metrics(x, labels, k=np.int64(2))
    assert "hierarchical_precision_at_2" in out and "recall_at_2_level_1" in out
    assert out == hierarchical_retrieval_metrics(x, labels, k=[2])


@pytest.mark.parametrize("bad", [-1, 0, 2.0])
def test_chunk_size_refused(bad):
    x, y = blobs()
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        retrieval_metrics(x, y, chunk_size=bad)
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        hierarchical_retrieval_metrics(x, np.stack([y // 3, y], 1), chunk_size=bad)


@pytest.mark.parametrize("bad", [-1, 0, 1.5])
def test_max_pairs_refused(bad):
    x, y = blobs()
    with pytest.raises(ValueError, match="max_pairs must be an integer >= 1"):
        evaluate_embeddings(x, y, sections=["verification"], max_pairs=bad)
    with pytest.raises(ValueError, match="max_pairs must be an integer >= 1"):
        pairs_from_labels(y, max_pairs=bad)


def test_max_pairs_none_means_every_pair():
    x, y = blobs()
    out = evaluate_embeddings(x, y, sections=["verification"], max_pairs=None)
    assert out["verification"]["num_pairs"] == 120 * 119 // 2


def test_verification_scores_must_be_1d():
    rng = np.random.default_rng(0)
    same = rng.random(50) > 0.5
    with pytest.raises(ValueError, match=r"scores must be a 1-d array .* shape \(5, 10\)"):
        verification_metrics(rng.normal(size=(5, 10)), same)
    with pytest.raises(ValueError, match=r"is_same must be a 1-d array .* shape \(5, 10\)"):
        verification_metrics(rng.normal(size=50), same.reshape(5, 10))
    assert verification_metrics(list(rng.normal(size=50)), list(same))["num_pairs"] == 50


def test_every_scored_pairs_reader_refuses_a_matrix_of_scores():
    """A (5, 10) matrix is not 50 pairs: the calibrator and the ROC refuse it as
    verification_metrics does."""
    from dmlkit.evaluation import ThresholdCalibrator
    from dmlkit.functional.verification import roc_curve

    rng = np.random.default_rng(0)
    scores, same = rng.normal(size=(5, 10)), rng.random(50) < 0.5
    for call in (lambda: ThresholdCalibrator().fit(scores, same),
                 lambda: roc_curve(scores, same),
                 lambda: roc_curve(scores.ravel(), same.reshape(5, 10))):
        with pytest.raises(ValueError, match="must be a 1-d array with one entry per pair"):
            call()
    fpr, tpr, _ = roc_curve(scores.ravel(), same)  # (1-d: fine)
    assert fpr[-1] == tpr[-1] == 1.0
