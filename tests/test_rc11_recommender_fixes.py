"""CMLRecommender and ``dmlkit recommend``: integer ids given as objects keep their numeric
order, float ids match the integer ids of a file, non-finite ratings and timestamps are
refused, and ``random_state`` and ``k`` follow the rules of the other estimators."""

from __future__ import annotations

import numpy as np
import pytest
from cli_helpers import only_error_line
from typer.testing import CliRunner

from dmlkit.apps import CMLRecommender
from dmlkit.apps.recommender_inputs import ids
from dmlkit.cli.main import app
from dmlkit.data.interactions import read_interactions
from dmlkit.evaluation.recommendation import recommendation_metrics

runner = CliRunner()


_error_line = only_error_line


# -- object arrays of numbers ----------------------------------------------------------------
def test_object_integer_ids_become_int64_in_numeric_order():
    arr = ids(np.array([10, 2, 9], dtype=object), "items")
    assert arr.dtype == np.int64 and np.unique(arr).tolist() == [2, 9, 10]
    assert ids(np.array([np.int32(3), 1], dtype=object), "items").dtype == np.int64
    reals = ids(np.array([1, 2.5], dtype=object), "items")
    assert reals.dtype == np.float64 and reals.tolist() == [1.0, 2.5]


def test_object_ids_of_strings_bools_or_mixed_types_stay_text():
    assert ids(np.array(["a", 1], dtype=object), "items").dtype.kind == "U"
    assert ids(np.array([True, 1], dtype=object), "items").dtype.kind == "U"
    assert ids(np.array([2**70, 1], dtype=object), "items").dtype.kind == "U"


def test_object_float_ids_with_nan_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        ids(np.array([1.0, float("nan")], dtype=object), "items")


def test_item_features_follow_numeric_order_of_object_integer_ids():
    users = np.array([0, 0, 1, 1, 2, 2])
    items = np.array([10, 2, 10, 2, 9, 10], dtype=object)
    feats = np.array([[0.0], [1.0], [2.0]])  # rows for items 2, 9, 10 (np.unique order)
    model = CMLRecommender(dim=4, epochs=1).fit(users, items, item_features=feats)
    assert model.item_ids_.dtype == np.int64 and model.item_ids_.tolist() == [2, 9, 10]
    assert model.recommend([0], 3).dtype == np.int64


# -- float ids -------------------------------------------------------------------------------
def _float_id_model(tmp_path):
    users = np.repeat(np.arange(4), 4)
    items = np.array([17, 2, 9, 4, 2, 9, 4, 17, 9, 4, 17, 2, 4, 17, 2, 9])
    times = np.tile(np.arange(4), 4)
    data = tmp_path / "num.csv"
    data.write_text(
        "user,item,rating,timestamp\n"
        + "".join(f"{u},{i},1,{t}\n" for u, i, t in zip(users, items, times, strict=True))
    )
    train = times < 3
    model = CMLRecommender(dim=4, epochs=1).fit(
        users[train].astype(float), items[train].astype(float), holdout="last"
    )
    model.save(tmp_path / "m_float")
    return data, tmp_path / "m_float"


def test_evaluate_matches_float_ids_of_the_model_with_integer_ids_of_the_file(tmp_path):
    data, model_dir = _float_id_model(tmp_path)
    res = runner.invoke(
        app,
        [
            "recommend",
            "evaluate",
            str(model_dir),
            "--data",
            str(data),
            "-k",
            "2",
            "--out",
            str(tmp_path / "r.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "skipped_unknown  0" in res.output and "users            4" in res.output


def test_top_prints_whole_float_ids_as_integers(tmp_path):
    _, model_dir = _float_id_model(tmp_path)
    res = runner.invoke(app, ["recommend", "top", str(model_dir), "-u", "0", "-k", "4"])
    assert res.exit_code == 0, res.output
    user, listed = res.stdout.strip().split("\t")
    assert user == "0" and listed.split() and set(listed.split()) <= {"17", "2", "9", "4"}


def _int_model_with_features():
    users = np.repeat(np.arange(4), 3)
    items = np.tile(np.arange(3), 4)
    return CMLRecommender(dim=4, epochs=1).fit(users, items, item_features=np.eye(3))


def test_add_items_refuses_fractional_ids_on_a_model_of_integer_ids():
    model = _int_model_with_features()
    with pytest.raises(TypeError, match="7.5"):
        model.add_items([7.5], np.ones((1, 3)))
    assert model.item_ids_.dtype == np.int64 and len(model.item_ids_) == 3


def test_add_items_keeps_integer_ids_when_given_whole_floats():
    model = _int_model_with_features().add_items([4.0], np.ones((1, 3)))
    assert model.item_ids_.dtype == np.int64 and model.item_ids_.tolist() == [0, 1, 2, 4]


# -- non-finite ratings and timestamps ------------------------------------------------------
@pytest.mark.parametrize(
    "column,value",
    [("rating", "nan"), ("rating", "-inf"), ("timestamp", "inf"), ("timestamp", "NaN")],
)
def test_non_finite_ratings_and_timestamps_are_refused_naming_the_line(tmp_path, column, value):
    rows = [["u1", "i1", "3", "1"], ["u1", "i2", "3", "2"], ["u2", "i1", "3", "3"]]
    rows[1][2 if column == "rating" else 3] = value
    path = tmp_path / "d.csv"
    path.write_text("user,item,rating,timestamp\n" + "".join(",".join(r) + "\n" for r in rows))
    with pytest.raises(
        ValueError,
        match=rf"line 3: column '{column}' has the non-finite "
        rf"value '{value}'",
    ):
        read_interactions(path)


def test_train_refuses_nan_ratings_in_one_line(tmp_path):
    path = tmp_path / "nanr.csv"
    path.write_text(
        "user,item,rating,timestamp\nu1,i1,nan,1\nu1,i2,NaN,2\nu2,i1,3,3\nu2,i2,3,4\nu2,i3,3,5\n"
    )
    res = runner.invoke(
        app,
        [
            "recommend",
            "train",
            str(path),
            "--out",
            str(tmp_path / "m"),
            "--epochs",
            "1",
            "--dim",
            "4",
        ],
    )
    _error_line(res, "line 2", "'rating'", "'nan'")
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


# -- random_state and k ----------------------------------------------------------------------
USERS, ITEMS = np.repeat(np.arange(10), 4), np.tile(np.arange(8), 5)


@pytest.mark.parametrize("random_state", [None, np.random.RandomState(3)])
def test_random_state_none_or_a_random_state_fits(random_state):
    model = CMLRecommender(dim=4, epochs=1, random_state=random_state).fit(USERS, ITEMS)
    assert model.user_embeddings_.shape == (10, 4)


def test_random_state_randomstate_seeds_reproducibly():
    a = CMLRecommender(dim=4, epochs=1, random_state=np.random.RandomState(3)).fit(USERS, ITEMS)
    b = CMLRecommender(dim=4, epochs=1, random_state=np.random.RandomState(3)).fit(USERS, ITEMS)
    assert np.array_equal(a.item_embeddings_.numpy(), b.item_embeddings_.numpy())


@pytest.mark.parametrize("random_state", [2.5, "1", True, -1])
def test_random_state_of_another_kind_is_refused(random_state):
    with pytest.raises(
        ValueError, match=r"random_state must be None, an integer in \[0, 2\*\*63\)"
    ):
        CMLRecommender(dim=4, epochs=1, random_state=random_state).fit(USERS, ITEMS)


def test_large_integer_seed_still_fits():
    CMLRecommender(dim=4, epochs=1, random_state=2**40).fit(USERS, ITEMS)


@pytest.mark.parametrize("k", [True, 2.0, "2", None])
def test_recommendation_metrics_refuses_a_k_that_is_not_an_integer(k):
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        recommendation_metrics(np.array([[1, 2, 3]]), [[1]], 5, k)


def test_recommendation_metrics_takes_numpy_integer_k():
    out = recommendation_metrics(np.array([[1, 2, 3]]), [[2]], 5, np.int64(2))
    assert out["recall_at_2"] == 1.0
