"""Hierarchical ``(n, L)`` labels through the data layer, the config and the CLI:
datasets and ``.npz`` files hold them, splits are stratified by leaf class, ``dmlkit
train`` trains the ``hierarchical`` sampler with the ``hierarchical_triplet`` loss, and
``dmlkit evaluate`` reports every level."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.data.dataset import ArrayDataset, leaf_ids
from dmlkit.data.load import split_dataset
from dmlkit.data.npz import load_npz
from dmlkit.evaluation import evaluate_embeddings, hierarchical_retrieval_metrics
from dmlkit.samplers import MPerClassSampler

runner = CliRunner()

HIER_RUN = """
name: hier
data: {{name: npz, path: {path}, split: stratified, test_fraction: 0.5}}
model: {{name: mlp, dim: 8, hidden: [16]}}
loss: {{name: hierarchical_triplet, margin: 0.1}}
sampler: {{name: hierarchical, batch_size: 24, m: 4, classes_per_super: 2}}
training: {{epochs: 1, seed: 0, num_threads: 1}}
"""


def _hier(n_super: int = 3, n_sub: int = 4, per_leaf: int = 10) -> np.ndarray:
    """``(n, 2)`` labels; sub-class ids repeat under every super-class."""
    sup = np.repeat(np.arange(n_super), n_sub * per_leaf)
    sub = np.tile(np.repeat(np.arange(n_sub), per_leaf), n_super)
    return np.stack([sup, sub], axis=1)


@pytest.fixture
def hier_npz(tmp_path):
    labels = _hier()
    x = np.random.default_rng(0).normal(size=(len(labels), 8)).astype(np.float32)
    path = tmp_path / "hier.npz"
    np.savez(path, x=x, labels=labels)
    return path


def test_array_dataset_holds_hierarchical_labels():
    labels = _hier(2, 3, 2)
    ds = ArrayDataset(np.zeros((len(labels), 2)), labels)
    assert ds.labels.shape == (12, 2) and ds.labels.dtype == torch.int64
    assert ds.num_classes == 6  # leaves: (super, sub) rows, not the 3 distinct ids
    assert ds.classes == [(s, c) for s in range(2) for c in range(3)]
    assert torch.equal(ds.subset([0, 11]).labels, torch.tensor([[0, 0], [1, 2]]))
    leaves = leaf_ids(ds.labels)
    assert leaves.shape == (12,) and torch.equal(leaves, torch.arange(6).repeat_interleave(2))
    assert leaf_ids(torch.tensor([3, 1])).tolist() == [3, 1]
    with pytest.raises(ValueError, match="1-D"):
        ArrayDataset(np.zeros((2, 2)), [[0], [1]])
    with pytest.raises(TypeError, match="multi-labels"):
        ArrayDataset(np.zeros((2, 2)), np.array([[True, False], [False, True]]))
    with pytest.raises(ValueError, match=">= 0"):
        ArrayDataset(np.zeros((2, 2)), [[0, -1], [1, 0]])


def test_npz_and_split_by_leaf_class(hier_npz):
    ds = load_npz(hier_npz)
    assert ds.labels.shape == (120, 2)
    train, heldout = split_dataset({"name": "npz", "path": str(hier_npz), "test_fraction": 0.3})
    assert len(train) + len(heldout) == 120
    both = torch.cat([train.x, heldout.x])
    assert torch.unique(both, dim=0).shape[0] == 120  # disjoint and complete
    for part, count in ((train, 7), (heldout, 3)):  # 10 per leaf, 30% held out
        rows = Counter(map(tuple, part.labels.tolist()))
        assert len(rows) == 12 and set(rows.values()) == {count}
        # each item keeps its own labels
        for xi, yi in zip(part.x, part.labels, strict=True):
            assert torch.equal(ds.labels[(ds.x == xi).all(1)][0], yi)
    capped, _ = split_dataset({"name": "npz", "path": str(hier_npz), "max_per_class": 2})
    assert set(Counter(map(tuple, capped.labels.tolist())).values()) == {2}
    with pytest.raises(ValueError, match="hierarchical"):
        split_dataset({"name": "npz", "path": str(hier_npz), "split": "classes",
                       "train_classes": [0, 1]})


def test_m_per_class_points_to_the_hierarchical_sampler():
    with pytest.raises(ValueError, match="'hierarchical' sampler"):
        MPerClassSampler(torch.as_tensor(_hier()), m=2, batch_size=8)
    with pytest.raises(ValueError, match="multi-labels"):
        MPerClassSampler(torch.ones(10, 3, dtype=torch.bool), m=2, batch_size=8)


def test_evaluate_embeddings_reports_every_level():
    labels = _hier(2, 2, 5)
    x = np.random.default_rng(1).normal(size=(len(labels), 4)).astype(np.float32)
    got = evaluate_embeddings(x, labels, sections=("retrieval",), k=(1, 2))
    want = hierarchical_retrieval_metrics(x, labels, k=(1, 2))
    assert got["hierarchical"] == want
    assert got["retrieval"]["map_at_r"] == pytest.approx(want["map_at_r_level_1"])
    flat = evaluate_embeddings(x, leaf_ids(torch.as_tensor(labels)), sections=("retrieval",))
    assert "hierarchical" not in flat


def test_cli_train_and_evaluate_hierarchical(hier_npz, tmp_path):
    config = tmp_path / "hier.yaml"
    config.write_text(HIER_RUN.format(path=hier_npz))
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(config), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "training on 60 items (12 classes)" in res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_queries"] == 60 and 0.0 <= metrics["map_at_r"] <= 1.0
    res = runner.invoke(app, ["evaluate", str(out), "--sections", "retrieval,clustering"])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "evaluation.json").read_text())
    assert result["hierarchical"]["num_levels"] == 2
    assert "map_at_r_level_0" in result["hierarchical"] and "hierarchical" in res.output
    assert result["clustering"] == {"skipped": "clustering needs (n,) class labels"}


@pytest.mark.parametrize("labels, ok", [
    (_hier(3, 2, 5), True),
    (np.random.default_rng(2).random((30, 3)) < 0.5, True),
    (np.zeros((30, 0), np.int64), False),
    (np.array([["a", "b"]] * 30), True),
])
def test_cli_evaluate_embedding_files_with_label_rows(tmp_path, labels, ok):
    emb = np.random.default_rng(3).normal(size=(30, 4)).astype(np.float32)
    np.savez(tmp_path / "e.npz", embeddings=emb, labels=labels)
    res = runner.invoke(app, ["evaluate", str(tmp_path / "e.npz"), "--sections",
                              "retrieval,verification"])
    if not ok:
        assert res.exit_code == 1 and "one label per embedding row" in res.output
        return
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "e.evaluation.json").read_text())
    assert result["retrieval"]["num_queries"] > 0
    assert ("hierarchical" in result) == (labels.dtype != bool)


@pytest.mark.parametrize("loss", ["proxy_anchor", "arcface",
                                  "{name: weighted_sum, losses: [contrastive, proxy_nca]}"])
def test_classifier_loss_on_hierarchical_labels_is_refused_before_training(
        hier_npz, tmp_path, loss):
    """A loss that needs one class per item fails before any epoch, with the reason and
    what to use instead, and leaves no half-made run directory behind."""
    config = tmp_path / "c.yaml"
    text = HIER_RUN.format(path=hier_npz)
    config.write_text(text.replace("{name: hierarchical_triplet, margin: 0.1}", loss))
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(config), "--out", str(out), "--no-progress"])
    assert result.exit_code != 0
    assert "cannot train on this data's hierarchical labels" in result.output
    assert "hierarchical_triplet" in result.output  # the way out
    assert "epoch" not in result.output.lower()  # refused up front, not in epoch 1
    assert not out.exists()


def test_pair_losses_and_miners_still_train_on_hierarchical_labels(hier_npz, tmp_path):
    config = tmp_path / "c.yaml"
    text = HIER_RUN.format(path=hier_npz).replace(
        "{name: hierarchical_triplet, margin: 0.1}", "multi_similarity\nminer: multi_similarity")
    config.write_text(text)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(config), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (out / "metrics.json").exists()


def test_the_label_check_runs_the_loss_on_the_miners_tuples(hier_npz, tmp_path):
    """A tuple loss that needs the miner's tuples on (n, L) labels (quadruplet after
    batch_hard) trains: the check before the first epoch runs miner then loss, as a
    batch does."""
    config = tmp_path / "c.yaml"
    text = HIER_RUN.format(path=hier_npz).replace(
        "{name: hierarchical_triplet, margin: 0.1}", "quadruplet\nminer: batch_hard")
    config.write_text(text)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(config), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
