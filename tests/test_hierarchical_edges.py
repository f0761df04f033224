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
