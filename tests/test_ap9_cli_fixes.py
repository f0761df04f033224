"""``dmlkit fewshot --episodes`` checks every --way/--shot/--n-query setting against the
data before running any; ``dmlkit recommend`` refuses a non-finite --min-rating."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.data.interactions import read_interactions

runner = CliRunner()


@pytest.fixture
def episodes(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 20)
    x = (rng.normal(size=(4, 5))[y] * 3 + 0.3 * rng.normal(size=(80, 5))).astype(np.float32)
    np.savez(tmp_path / "e.npz", x=x, labels=y)
    return tmp_path


@pytest.mark.parametrize("extra", [["--way", "3,5", "--shot", "1"],
                                   ["--way", "3", "--shot", "1,10"],
                                   ["--way", "3", "--shot", "1", "--n-query", "20"]])
def test_fewshot_checks_every_setting_before_running_any(episodes, extra):
    res = runner.invoke(app, ["fewshot", "--episodes", str(episodes / "e.npz"), *extra,
                              "--n-episodes", "5", "-o", str(episodes / "f.json")])
    assert res.exit_code == 1, res.output
    assert "lower --way, --shot or --n-query" in res.output
    assert "-way 1-shot:" not in res.output  # no setting ran
    assert not (episodes / "f.json").exists()


def test_fewshot_runs_settings_the_data_can_fill(episodes):
    res = runner.invoke(app, ["fewshot", "--episodes", str(episodes / "e.npz"), "--way",
                              "2,4", "--shot", "1,5", "--n-episodes", "5", "-o",
                              str(episodes / "f.json")])
    assert res.exit_code == 0, res.output
    assert (episodes / "f.json").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_recommend_refuses_a_min_rating_that_is_not_finite(tmp_path, value, command):
    data = tmp_path / "d.csv"
    data.write_text("u1,i1,5,1\nu1,i2,4,2\nu2,i1,3,1\nu2,i3,5,3\n")
    if command == "train":
        args = ["recommend", "train", str(data), "--out", str(tmp_path / "m"), "--epochs", "1"]
    else:
        args = ["recommend", "evaluate", str(tmp_path / "m"), "--data", str(data)]
    res = runner.invoke(app, [*args, f"--min-rating={value}"])
    assert res.exit_code == 1
    assert "min_rating (--min-rating) must be a finite number" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_read_interactions_refuses_a_nan_min_rating(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("u1,i1,5,1\nu1,i2,4,2\n")
    with pytest.raises(ValueError, match="must be a finite number"):
        read_interactions(data, min_rating=float("nan"))
    assert len(read_interactions(data, min_rating=4.5)) == 1
