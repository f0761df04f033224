"""``dmlkit recommend``: models fitted with numeric ids evaluate and list like string ones,
the default summary name appends ``.json``, the rating filter travels with the model, and
training reports its epochs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.apps import CMLRecommender
from dmlkit.cli.main import app
from dmlkit.data.interactions import leave_last_out, read_interactions

runner = CliRunner()


def _rows(n_users: int = 30, n_items: int = 40, per: int = 6) -> str:
    """Integer ids (no header): users of a community share items, the last one held out."""
    rng = np.random.default_rng(0)
    lines = []
    for u in range(n_users):
        pool = [i for i in range(n_items) if i % 4 == u % 4]
        for t, i in enumerate(rng.choice(pool, size=per, replace=False)):
            lines.append(f"{u},{i},{1 + (u + t) % 5},{t}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def int_model(tmp_path):
    data = tmp_path / "ints.csv"
    data.write_text(_rows())
    train, _ = leave_last_out(read_interactions(data))
    model = CMLRecommender(dim=8, epochs=15).fit(train.users.astype(int),
                                                  train.items.astype(int), holdout="last")
    model.save(tmp_path / "m")
    str_model = CMLRecommender(dim=8, epochs=15).fit(train.users, train.items, holdout="last")
    str_model.save(tmp_path / "s")
    return data, tmp_path / "m", tmp_path / "s"


def test_a_model_fitted_with_integer_ids_evaluates_as_one_with_string_ids(int_model, tmp_path):
    data, model, str_model = int_model
    found = {}
    for name, path in (("int", model), ("str", str_model)):
        res = runner.invoke(app, ["recommend", "evaluate", str(path), "--data", str(data),
                                  "--out", str(tmp_path / f"{name}.json")])
        assert res.exit_code == 0, res.output
        found[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert found["int"]["skipped_unknown"] == 0
    assert found["int"]["recall_at_10"] > 0.1  # (0 when ids never matched)
    assert found["str"]["recall_at_10"] > 0.1
    # the hits of the integer model by its own ids, through the library
    _, test = leave_last_out(read_interactions(data))
    fitted = CMLRecommender.load(model)
    recs = fitted.recommend(test.users.astype(int), 10)
    hits = [int(item) in row.tolist() for item, row in zip(test.items, recs, strict=True)]
    assert found["int"]["recall_at_10"] == pytest.approx(np.mean(hits))


def test_top_lists_numeric_ids_with_item_zero_and_without_padding(tmp_path):
    # user 0 saw items 1 and 2, so only item 0 is left: its list is "0", no -1 padding
    model = CMLRecommender(dim=4, epochs=2).fit([0, 0, 1], [1, 2, 0])
    model.save(tmp_path / "m")
    res = runner.invoke(app, ["recommend", "top", str(tmp_path / "m"), "-u", "0", "-k", "3"])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines() == ["0\t0"]
    res = runner.invoke(app, ["recommend", "top", str(tmp_path / "m"), "-u", "1", "-k", "3"])
    assert res.exit_code == 0, res.output
    assert sorted(res.stdout.split("\t")[1].split()) == ["1", "2"]


def test_the_default_summary_appends_json_to_the_model_directory(int_model, tmp_path):
    data, model, _ = int_model
    dotted = tmp_path / "cml_m0.5"
    model.rename(dotted)
    res = runner.invoke(app, ["recommend", "evaluate", str(dotted), "--data", str(data)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cml_m0.5.json").is_file()
    assert not (tmp_path / "cml_m0.json").exists()


RATED = "".join(f"u{u},i{(u + t) % 7},{1 + (u * 3 + t) % 5},{t}\n"
                for u in range(12) for t in range(6))


def _train(tmp_path, *extra):
    data = tmp_path / "r.csv"
    data.write_text(RATED)
    res = runner.invoke(app, ["recommend", "train", str(data), "--out", str(tmp_path / "m"),
                              "--epochs", "2", "--dim", "4", *extra])
    assert res.exit_code == 0, res.output
    return data, tmp_path / "m", res


def _eval(model, data, out, *extra):
    return runner.invoke(app, ["recommend", "evaluate", str(model), "--data", str(data),
                               "-k", "3", "--out", str(out), *extra])


def test_evaluate_reads_the_data_with_the_trained_min_rating(tmp_path):
    data, model, _ = _train(tmp_path, "--min-rating", "3")
    assert CMLRecommender.load(model).min_rating_ == 3.0
    res = _eval(model, data, tmp_path / "a.json")
    assert res.exit_code == 0, res.output
    assert "--min-rating 3" in res.stderr
    same = _eval(model, data, tmp_path / "b.json", "--min-rating", "3")
    assert same.exit_code == 0, same.output
    assert (json.loads((tmp_path / "a.json").read_text())
            == json.loads((tmp_path / "b.json").read_text()))


def test_evaluate_refuses_another_min_rating_than_the_trained_one(tmp_path):
    data, model, _ = _train(tmp_path, "--min-rating", "3")
    res = _eval(model, data, tmp_path / "a.json", "--min-rating", "1")
    assert res.exit_code == 1, res.output
    lines = [s for s in res.stderr.splitlines() if s.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "--min-rating 3" in lines[0] and "omit --min-rating" in lines[0]
    assert not (tmp_path / "a.json").exists()


def test_evaluate_warns_of_a_min_rating_the_model_was_not_trained_with(tmp_path):
    data, model, _ = _train(tmp_path)
    assert CMLRecommender.load(model).min_rating_ is None
    res = _eval(model, data, tmp_path / "a.json", "--min-rating", "3")
    assert res.exit_code == 0, res.output
    assert "warning:" in res.stderr and "records no --min-rating" in res.stderr


def test_min_rating_is_checked_and_saved_by_the_library(tmp_path):
    with pytest.raises(ValueError, match="min_rating"):
        CMLRecommender(dim=4, epochs=1).fit(["u", "v"], ["a", "b"], min_rating=float("nan"))
    model = CMLRecommender(dim=4, epochs=1).fit(["u", "v"], ["a", "b"], min_rating=4)
    model.save(tmp_path / "m")
    assert CMLRecommender.load(tmp_path / "m").min_rating_ == 4.0


def test_training_reports_each_epoch_on_stderr(tmp_path):
    _, _, res = _train(tmp_path)
    epochs = [s for s in res.stderr.splitlines() if s.startswith("epoch ")]
    assert [s.split()[1] for s in epochs] == ["1/2", "2/2"]
    assert "epoch" not in res.stdout


def test_fit_calls_log_once_per_epoch():
    lines: list[str] = []
    CMLRecommender(dim=4, epochs=3).fit(["u", "v", "v"], ["a", "b", "c"], log=lines.append)
    assert len(lines) == 3 and all(" loss " in s for s in lines)
