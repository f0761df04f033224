"""The raw-input baselines of a run: L2-normalized rows (the usual convention) and as is."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dmlkit.data.dataset import ArrayDataset
from dmlkit.evaluation import retrieval_metrics
from dmlkit.training import heldout_metrics, metrics_table
from dmlkit.training.run import METRIC_KEYS


def scaled_data(seed=0):
    """Rows of two classes whose norms vary a lot: normalizing changes the neighbours."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(60) % 3
    directions = torch.randn(3, 10, generator=g)[labels] + 0.6 * torch.randn(60, 10, generator=g)
    scale = torch.exp(1.5 * torch.randn(60, 1, generator=g))  # (60, 1)
    return ArrayDataset((directions * scale).view(60, 2, 5), labels)


def test_baselines_are_normalized_and_as_is():
    data = scaled_data()
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 4))
    metrics = heldout_metrics(model, data)
    x = data.x.flatten(1).double().numpy()
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)  # normalized by hand, fp64
    want = retrieval_metrics(unit, data.labels)
    want_raw = retrieval_metrics(x, data.labels)
    for key in METRIC_KEYS:
        assert metrics["baseline"][key] == pytest.approx(want[key], abs=1e-12), key
        assert metrics["baseline_unnormalized"][key] == pytest.approx(want_raw[key], abs=1e-12)
    assert metrics["baseline"]["map_at_r"] != metrics["baseline_unnormalized"]["map_at_r"]
    assert "L2-normalized" in metrics["baseline_inputs"]
    table = metrics_table(metrics)
    header = table.splitlines()[0]
    assert "raw (L2-normed)" in header and "raw (as is)" in header and "learned" in header
    map_row = next(line for line in table.splitlines() if line.startswith("MAP@R"))
    assert map_row.split()[1:] == [f"{metrics['baseline']['map_at_r']:.4f}",
                                   f"{metrics['baseline_unnormalized']['map_at_r']:.4f}",
                                   f"{metrics['map_at_r']:.4f}"]


def test_table_of_an_older_run_without_the_unnormalized_baseline():
    metrics = heldout_metrics(nn.Flatten(), scaled_data(1))
    del metrics["baseline_unnormalized"]
    row = next(line for line in metrics_table(metrics).splitlines() if line.startswith("P@1"))
    assert row.split()[2] == "-"
