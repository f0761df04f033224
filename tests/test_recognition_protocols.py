"""Protocols and edge cases of ``dmlkit verify / identify / fewshot``: verification split by
identity, pair files, closed-set and unknowns-only identification, uncovered few-shot
queries."""

import json
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()


def people(n_ids, per_id, d=8, noise=0.2, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, d)) * 2
    y = np.repeat(np.arange(n_ids), per_id)
    return (centres[y] + noise * rng.normal(size=(y.size, d))).astype(np.float32), y


@pytest.mark.parametrize("per_id", [2, 3])
def test_verify_splits_identities_so_few_items_per_identity_work(tmp_path, per_id):
    x, y = people(60, per_id)
    np.savez(tmp_path / "d.npz", x=x, labels=y)
    res = runner.invoke(app, ["verify", "--data", str(tmp_path / "d.npz"), "--bootstrap", "5",
                              "-o", str(tmp_path / "v.json")])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "v.json").read_text())
    assert result["protocol"] == "identities"
    assert result["fit_identities"] == result["test_identities"] == 30
    assert result["num_same"] == 30 * per_id * (per_id - 1) // 2  # every test pair, unseen ids
    assert result["auc"] > 0.95


def test_split_identities_keeps_identities_apart_with_pairs_on_both_sides():
    from dmlkit.apps.splits import split_identities

    y = np.array([0, 0, 1, 1, 2, 3, 4, 5])  # two identities with pairs, four singletons
    fit, test = split_identities(y, 0.5, seed=0)
    assert not set(y[fit]) & set(y[test]) and len(fit) + len(test) == len(y)
    for side in (fit, test):
        ids, counts = np.unique(y[side], return_counts=True)
        assert ids.size >= 2 and (counts >= 2).any()


def test_verify_explains_what_a_split_by_identity_needs(tmp_path):
    np.savez(tmp_path / "single.npz", x=np.eye(10, dtype=np.float32), labels=np.arange(10))
    res = runner.invoke(app, ["verify", "--data", str(tmp_path / "single.npz")])
    assert res.exit_code == 1
    assert "10 identities, 0 of them with two or more items" in res.output
    assert "--calibrate" in res.output and "raise max_pairs" not in res.output
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 4), np.float32), labels=np.zeros(0, int))
    res = runner.invoke(app, ["verify", "--data", str(tmp_path / "empty.npz")])
    assert res.exit_code == 1 and "holds no items" in res.output


def test_pair_files_with_decimal_rows_and_header_only(tmp_path):
    from dmlkit.cli.recognition import read_pairs

    (tmp_path / "p.csv").write_text("0.0,1.0,1\n2,3,0\n")
    np.testing.assert_array_equal(read_pairs(tmp_path / "p.csv"), [[0, 1, 1], [2, 3, 0]])
    (tmp_path / "h.csv").write_text("i,j,same\n")
    with pytest.raises(ValueError, match="header .* but no pairs"):
        read_pairs(tmp_path / "h.csv")
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        read_pairs(tmp_path / "e.csv")
    (tmp_path / "f.csv").write_text("0.5,1\n")
    with pytest.raises(ValueError, match="integer columns"):
        read_pairs(tmp_path / "f.csv")


@pytest.fixture
def gallery_query(tmp_path):
    x, y = people(8, 10)
    np.savez(tmp_path / "g.npz", embeddings=x[y < 5][::2], labels=y[y < 5][::2])
    np.savez(tmp_path / "q.npz", embeddings=x, labels=y)
    np.savez(tmp_path / "u.npz", embeddings=x[y >= 5], labels=y[y >= 5])
    return tmp_path


def test_identify_closed_set_never_rejects(gallery_query):
    tmp = gallery_query
    res = runner.invoke(app, ["identify", "--gallery", str(tmp / "g.npz"), "--query",
                              str(tmp / "q.npz"), "--closed-set", "-o", str(tmp / "i.json")])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp / "i.json").read_text())
    assert result["open_set"] is False and result["threshold"] is None
    assert result["far_at_threshold"] == 1.0  # every unknown is taken for someone
    assert result["dir_at_threshold"] == result["rank1"]


def test_identify_measures_the_false_alarm_rate_of_unknowns_alone(gallery_query):
    tmp = gallery_query
    res = runner.invoke(app, ["identify", "--gallery", str(tmp / "g.npz"), "--query",
                              str(tmp / "u.npz"), "--target-far", "0.1",
                              "-o", str(tmp / "i.json")])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp / "i.json").read_text())
    assert result["num_known"] == 0 and result["num_unknown"] == 30
    assert 0.0 <= result["far_at_threshold"] <= 1.0 and "rank1" not in result


def test_fewshot_reports_queries_of_classes_missing_from_the_support(tmp_path):
    x, y = people(6, 10)
    np.savez(tmp_path / "s.npz", x=x[y < 4][::5], labels=y[y < 4][::5])
    np.savez(tmp_path / "q.npz", x=x, labels=y)
    res = runner.invoke(app, ["fewshot", "--support", str(tmp_path / "s.npz"), "--query",
                              str(tmp_path / "q.npz"), "-o", str(tmp_path / "f.json")])
    assert res.exit_code == 0, res.output
    assert "20 queries are of classes the support does not hold ([4, 5])" in res.output
    result = json.loads((tmp_path / "f.json").read_text())
    assert result["num_uncovered"] == 20
    assert result["accuracy_covered"] == pytest.approx(result["accuracy"] * 60 / 40)
    np.savez(tmp_path / "one.npz", x=x[y == 0], labels=y[y == 0])
    res = runner.invoke(app, ["fewshot", "--support", str(tmp_path / "one.npz"), "--query",
                              str(tmp_path / "q.npz"), "-o", str(tmp_path / "f.json")])
    assert res.exit_code == 1 and "at least two classes" in res.output


def test_a_gallery_of_one_item_per_identity_raises_no_sklearn_warning():
    from dmlkit.apps import Identifier

    x, y = people(30, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Identifier(target_far=0.1).fit(x, y)


def test_pair_files_warn_of_self_pairs_and_name_ragged_rows_plainly(tmp_path, capsys):
    from dmlkit.cli.recognition import read_pairs

    (tmp_path / "s.csv").write_text("i,j,same\n0,1,1\n2,2,1\n3,4,0\n")
    np.testing.assert_array_equal(read_pairs(tmp_path / "s.csv"),
                                  [[0, 1, 1], [2, 2, 1], [3, 4, 0]])
    err = capsys.readouterr().err
    assert "1 pair(s) compare an item with itself (row 2 of the pairs: 2,2)" in err
    (tmp_path / "r.csv").write_text("0,1,1\n2,3\n")
    with pytest.raises(ValueError, match="expected integer columns") as info:
        read_pairs(tmp_path / "r.csv")
    assert "usecols" not in str(info.value)
