"""CMLRecommender and interaction files: header names, empty and padding-valued ids,
duplicate new items, max_norm, kit kinds on save, and the missing-model message."""

from __future__ import annotations

import numpy as np
import pytest

from dmlkit.apps import CMLRecommender, MetricOutlierDetector
from dmlkit.data.interactions import leave_last_out, read_interactions
from dmlkit.index import ExactIndex, load_index
from dmlkit.index.io import IndexFormatError


def _fit(users=("u", "u", "v", "v"), items=("a", "b", "b", "c"), **kw):
    return CMLRecommender(epochs=1, dim=3, **kw).fit(list(users), list(items))


# -- reading interactions ---------------------------------------------------------------
@pytest.mark.parametrize("header", ["userId,movieId,rating,timestamp",
                                    "user_id,item_id,rating,timestamp",
                                    "user,item,rating,timestamp",
                                    "UserID,ItemID,Rating,Time",
                                    "movieId,userId,rating,timestamp"])
def test_usual_headers_are_recognised(tmp_path, header):
    swapped = header.startswith("movie")
    rows = [("1", "10", "4", "100"), ("1", "11", "3.5", "101"), ("2", "10", "5", "102")]
    lines = [",".join((i, u, r, t) if swapped else (u, i, r, t)) for u, i, r, t in rows]
    (tmp_path / "r.csv").write_text(header + "\n" + "\n".join(lines) + "\n")
    data = read_interactions(tmp_path / "r.csv")
    assert data.users.tolist() == ["1", "1", "2"]
    assert data.items.tolist() == ["10", "11", "10"]
    assert data.ratings.tolist() == [4, 3.5, 5] and data.timestamps.tolist() == [100, 101, 102]


def test_movielens_ids_only_header_is_not_data(tmp_path):
    (tmp_path / "r.csv").write_text("userId,movieId\n1,10\n2,11\n")
    data = read_interactions(tmp_path / "r.csv")
    assert data.users.tolist() == ["1", "2"] and data.items.tolist() == ["10", "11"]


@pytest.mark.parametrize("text, column", [
    ("cust,prod,stars,when\n1,10,4,100\n2,11,3,101\n", "rating and timestamp"),
    ("cust,prod\n1,10\n2,11\n3,10\n", "user and item"),
])
def test_an_unrecognised_header_is_refused_not_read_as_data(tmp_path, text, column):
    (tmp_path / "r.csv").write_text(text)
    with pytest.raises(ValueError, match=f"looks like a header.*{column} column"):
        read_interactions(tmp_path / "r.csv")


def test_a_bad_number_names_its_line(tmp_path):
    (tmp_path / "r.csv").write_text("user,item,rating\na,b,4\na,c,five\n")
    with pytest.raises(ValueError, match="line 3: column 'rating' has the non-numeric value "
                                         "'five'"):
        read_interactions(tmp_path / "r.csv")


@pytest.mark.parametrize("text, line, what", [("u1,i1,5,1\nu1,,5,2\n", 2, "item"),
                                              ("user,item\n,i1\n", 2, "user")])
def test_empty_ids_are_refused(tmp_path, text, line, what):
    (tmp_path / "r.csv").write_text(text)
    with pytest.raises(ValueError, match=f"line {line}: empty {what} id"):
        read_interactions(tmp_path / "r.csv")


def test_leave_last_out_without_timestamps_says_what_to_do(tmp_path):
    (tmp_path / "r.csv").write_text("u1,i1\nu1,i2\n")
    with pytest.raises(ValueError, match="2 of 2 have none: give data with a timestamp"):
        leave_last_out(read_interactions(tmp_path / "r.csv"))


# -- the recommender ---------------------------------------------------------------------
@pytest.mark.parametrize("items", [[1, -1, 0, 0, 1, 2][:5], [-1.0, 0.0, 0.0, 1.0, 2.0],
                                   ["a", "", "b", "b", "c"]])
def test_item_ids_equal_to_the_padding_are_refused(items):
    with pytest.raises(ValueError, match="pads recommendation lists"):
        CMLRecommender(epochs=1, dim=2).fit([1, 1, 2, 2, 3], items)


def test_padding_marks_only_missing_items():
    model = CMLRecommender(epochs=1, dim=2).fit([1, 1, 2, 2, 3], [5, 0, 0, 1, 2])
    row = model.recommend([1], k=4)[0]
    assert row[-1] == -1 and sorted(row[row != -1].tolist()) == [1, 2]
    # unsigned ids come back signed, so that -1 can pad them
    model = CMLRecommender(epochs=1, dim=2).fit([1, 1, 2], np.array([3, 4, 5], np.uint8))
    assert model.recommend([1], k=3)[0].tolist()[1:] == [-1, -1]


def test_add_items_refuses_duplicates_and_padding():
    model = CMLRecommender(epochs=1, dim=3).fit(
        ["u", "u", "v"], ["a", "b", "c"], item_features=np.eye(3, 4))
    with pytest.raises(ValueError, match="'new' is given 2 times"):
        model.add_items(["new", "new"], np.ones((2, 4)))
    with pytest.raises(ValueError, match="pads recommendation lists"):
        model.add_items([""], np.ones((1, 4)))
    assert len(model.item_ids_) == 3
    model.add_items(["n1", "n2"], np.ones((2, 4)))
    assert model.item_ids_.tolist()[-2:] == ["n1", "n2"]


@pytest.mark.parametrize("max_norm", [0, -1, 0.0, float("nan"), "1", True])
def test_max_norm_must_be_positive(max_norm):
    with pytest.raises(ValueError, match="max_norm must be"):
        _fit(max_norm=max_norm)


def test_an_unbounded_max_norm_is_fine():
    assert np.isfinite(_fit(max_norm=float("inf")).user_embeddings_.numpy()).all()


# -- saving ------------------------------------------------------------------------------
def test_a_kit_never_replaces_a_kit_of_another_kind(tmp_path):
    det = MetricOutlierDetector("knn").fit(np.random.default_rng(0).standard_normal((12, 3)))
    rec = _fit()
    det.save(tmp_path / "det")
    rec.save(tmp_path / "rec")
    with pytest.raises(FileExistsError, match="holds a saved MetricOutlierDetector, not a "
                                              "CMLRecommender"):
        rec.save(tmp_path / "det")
    with pytest.raises(FileExistsError, match="holds a saved CMLRecommender, not a "
                                              "MetricOutlierDetector"):
        det.save(tmp_path / "rec")
    MetricOutlierDetector.load(tmp_path / "det")
    CMLRecommender.load(tmp_path / "rec")
    rec.save(tmp_path / "rec")  # the same kind is replaced
    det.save(tmp_path / "det")


def test_an_index_may_still_replace_another_kind_of_index(tmp_path):
    pytest.importorskip("faiss")
    from dmlkit.index import FaissIndex

    x = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    exact = ExactIndex(4)
    exact.add(x)
    exact.save(tmp_path / "idx")
    other = FaissIndex(4, factory="HNSW8")
    other.add(x)
    other.save(tmp_path / "idx")
    assert load_index(tmp_path / "idx").ntotal == 20


def test_loading_a_missing_model_speaks_of_a_saved_model(tmp_path):
    with pytest.raises(IndexFormatError, match="is not a saved model directory \\(no "
                                               "manifest.json: it does not exist\\)"):
        CMLRecommender.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexFormatError, match="is not a saved model directory \\(no "
                                               "manifest.json\\)"):
        CMLRecommender.load(tmp_path / "empty")
    with pytest.raises(IndexFormatError, match="not an index directory"):
        load_index(tmp_path / "missing")
