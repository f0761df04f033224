"""Hierarchical labels where only class ids fit: indexes and class-disjoint validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.data.class_folds import holdout_classes
from dmlkit.data.dataset import ArrayDataset


def _hier_labels(n: int) -> np.ndarray:
    return np.stack([np.arange(n) % 2, np.arange(n) % 6], axis=1)  # (n, 2)


def test_index_build_refuses_hierarchical_labels(tmp_path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "e.npz"
    np.savez(path, embeddings=rng.normal(size=(30, 4)).astype(np.float32),
             labels=_hier_labels(30))
    result = CliRunner().invoke(app, ["index", "build", str(path), "--out",
                                      str(tmp_path / "idx")])
    assert result.exit_code != 0
    assert "one class id per item" in result.output
    assert not (tmp_path / "idx").exists()


def test_val_classes_refuses_hierarchical_labels() -> None:
    data = ArrayDataset(np.zeros((24, 3), np.float32), torch.as_tensor(_hier_labels(24)))
    with pytest.raises(ValueError, match="val_fraction"):
        holdout_classes(data, 0.5)


def test_hierarchical_run_with_val_fraction_and_per_level_metrics(tmp_path) -> None:
    import json

    labels = np.stack([np.repeat(np.arange(3), 40), np.tile(np.repeat(np.arange(4), 10), 3)],
                      axis=1)  # (120, 2): 12 leaves
    x = np.random.default_rng(0).normal(size=(len(labels), 8)).astype(np.float32)
    np.savez(tmp_path / "h.npz", x=x, labels=labels)
    config = tmp_path / "h.yaml"
    config.write_text(
        f"data: {{name: npz, path: {tmp_path / 'h.npz'}, split: stratified, test_fraction: 0.5}}\n"
        "model: {name: mlp, dim: 8, hidden: [16]}\n"
        "loss: {name: hierarchical_triplet, margin: 0.1}\n"
        "sampler: {name: hierarchical, batch_size: 24, m: 4, classes_per_super: 2}\n"
        "training: {epochs: 1, seed: 0, num_threads: 1, val_fraction: 0.3}\n"
    )
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(config), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["hierarchical"]["num_levels"] == 2
    assert 0.0 <= metrics["hierarchical"]["map_at_r_level_0"] <= 1.0


def test_offline_mining_refuses_unlabelled_multi_label_rows() -> None:
    from dmlkit.training.offline_mining import hardest_negatives

    multi = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0]], dtype=torch.bool)
    with pytest.raises(ValueError, match="row 4"):
        hardest_negatives(torch.randn(5, 3), multi, k=2)
