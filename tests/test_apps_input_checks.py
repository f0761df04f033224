"""Inputs the application kits and their commands cannot use are refused with a message
naming them (FARs outside (0, 1), 2-D labels for verify, an unknown --method, an empty
--data), and `recommend evaluate` reports held-out items that repeat a training item."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.apps import CMLRecommender, Verifier
from dmlkit.apps.splits import split_identities
from dmlkit.cli.main import app
from dmlkit.data.interactions import leave_last_out, read_interactions
from dmlkit.evaluation.recommendation import recommendation_metrics
from dmlkit.functional.verification import roc_curve, tar_at_far

runner = CliRunner()


def identities(n_ids=8, per=5, d=4, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_ids), per)
    return rng.normal(size=(n_ids, d))[y] + 0.3 * rng.normal(size=(len(y), d)), y


# -- FARs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("far", [1.5, -0.1, 0.0, 1.0, float("nan")])
def test_every_far_must_lie_strictly_between_0_and_1(far):
    x, y = identities()
    with pytest.raises(ValueError, match=r"fars: far must be in \(0, 1\), got"):
        Verifier(fars=(0.01, far), n_bootstrap=5).fit(x, y)
    fitted = Verifier(n_bootstrap=5).fit(x, y).set_params(fars=[far])
    with pytest.raises(ValueError, match=r"far must be in \(0, 1\)"):
        fitted.evaluate(x, y)  # fars changed after fit are checked again
    fpr, tpr, _ = roc_curve([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0])
    with pytest.raises(ValueError, match=r"far must be in \(0, 1\), got"):
        tar_at_far(fpr, tpr, far)


def test_fars_must_be_a_sequence_and_good_fars_still_report_tar():
    x, y = identities()
    with pytest.raises(TypeError, match="fars must be a sequence"):
        Verifier(fars=0.1).fit(x, y)
    out = Verifier(fars=(0.1, 0.5), n_bootstrap=5).fit(x, y).evaluate(x, y)
    assert 0.0 <= out["tar_at_far_0.1"] <= out["tar_at_far_0.5"] <= 1.0
    fpr, tpr, _ = roc_curve([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0])
    assert tar_at_far(fpr, tpr, 0.5) == 1.0


# -- verify with 2-D labels ----------------------------------------------------------------
def test_verify_refuses_2d_labels_with_the_message_of_identify(tmp_path):
    x, y = identities()
    np.savez(tmp_path / "g2.npz", x=x, labels=np.stack([y, y % 2], axis=1))  # (n, 2)
    res = runner.invoke(app, ["verify", "--data", str(tmp_path / "g2.npz"), "--out",
                              str(tmp_path / "v.json")])
    assert res.exit_code == 1, res.output
    assert "y should be a 1d array, got an array of shape (40, 2) instead" in res.output
    assert not isinstance(res.exception, IndexError)
    res = runner.invoke(app, ["identify", "--gallery", str(tmp_path / "g2.npz"), "--query",
                              str(tmp_path / "g2.npz"), "--out", str(tmp_path / "i.json")])
    assert "y should be a 1d array, got an array of shape (40, 2) instead" in res.output
    with pytest.raises(ValueError, match="1d array"):
        split_identities(np.stack([y, y], axis=1), 0.5, 0)


# -- detect-anomalies --------------------------------------------------------------------
def test_detect_anomalies_lists_every_method(tmp_path):
    x, _ = identities()
    np.savez(tmp_path / "n.npz", x=x)
    res = runner.invoke(app, ["detect-anomalies", "--normal", str(tmp_path / "n.npz"),
                              "--data", str(tmp_path / "n.npz"), "--method", "foo",
                              "--out", str(tmp_path / "s.csv")])
    assert res.exit_code == 1
    assert ("--method must be one of ['knn', 'prototype', 'mahalanobis', 'deep_svdd'], got "
            "'foo'") in res.output


@pytest.mark.parametrize("name, write", [
    ("rows0.npz", lambda p: np.savez(p, x=np.zeros((0, 4)))),
    ("header.csv", lambda p: p.write_text("a,b,c,d\n")),
    ("empty.csv", lambda p: p.write_text("")),
])
def test_detect_anomalies_names_an_empty_file(tmp_path, name, write):
    x, _ = identities()
    np.savez(tmp_path / "n.npz", x=x)
    write(tmp_path / name)
    res = runner.invoke(app, ["detect-anomalies", "--normal", str(tmp_path / "n.npz"),
                              "--data", str(tmp_path / name), "--out", str(tmp_path / "s.csv")])
    assert res.exit_code == 1
    assert f"error: --data {tmp_path / name} holds no items" in res.output
    assert "Found array" not in res.output and "loadtxt" not in res.output
    res = runner.invoke(app, ["detect-anomalies", "--normal", str(tmp_path / name),
                              "--data", str(tmp_path / "n.npz"), "--out", str(tmp_path / "s.csv")])
    assert res.exit_code == 1 and f"--normal {tmp_path / name} holds no items" in res.output


# -- recommend evaluate: held-out repeats of training items ---------------------------------
def _write_interactions(path, repeat_every: int) -> None:
    """20 users with 5 distinct items each; every ``repeat_every``-th user's latest
    interaction repeats one of their earlier items."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(20):
        items = [f"i{v}" for v in rng.choice(15, size=5, replace=False)]
        if u % repeat_every == 0:
            items[-1] = items[1]
        rows += [f"u{u},{item},1,{t}" for t, item in enumerate(items)]
    path.write_text("user,item,rating,timestamp\n" + "\n".join(rows) + "\n")


def test_recommend_evaluate_skips_and_reports_held_out_repeats(tmp_path):
    data = tmp_path / "d.csv"
    _write_interactions(data, repeat_every=4)  # users 0, 4, 8, 12, 16 repeat an item
    res = runner.invoke(app, ["recommend", "train", str(data), "--out", str(tmp_path / "m"),
                              "--epochs", "2", "--dim", "4"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["recommend", "evaluate", str(tmp_path / "m"), "--data",
                              str(data), "-k", "5"])
    assert res.exit_code == 0, res.output
    assert "warning: 5 of 20 held-out interactions repeat an item" in res.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["skipped_repeats"] == 5 and metrics["users"] == 15
    # the metrics are those of the 15 users whose held-out item is new to them
    model = CMLRecommender.load(tmp_path / "m")
    _, test = leave_last_out(read_interactions(data))
    new = ~model.fitted_on(test.users, test.items)
    ref = recommendation_metrics(model.recommend(test.users[new], 5),
                                 [[i] for i in test.items[new]], len(model.item_ids_), 5)
    for key, value in ref.items():
        assert metrics[key] == pytest.approx(value), key


def test_recommend_evaluate_without_repeats_reports_none_and_all_repeats_is_refused(tmp_path):
    data = tmp_path / "d.csv"
    _write_interactions(data, repeat_every=100)  # only user 0 repeats
    runner.invoke(app, ["recommend", "train", str(data), "--out", str(tmp_path / "m"),
                        "--epochs", "1", "--dim", "4"])
    res = runner.invoke(app, ["recommend", "evaluate", str(tmp_path / "m"), "--data",
                              str(data), "-k", "5"])
    assert res.exit_code == 0 and "1 of 20 held-out" in res.output
    assert json.loads((tmp_path / "m.json").read_text())["skipped_repeats"] == 1
    _write_interactions(data, repeat_every=1)  # every user repeats
    runner.invoke(app, ["recommend", "train", str(data), "--out", str(tmp_path / "all"),
                        "--epochs", "1", "--dim", "4"])
    res = runner.invoke(app, ["recommend", "evaluate", str(tmp_path / "all"), "--data",
                              str(data), "-k", "5"])
    assert res.exit_code == 1
    assert "all 20 held-out interactions" in res.output and "no new item" in res.output
