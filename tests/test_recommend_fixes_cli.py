"""``dmlkit recommend``: outputs that would overwrite an input or a saved model are refused
before any work, and errors on data without timestamps or ratings say what to do."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import INTERACTIONS, only_error_line, trained_recommender
from typer.testing import CliRunner

from dmlkit.apps import CMLRecommender, MetricOutlierDetector
from dmlkit.cli.main import app

runner = CliRunner()

ROWS = INTERACTIONS


_error_line = only_error_line


@pytest.fixture
def trained(tmp_path):
    return trained_recommender(runner, app, tmp_path)


def _evaluate(model, data, out):
    return runner.invoke(app, ["recommend", "evaluate", str(model), "--data", str(data),
                               "-k", "2", "--out", str(out)])


def test_evaluate_refuses_the_data_file_as_out(trained):
    data, model = trained
    _error_line(_evaluate(model, data, data), "--data file")
    assert data.read_text() == ROWS
    # the same file by another spelling
    _error_line(_evaluate(model, data, model / ".." / data.name), "--data file")
    assert data.read_text() == ROWS


@pytest.mark.parametrize("name", ["state.json", "manifest.json", "new.json", "sub/x.json"])
def test_evaluate_refuses_an_out_inside_the_model(trained, name):
    data, model = trained
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    _error_line(_evaluate(model, data, model / name), "inside the model directory")
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    CMLRecommender.load(model)  # still loads


def test_evaluate_refuses_an_out_inside_another_saved_directory(trained, tmp_path):
    data, model = trained
    det = MetricOutlierDetector("knn").fit(np.random.default_rng(0).standard_normal((12, 3)))
    det.save(tmp_path / "det")
    _error_line(_evaluate(model, data, tmp_path / "det" / "metrics.json"), "dmlkit-kit",
                "give a path outside it")
    assert not (tmp_path / "det" / "metrics.json").exists()
    res = _evaluate(model, data, tmp_path / "metrics.json")  # anywhere else is fine
    assert res.exit_code == 0, res.output
    assert "recall_at_2" in json.loads((tmp_path / "metrics.json").read_text())


@pytest.mark.parametrize("kind", ["dir", "file"])
def test_train_refuses_a_foreign_out_before_training(tmp_path, monkeypatch, kind):
    data = tmp_path / "t.csv"
    data.write_text(ROWS)
    out = tmp_path / "mine"
    if kind == "dir":
        out.mkdir()
        (out / "notes.txt").write_text("keep")
    else:
        out.write_text("keep")

    def no_fit(*args, **kwargs):
        raise AssertionError("trained although the destination is refused")

    monkeypatch.setattr(CMLRecommender, "fit", no_fit)
    res = runner.invoke(app, ["recommend", "train", str(data), "--out", str(out),
                              "--epochs", "1"])
    line = _error_line(res, str(out))
    assert "index" not in line
    assert ("saved model" in line) if kind == "dir" else ("file" in line)
    assert (out / "notes.txt" if kind == "dir" else out).read_text() == "keep"


def test_train_refuses_to_replace_another_kind_of_kit(tmp_path, monkeypatch):
    data = tmp_path / "t.csv"
    data.write_text(ROWS)
    det = MetricOutlierDetector("knn").fit(np.random.default_rng(0).standard_normal((12, 3)))
    det.save(tmp_path / "det")
    monkeypatch.setattr(CMLRecommender, "fit", lambda *a, **k: pytest.fail("trained"))
    res = runner.invoke(app, ["recommend", "train", str(data), "--out", str(tmp_path / "det"),
                              "--epochs", "1"])
    _error_line(res, "MetricOutlierDetector", "CMLRecommender")
    MetricOutlierDetector.load(tmp_path / "det")


def test_train_refuses_an_out_inside_a_saved_model(trained, monkeypatch):
    data, model = trained
    monkeypatch.setattr(CMLRecommender, "fit", lambda *a, **k: pytest.fail("trained"))
    res = runner.invoke(app, ["recommend", "train", str(data), "--out", str(model / "inner"),
                              "--epochs", "1"])
    _error_line(res, "dmlkit-kit", "give a path outside it")
    assert not (model / "inner").exists()
    CMLRecommender.load(model)


def test_train_replaces_an_earlier_recommender(trained):
    data, model = trained
    res = runner.invoke(app, ["recommend", "train", str(data), "--out", str(model),
                              "--epochs", "1", "--dim", "3"])
    assert res.exit_code == 0, res.output
    assert CMLRecommender.load(model).user_embeddings_.shape[1] == 3


def test_holdout_last_without_timestamps_names_holdout_none(tmp_path):
    data = tmp_path / "ui.csv"
    data.write_text("u1,i1\nu1,i2\nu2,i1\nu2,i3\n")
    res = runner.invoke(app, ["recommend", "train", str(data), "--out", str(tmp_path / "m"),
                              "--epochs", "1"])
    _error_line(res, "timestamp", "--holdout none")
    res = runner.invoke(app, ["recommend", "train", str(data), "--out", str(tmp_path / "m"),
                              "--epochs", "1", "--holdout", "none"])
    assert res.exit_code == 0, res.output


def test_min_rating_without_ratings_says_what_to_do(tmp_path):
    data = tmp_path / "ui.csv"
    data.write_text("u1,i1\nu1,i2\nu2,i1\nu2,i3\n")
    res = runner.invoke(app, ["recommend", "train", str(data), "--out", str(tmp_path / "m"),
                              "--epochs", "1", "--holdout", "none", "--min-rating", "3"])
    _error_line(res, "no rating column", "--min-rating")
    rated = tmp_path / "r.csv"
    rated.write_text(ROWS)
    res = runner.invoke(app, ["recommend", "train", str(rated), "--out", str(tmp_path / "m"),
                              "--epochs", "1", "--holdout", "none", "--min-rating", "9"])
    _error_line(res, "rated 9 or more", "lower")


def test_movielens_header_is_read_by_train(tmp_path):
    data = tmp_path / "ratings.csv"
    data.write_text("userId,movieId\n" + "".join(
        f"{u},{10 + (u + t) % 5}\n" for u in range(4) for t in range(3)))
    res = runner.invoke(app, ["recommend", "train", str(data), "--out", str(tmp_path / "m"),
                              "--epochs", "1", "--holdout", "none"])
    assert res.exit_code == 0, res.output
    model = CMLRecommender.load(tmp_path / "m")
    assert "userId" not in model.user_ids_ and "movieId" not in model.item_ids_
    assert len(model.user_ids_) == 4
