"""A first data line is read as data (ids that begin with a column name, numbers where the
rating and timestamp go), missing timestamps are refused once (by the library, in the
CLI's words), and integers no class folder is named after are ids."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.data.dataset import ArrayDataset
from dmlkit.data.interactions import leave_last_out, read_interactions
from dmlkit.data.splits import class_ids


# 1. a first line is a header only when it names its columns whole ----------------------------
@pytest.mark.parametrize("text, users, items", [
    ("user_5,movie_12,4,100\nuser_5,movie_13,3,101\nuser_6,movie_12,5,102\n",
     ["user_5", "user_5", "user_6"], ["movie_12", "movie_13", "movie_12"]),
    ("user1,item1\nuser1,item2\nuser2,item1\n",
     ["user1", "user1", "user2"], ["item1", "item2", "item1"]),
    ("userId,movieId,4,100\nu,m,3,101\n", ["userId", "u"], ["movieId", "m"]),
    ("user,item,4,100\nuser,other,3,101\n", ["user", "user"], ["item", "other"]),
    ("user_a\titem_b\t5\t7\nuser_c\titem_d\t4\t8\n", ["user_a", "user_c"], ["item_b", "item_d"]),
])
def test_a_first_line_of_data_is_not_taken_for_a_header(tmp_path, text, users, items):
    (tmp_path / "r.csv").write_text(text)
    data = read_interactions(tmp_path / "r.csv")
    assert data.users.tolist() == users and data.items.tolist() == items


def test_a_header_of_prefixed_names_is_refused_not_read(tmp_path):
    (tmp_path / "r.csv").write_text("user_name,item_code,rating,timestamp\na,b,4,1\nc,d,5,2\n")
    with pytest.raises(ValueError, match="looks like a header.*rating and timestamp column"):
        read_interactions(tmp_path / "r.csv")


def test_whole_names_and_inter_headers_are_still_headers(tmp_path):
    (tmp_path / "a.inter").write_text("user_id:token\titem_id:token\trating:float\t"
                                      "timestamp:float\n1\t10\t4\t100\n2\t11\t3\t101\n")
    data = read_interactions(tmp_path / "a.inter")
    assert data.users.tolist() == ["1", "2"] and data.timestamps.tolist() == [100, 101]
    (tmp_path / "b.csv").write_text("userId,movieId,rating,timestamp,title\n1,10,4,100,x\n")
    assert read_interactions(tmp_path / "b.csv").items.tolist() == ["10"]


# 2. missing timestamps: one check, the library's, with the CLI's remedy ------------------------
def test_missing_timestamps_are_refused_by_the_library_with_the_callers_remedy(tmp_path):
    (tmp_path / "r.csv").write_text("u1,i1\nu1,i2\n")
    with pytest.raises(ValueError, match="2 of 2 have none: do this$"):
        leave_last_out(read_interactions(tmp_path / "r.csv"), remedy="do this")


def test_the_cli_reports_the_librarys_refusal_of_missing_timestamps(tmp_path):
    data = tmp_path / "ui.csv"
    data.write_text("u1,i1\nu1,i2\nu2,i1\nu2,i3\n")
    res = CliRunner().invoke(app, ["recommend", "train", str(data), "--out",
                                   str(tmp_path / "m"), "--epochs", "1"])
    assert res.exit_code == 1, res.output
    lines = [s for s in res.stderr.splitlines() if s.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: leave-last-out needs a timestamp for every interaction, "
                               "and 4 of 4 have none: give user,item,rating,timestamp data")
    assert "--holdout none" in lines[0]


# 3. numbered class folders: only ambiguous integers are refused -----------------------------
def _folders(names):
    names = sorted(names)
    labels = np.repeat(np.arange(len(names)), 2)
    return ArrayDataset(np.zeros((len(labels), 2), np.float32), labels, names,
                        [f"/r/{names[c]}/{i}.wav" for i, c in enumerate(labels)])


def test_integers_no_folder_is_named_after_are_ids():
    data = _folders(["19", "26", "27", "103"])
    assert class_ids(data, [0, 1], "train_classes") == [0, 1]
    assert data.class_names[:2] == ["103", "19"]


def test_the_advice_for_an_ambiguous_integer_works():
    data = _folders(["19", "26", "27", "103"])
    with pytest.raises(ValueError, match=r"19 is no class id \(the folder '19' is id 1\).*"
                                         r'train_classes: \["103", "19"\]') as err:
        class_ids(data, [0, 19], "train_classes")
    advice = err.value.args[0].rpartition("train_classes: ")[2]
    as_written = [s.strip('"') for s in advice.strip("[]").split(", ")]
    assert class_ids(data, as_written, "train_classes") == [0, 1]  # what 0 and 19 meant


def test_an_integer_whose_folder_has_another_id_is_still_refused():
    data = _folders([str(c) for c in range(12)])  # id 2 is the folder '10'
    with pytest.raises(ValueError, match=r"id 2 is the folder '10'.*"
                                         r'train_classes: \["0", "2"\]'):
        class_ids(data, [0, 2], "train_classes")
