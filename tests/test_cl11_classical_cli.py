"""``dmlkit classical fit``: ``--param`` values in scientific notation or not YAML at all,
an empty or tiny held-out split, and a fitted metric kept when scoring it fails."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.classical.frozen import EmbeddedSplits, evaluate_metric, make_learner
from dmlkit.classical.params import real_from_text
from dmlkit.cli.main import app

runner = CliRunner()


def _fit(source, out, *args):
    return runner.invoke(app, ["classical", "fit", str(source), "--out", str(out), *args])


@pytest.mark.filterwarnings("ignore:ITML did not converge")
@pytest.mark.parametrize(
    "method, param, text, value",
    [
        ("nca", "tol", "1e-3", 1e-3),
        ("itml", "gamma", "1e3", 1e3),
        ("lfda", "reg", "1e-4", 1e-4),
        ("lmnn", "mu", "5E-1", 0.5),
    ],
)
def test_param_reads_scientific_notation_for_real_parameters(
    emb_npz, tmp_path, method, param, text, value
):
    out = tmp_path / "m"
    extra = [] if method == "itml" else ["-p", "device=cpu"]
    res = _fit(emb_npz, out, "-m", method, "-p", f"{param}={text}", *extra)
    assert res.exit_code == 0, res.output
    assert json.loads((out / "metric.json").read_text())["params"][param] == value


def test_real_parameters_given_as_number_text_become_floats():
    assert real_from_text("1e-3") == 1e-3 and real_from_text(" 2.5E2 ") == 250.0
    assert make_learner("nca", {"tol": "1e-3"}).tol == 1e-3
    assert make_learner("nca", {"init": "1e-3"}).init == "1e-3"  # not a real parameter
    with pytest.raises(ValueError, match="tol must be a real number"):
        make_learner("nca", {"tol": "small", "device": "cpu"}).fit(
            np.random.default_rng(0).normal(size=(6, 2)), [0, 0, 0, 1, 1, 1]
        )


@pytest.mark.parametrize("value", ["[1,", "{a: 1", "'open"])
def test_param_value_that_is_not_yaml_is_a_one_line_error(emb_npz, tmp_path, value):
    out = tmp_path / "m"
    res = _fit(emb_npz, out, "-m", "nca", "-p", f"init={value}")
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    assert f"--param init: the value {value!r} is not YAML" in res.output
    assert not out.exists()


@pytest.mark.parametrize(
    "train_rows, held_rows, empty",
    [
        (20, 0, "heldout_embeddings has 0 rows"),
        (0, 4, "embeddings has 0 rows: there is nothing to fit on"),
    ],
)
def test_fit_refuses_an_empty_split_before_fitting(tmp_path, train_rows, held_rows, empty):
    path = tmp_path / "e.npz"
    rng = np.random.default_rng(0)
    np.savez(
        path,
        embeddings=rng.normal(size=(train_rows, 4)),
        labels=np.arange(train_rows) % 2,
        heldout_embeddings=rng.normal(size=(held_rows, 4)),
        heldout_labels=np.arange(held_rows) % 2,
    )
    out = tmp_path / "m"
    res = _fit(path, out, "-m", "lfda")
    assert res.exit_code == 1, res.output
    assert f"{path}: {empty}" in res.output
    assert "fitting lfda" not in res.output and not out.exists()


def test_fit_on_three_rows_scores_knn_with_fewer_neighbours(tmp_path):
    path = tmp_path / "t3.npz"
    np.savez(
        path, embeddings=np.random.default_rng(0).normal(size=(3, 4)), labels=np.array([0, 0, 1])
    )
    out = tmp_path / "m"
    res = _fit(path, out, "-m", "lfda")
    assert res.exit_code == 0, res.output
    assert "2-NN" in res.output  # the reduced k is said
    meta = json.loads((out / "metric.json").read_text())
    assert set(meta["evaluation"]["learned"]) >= {"precision_at_1", "knn_accuracy"}


@pytest.mark.filterwarnings("ignore:retrieval metrics are NaN")
def test_knn_accuracy_uses_at_most_the_training_rows_there_are():
    rng = np.random.default_rng(0)
    train, held = rng.normal(size=(2, 3)), rng.normal(size=(4, 3))
    splits = EmbeddedSplits(train, np.array([0, 1]), held, np.array([0, 1, 0, 1]))
    with pytest.warns(UserWarning, match="2-NN"):
        result = evaluate_metric(None, splits)
    # 2-NN over both training rows: every vote a tie, which goes to the lowest label
    assert result["raw"]["knn_accuracy"] == 0.5
    one = EmbeddedSplits(train[:1], np.array([0]), train[:1], np.array([0]))
    with pytest.warns(UserWarning, match="no k-NN accuracy"):
        assert "knn_accuracy" not in evaluate_metric(None, one)["raw"]


def test_fitted_metric_is_kept_when_scoring_it_fails(emb_npz, tmp_path, monkeypatch):
    import dmlkit.classical.frozen as frozen

    def broken(components, splits, n_neighbors=3):
        raise ValueError("scoring broke")

    monkeypatch.setattr(frozen, "evaluate_metric", broken)
    out = tmp_path / "m"
    res = _fit(emb_npz, out, "-m", "lfda")
    assert res.exit_code == 1, res.output
    assert "scoring broke" in res.output and f"saved in {out}" in res.output
    assert (out / "components.npy").is_file()
    meta = json.loads((out / "metric.json").read_text())
    assert meta["method"] == "lfda" and "evaluation" not in meta
