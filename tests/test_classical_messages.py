"""Classical learners' messages: k-NN accuracy and held-out classes unseen in training,
init='lda' beyond n_classes - 1 components, and ``y`` / sparse / mixed-type labels."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import scipy.sparse
from sklearn.datasets import load_iris
from sklearn.neighbors import KNeighborsClassifier
from typer.testing import CliRunner

from dmlkit.classical import ITML, LFDA, LMNN, MLKR, NCA, ITMLSupervised
from dmlkit.classical.frozen import EmbeddedSplits, evaluate_metric, fit_on_embeddings
from dmlkit.cli.main import app

runner = CliRunner()


def _digits_like(seed: int = 0, per: int = 12, dim: int = 6):
    """Ten separated classes: train has classes 0-4, returned with all ten's rows."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(10), per)
    x = rng.normal(size=(y.size, dim)) + 4.0 * np.eye(10, dim)[y % dim] * (1 + y[:, None] // 6)
    return x, y


def _caught(fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return out, [str(w.message) for w in caught]


# -- 1. k-NN accuracy with held-out classes unseen in training -------------------------------

def test_disjoint_held_out_classes_say_why_knn_accuracy_is_missing():
    x, y = _digits_like()
    tr = y < 5
    splits = EmbeddedSplits(x[tr], y[tr], x[~tr], y[~tr])
    out, messages = _caught(lambda: evaluate_metric(np.eye(x.shape[1]), splits))
    for part in ("raw", "learned"):
        assert set(out[part]) == {"precision_at_1", "r_precision", "map_at_r"}
    (message,) = set(messages)
    assert message.startswith("no k-NN accuracy")
    assert "[5, 6, 7, 8, 9]" in message and "never" in message
    assert "precision_at_1, r_precision and map_at_r" in message


def test_one_unseen_held_out_class_keeps_knn_accuracy_over_the_seen_ones():
    x, y = _digits_like(seed=1)
    tr, held = y < 5, (y >= 3) & (y <= 5)  # held-out classes 3, 4 (seen) and 5 (unseen)
    splits = EmbeddedSplits(x[tr], y[tr], x[held], y[held])
    out, messages = _caught(lambda: evaluate_metric(None, splits))
    seen = y[held] < 5
    expected = KNeighborsClassifier(n_neighbors=3).fit(x[tr], y[tr]).score(
        x[held][seen], y[held][seen])
    assert "knn_accuracy" not in out["raw"]
    assert out["raw"]["knn_accuracy_seen_classes"] == pytest.approx(expected)
    (message,) = set(messages)
    assert f"over the {int(seen.sum())} of {int(held.sum())} held-out items" in message
    assert "1 class(es) never seen in training [5]" in message


def test_unseen_string_classes_are_named_as_given():
    x, y = _digits_like(seed=2)
    names = np.array([f"c{i}" for i in range(10)])
    tr = y < 5
    splits = EmbeddedSplits(x[tr], y[tr], x[~tr], y[~tr], classes=names)
    _, messages = _caught(lambda: evaluate_metric(None, splits))
    assert "['c5', 'c6', 'c7', 'c8', 'c9']" in messages[0]


def test_cli_evaluate_warns_when_no_held_out_class_was_trained_on(tmp_path):
    x, y = _digits_like(seed=3)
    tr = y < 5
    data = tmp_path / "disjoint.npz"
    np.savez(data, embeddings=x[tr], labels=y[tr], heldout_embeddings=x[~tr],
             heldout_labels=y[~tr])
    out = tmp_path / "metric"
    res = runner.invoke(app, ["classical", "fit", str(data), "-m", "lfda", "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["classical", "evaluate", str(data), "--metric", str(out),
                              "--json"])
    assert res.exit_code == 0, res.output
    assert "knn_accuracy" not in json.loads(res.stdout)["learned"]
    assert "warning: no k-NN accuracy: none of the 60 held-out items" in res.stderr


def test_cli_table_labels_the_seen_classes_accuracy(tmp_path):
    x, y = _digits_like(seed=4)
    tr, held = y < 5, y >= 4
    data = tmp_path / "partial.npz"
    np.savez(data, embeddings=x[tr], labels=y[tr], heldout_embeddings=x[held],
             heldout_labels=y[held])
    out = tmp_path / "metric"
    res = runner.invoke(app, ["classical", "fit", str(data), "-m", "lfda", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "knn_accuracy_seen_classes" in res.stdout
    assert "warning: knn_accuracy_seen_classes is k-NN accuracy over the 12 of 72" in res.stderr


# -- 2. init='lda' beyond n_classes - 1 components -------------------------------------------

@pytest.mark.parametrize("cls", [NCA, LMNN])
def test_lda_init_names_its_component_limit(cls):
    X, y = load_iris(return_X_y=True)
    with pytest.raises(ValueError) as err:
        cls(init="lda", n_components=3).fit(X, y)
    message = str(err.value)
    assert "init='lda' gives at most" in message and "= 2 components" in message
    assert "init='pca' or 'auto'" in message


def test_lda_init_within_its_limit_still_fits():
    X, y = load_iris(return_X_y=True)
    assert NCA(init="lda", n_components=2).fit(X, y).components_.shape == (2, 4)


# -- 3. y missing, sparse pairs, labels of mixed types ---------------------------------------

def _pairs():
    rng = np.random.default_rng(0)
    return rng.normal(size=(10, 2, 4)), np.array([1, -1] * 5)


def test_itml_without_pair_labels_says_they_are_required():
    pairs, _ = _pairs()
    with pytest.raises(ValueError,
                       match=r"ITML\.fit requires y .*give y \(the pair labels.*\+1 similar"):
        ITML().fit(pairs, None)


def test_itml_refuses_sparse_input_and_says_to_densify():
    X, y = load_iris(return_X_y=True)
    with pytest.raises(TypeError, match=r"sparse input is not supported.*\.toarray\(\)"):
        ITML().fit(scipy.sparse.csr_matrix(X), y)


def test_itml_pair_labels_of_mixed_types_are_named():
    pairs, _ = _pairs()
    y = np.array([1, "a"] * 5, dtype=object)
    with pytest.raises(ValueError, match=r"pair labels\) mix types: number 1, string 'a'"):
        ITML().fit(pairs, y)


SUPERVISED = [NCA, LMNN, LFDA, ITMLSupervised]


@pytest.mark.parametrize("cls", SUPERVISED)
def test_class_labels_of_mixed_types_are_named(cls):
    X, _ = load_iris(return_X_y=True)
    y = np.array([1, "a", 2] * 50, dtype=object)
    with pytest.raises(ValueError, match=r"mix types: number 1, string 'a'; give all numbers "
                                         r"or all strings"):
        cls().fit(X, y)


@pytest.mark.parametrize("cls", SUPERVISED)
def test_missing_class_labels_are_named(cls):
    X, _ = load_iris(return_X_y=True)
    with pytest.raises(ValueError,
                       match=rf"{cls.__name__}\.fit requires y .*give y \(class labels"):
        cls().fit(X, None)


def test_mlkr_targets_of_mixed_types_are_named():
    X, _ = load_iris(return_X_y=True)
    with pytest.raises(ValueError, match=r"targets\) mix types.*give numbers"):
        MLKR().fit(X, np.array([1, "a", 2] * 50, dtype=object))


def test_fit_on_embeddings_mlkr_names_mixed_labels():
    X, _ = load_iris(return_X_y=True)
    with pytest.raises(ValueError, match=r"mix types: number 1, string 'a'"):
        fit_on_embeddings(X, np.array([1, "a", 2] * 50, dtype=object), "mlkr")


def test_object_labels_of_one_kind_still_fit():
    X, y = load_iris(return_X_y=True)
    names = np.array(["setosa", "versicolor", "virginica"], dtype=object)[y]
    assert LFDA().fit(X, names).components_.shape[1] == 4
