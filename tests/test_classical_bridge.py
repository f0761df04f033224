"""Learned metrics as dmlkit distances, on frozen run embeddings, saved without pickle, CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from typer.testing import CliRunner

from dmlkit.classical import NCA
from dmlkit.classical.frozen import (
    evaluate_metric,
    fit_on_embeddings,
    fit_on_run,
    load_distance,
    load_embeddings,
    load_metric,
    save_metric,
)
from dmlkit.cli.main import app
from dmlkit.distances import EuclideanDistance, MahalanobisDistance
from dmlkit.registry import DISTANCES, build_from_config, config_of

runner = CliRunner()
TINY = """
name: tiny
data: {name: digits, max_per_class: 10, max_heldout_per_class: 10}
model: {name: mlp, dim: 8, hidden: [16]}
loss: {name: triplet_margin, margin: 0.2}
miner: {name: batch_hard}
sampler: {name: m_per_class, m: 2, batch_size: 10}
training: {epochs: 1, num_threads: 1}
"""


def blobs(n: int = 60, seed: int = 0):
    rng = np.random.RandomState(seed)
    y = np.arange(n) % 3
    return np.column_stack([y + 0.1 * rng.randn(n), 3 * rng.randn(n), rng.randn(n)]), y


# -- MahalanobisDistance ------------------------------------------------------------------
def test_mahalanobis_distance_matches_definition_and_round_trips():
    g = torch.Generator().manual_seed(0)
    L = torch.randn(2, 4, generator=g, dtype=torch.float64)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64)
    y = torch.randn(3, 4, generator=g, dtype=torch.float64)
    dist = MahalanobisDistance(components=L)
    M = L.T @ L
    ref = torch.tensor([[float((a - b) @ M @ (a - b)) for b in y] for a in x],
                       dtype=torch.float64).sqrt()
    assert torch.allclose(dist(x, y), ref, atol=1e-10)
    assert torch.allclose(MahalanobisDistance(L, squared=True)(x, y), ref**2, atol=1e-10)
    assert torch.allclose(dist.pairwise(x[:3], y), ref.diagonal(), atol=1e-10)
    assert torch.allclose(dist(x).diagonal(), torch.zeros(5, dtype=torch.float64))
    # from the matrix M: same distances
    assert torch.allclose(MahalanobisDistance.from_matrix(M)(x, y), ref, atol=1e-6)
    # registered, config round trip, follows .to(dtype) of inputs
    rebuilt = build_from_config(DISTANCES, config_of(dist))
    assert torch.allclose(rebuilt(x.float(), y.float()).double(), ref, atol=1e-4)
    # identity default == unnormalized Euclidean
    plain = DISTANCES.build("mahalanobis")
    assert torch.allclose(plain(x, y), EuclideanDistance(normalize_embeddings=False)(x, y))


def test_mahalanobis_distance_bad_input():
    with pytest.raises(ValueError, match="semi-definite"):
        MahalanobisDistance.from_matrix(-torch.eye(3))
    with pytest.raises(ValueError, match="symmetric"):
        MahalanobisDistance.from_matrix(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="NaN"):
        MahalanobisDistance(components=torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="shape"):
        MahalanobisDistance(components=torch.ones(3))
    with pytest.raises(ValueError, match="dim 3"):
        MahalanobisDistance(components=torch.ones(2, 4))(torch.ones(2, 3))


# -- frozen embeddings, persistence -----------------------------------------------------------
def test_fit_save_load_round_trip(tmp_path):
    X, y = blobs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = fit_on_embeddings(torch.from_numpy(X).float(), torch.from_numpy(y), "lmnn",
                                {"n_components": 2, "device": "cpu"})
    save_metric(est, tmp_path / "m", extra={"note": "x"})
    L, meta = load_metric(tmp_path / "m")
    np.testing.assert_array_equal(L, est.components_)
    assert meta["method"] == "lmnn" and meta["n_components"] == 2 and meta["note"] == "x"
    assert meta["params"]["n_components"] == 2
    json.dumps(meta)  # plain JSON
    np.load(tmp_path / "m" / "components.npy", allow_pickle=False)  # no pickle needed
    dist = load_distance(tmp_path / "m")
    pairs = np.stack([X[:5], X[5:10]], axis=1)
    got = dist.pairwise(torch.from_numpy(X[:5]), torch.from_numpy(X[5:10])).numpy()
    np.testing.assert_allclose(got, est.pair_distance(pairs), rtol=1e-6)
    with pytest.raises(FileNotFoundError):
        load_metric(tmp_path / "nothing")
    np.save(tmp_path / "m" / "components.npy", np.ones((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="float"):
        load_metric(tmp_path / "m")
    with pytest.raises(ValueError, match="unknown method"):
        fit_on_embeddings(X, y, "pca")
    with pytest.raises(ValueError, match="unknown parameter"):
        fit_on_embeddings(X, y, "nca", {"bogus": 1})


def test_evaluate_metric_raw_vs_learned(tmp_path):
    X, y = blobs(90)
    Xh, yh = blobs(60, seed=1)
    np.savez(tmp_path / "e.npz", embeddings=X, labels=y, heldout_embeddings=Xh,
             heldout_labels=yh)
    splits = load_embeddings(tmp_path / "e.npz")
    est = NCA(device="cpu", random_state=0).fit(splits.train, splits.train_labels)
    res = evaluate_metric(est.components_, splits)
    assert set(res) == {"raw", "learned"}
    assert res["learned"]["knn_accuracy"] > res["raw"]["knn_accuracy"]
    assert res["learned"]["map_at_r"] > res["raw"]["map_at_r"]


def test_cli_fit_and_evaluate_npz(tmp_path):
    X, y = blobs(90)
    np.savez(tmp_path / "e.npz", embeddings=X, labels=y)
    out = tmp_path / "metric"
    res = runner.invoke(app, ["classical", "fit", str(tmp_path / "e.npz"), "--method", "nca",
                              "--out", str(out), "-p", "n_components=2", "-p", "device=cpu"])
    assert res.exit_code == 0, res.output
    assert "knn_accuracy" in res.output and (out / "components.npy").is_file()
    assert np.load(out / "components.npy").shape == (2, 3)
    res = runner.invoke(app, ["classical", "evaluate", str(tmp_path / "e.npz"), "--metric",
                              str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["learned"]["knn_accuracy"] > 0.9
    bad = runner.invoke(app, ["classical", "fit", str(tmp_path / "e.npz"), "--method", "x",
                              "--out", str(out)])
    assert bad.exit_code == 1 and "unknown method" in bad.output
    bad = runner.invoke(app, ["classical", "fit", str(tmp_path / "nope"), "--out", str(out)])
    assert bad.exit_code == 1 and "neither a run directory" in bad.output


def test_fit_on_a_trained_run(tmp_path):
    from dmlkit.config import load_config
    from dmlkit.training import train_run

    (tmp_path / "tiny.yaml").write_text(TINY)
    run_dir = tmp_path / "run"
    train_run(load_config(tmp_path / "tiny.yaml"), run_dir, log=lambda *a: None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est, splits = fit_on_run(run_dir, "nca", {"device": "cpu", "max_iter": 20})
    assert splits.train.shape[1] == 8 and est.components_.shape == (8, 8)
    assert splits.heldout.shape[0] > 0
    out = tmp_path / "m"
    res = runner.invoke(app, ["classical", "fit", str(run_dir), "-m", "lfda", "-o", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["classical", "evaluate", str(run_dir), "--metric", str(out)])
    assert res.exit_code == 0 and "map_at_r" in res.output, res.output


def test_knn_accuracy_without_a_held_out_split_leaves_each_item_out():
    """A file without held-out arrays is scored on its own rows: no item may be its own
    neighbour (it was: 3-NN accuracy counted each item's own vote)."""
    from sklearn.datasets import load_digits

    from dmlkit.classical.frozen import EmbeddedSplits, evaluate_metric

    x, y = load_digits(return_X_y=True)
    x, y = x[:400].astype(np.float64), y[:400].astype(np.int64)
    got = evaluate_metric(None, EmbeddedSplits(x, y, x, y))["raw"]["knn_accuracy"]
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    near = np.argsort(d, axis=1, kind="stable")[:, :3]
    want = np.mean([np.bincount(y[r]).argmax() == t for r, t in zip(near, y, strict=True)])
    assert got == pytest.approx(want)
