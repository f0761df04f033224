"""Settings the recommendation and recognition commands cannot use are refused or clipped
with a message naming the option: --margin, -k beyond the catalogue, a one-identity
gallery without --closed-set, --way 1."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.apps import CMLRecommender, FewShotClassifier
from dmlkit.cli.main import app
from dmlkit.evaluation.recommendation import recommendation_metrics

runner = CliRunner()


# -- recommend ------------------------------------------------------------------------------
@pytest.mark.parametrize("margin", [-1.0, 0.0, float("nan"), float("inf")])
def test_cml_refuses_a_margin_that_is_not_positive(margin):
    with pytest.raises(ValueError, match="margin must be a finite number > 0"):
        CMLRecommender(margin=margin, epochs=1).fit(["u1", "u2"], ["a", "b"])


def test_recommend_train_refuses_a_negative_margin(tmp_path):
    (tmp_path / "d.csv").write_text("u1,i1,5,1\nu1,i2,4,2\nu2,i1,3,1\nu2,i3,5,3\n")
    res = runner.invoke(app, ["recommend", "train", str(tmp_path / "d.csv"), "--out",
                              str(tmp_path / "m"), "--margin", "-1", "--epochs", "1"])
    assert res.exit_code == 1 and "margin must be a finite number > 0, got -1.0" in res.output
    assert not (tmp_path / "m").exists()


def test_recommend_evaluate_clips_k_to_the_catalogue(tmp_path):
    (tmp_path / "tiny.csv").write_text("u1,i1,5,1\nu1,i2,4,2\nu2,i1,3,1\nu2,i3,5,3\n"
                                       "u3,i2,1,1\n")
    res = runner.invoke(app, ["recommend", "train", str(tmp_path / "tiny.csv"), "--out",
                              str(tmp_path / "m"), "--epochs", "2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["recommend", "evaluate", str(tmp_path / "m"), "--data",
                              str(tmp_path / "tiny.csv")])  # the default -k 10, 2 items
    assert res.exit_code == 0, res.output
    assert "-k 10 is more than the 2 items of the catalogue; evaluating at k=2" in res.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert "recall_at_2" in metrics and "recall_at_10" not in metrics
    res = runner.invoke(app, ["recommend", "evaluate", str(tmp_path / "m"), "--data",
                              str(tmp_path / "tiny.csv"), "-k", "0"])
    assert res.exit_code == 1 and "-k must be >= 1, got 0" in res.output


def test_recommendation_metrics_names_k_and_the_list_length():
    recommended = np.array([[1, 2], [2, 1]])
    with pytest.raises(ValueError, match="k=10 but recommended holds 2 items per user; pass "
                                         "k <= 2"):
        recommendation_metrics(recommended, [[1], [1]], 2, k=10)
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        recommendation_metrics(recommended, [[1], [1]], 2, k=0)


# -- identify / fewshot ---------------------------------------------------------------------
@pytest.fixture
def sets(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 5)) * 3
    y = np.repeat(np.arange(4), 15)
    x = (centers[y] + 0.3 * rng.normal(size=(60, 5))).astype(np.float32)
    np.savez(tmp_path / "one.npz", x=x[y == 0], labels=y[y == 0])
    np.savez(tmp_path / "query.npz", x=x, labels=y)
    return tmp_path


def test_identify_on_a_one_identity_gallery_names_closed_set(sets):
    res = runner.invoke(app, ["identify", "--gallery", str(sets / "one.npz"), "--query",
                              str(sets / "query.npz"), "-o", str(sets / "i.json")])
    assert res.exit_code == 1
    assert "--closed-set" in res.output and "target_far=None" not in res.output
    res = runner.invoke(app, ["identify", "--gallery", str(sets / "one.npz"), "--query",
                              str(sets / "query.npz"), "--closed-set", "-o",
                              str(sets / "i.json")])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("ways", ["1", "3,1", "0"])
def test_fewshot_refuses_fewer_than_two_ways(sets, ways):
    res = runner.invoke(app, ["fewshot", "--episodes", str(sets / "query.npz"), "--way", ways,
                              "--shot", "1", "--n-episodes", "5", "-o", str(sets / "f.json")])
    assert res.exit_code == 1 and "--way must be 2 or more" in res.output
    assert not (sets / "f.json").exists()


def test_evaluate_episodes_refuses_one_way():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), np.repeat(np.arange(4), 10)
    with pytest.raises(ValueError, match="n_way must be 2 or more"):
        FewShotClassifier().evaluate_episodes(x, y, n_way=1, episodes=5)
