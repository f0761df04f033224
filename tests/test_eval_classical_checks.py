"""Input checks and warnings of the evaluation metrics and the classical learners:
``classical evaluate`` warns on data without held-out items as ``classical fit`` does,
MLKR refuses constant targets, integer embeddings work in every section, clustering
checks its own inputs, a k beyond the gallery is warned about, and ``crossval --folds``
names its option."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from numpy.testing import assert_equal
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()
NO_HELDOUT = "has no held-out items"


def blobs(n_per: int = 12, classes: int = 3, dim: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per)
    x = rng.normal(size=(len(y), dim)) + 4.0 * np.eye(classes, dim)[y]
    return x, y


# 1. classical evaluate warns when the scores are on the fitted items


def test_classical_evaluate_warns_without_heldout_items(tmp_path):
    x, y = blobs()
    plain = tmp_path / "plain.npz"
    np.savez(plain, embeddings=x, labels=y)
    res = runner.invoke(app, ["classical", "fit", str(plain), "-m", "lfda", "--out",
                              str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert NO_HELDOUT in res.output and "the table below" in res.output
    for extra, shown in (([], "table"), (["--json"], "JSON")):
        res = runner.invoke(app, ["classical", "evaluate", str(plain), "--metric",
                                  str(tmp_path / "m"), *extra])
        assert res.exit_code == 0, res.output
        assert res.output.count(NO_HELDOUT) == 1, res.output
        assert f"the {shown} below scores the metric on the items it was fitted on" in res.output
        if shown == "JSON":  # the warning is on stderr: stdout stays JSON
            assert set(json.loads(res.stdout)) == {"raw", "learned"}
    held = tmp_path / "held.npz"  # with held-out arrays: no warning
    np.savez(held, embeddings=x, labels=y, heldout_embeddings=x[::2] + 0.1,
             heldout_labels=y[::2])
    res = runner.invoke(app, ["classical", "evaluate", str(held), "--metric", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert NO_HELDOUT not in res.output


# 2. MLKR refuses constant targets, as the other learners refuse one class


@pytest.mark.parametrize("targets", [np.ones(30), np.zeros(30, dtype=int), np.ones((30, 2))])
def test_mlkr_refuses_constant_targets(targets):
    from dmlkit.classical import MLKR

    x, _ = blobs(10)
    with pytest.raises(ValueError, match=r"at least 2 distinct values.*got 1 distinct"):
        MLKR(device="cpu").fit(x, targets)


def test_mlkr_still_fits_two_distinct_targets():
    from dmlkit.classical import MLKR

    x, y = blobs(10)
    model = MLKR(max_iter=20, device="cpu").fit(x, (y == 0).astype(float))
    assert model.n_iter_ >= 1 and model.components_.shape == (4, 4)


def test_fit_on_embeddings_mlkr_refuses_one_class_like_nca():
    from dmlkit.classical.frozen import fit_on_embeddings

    x, _ = blobs(10)
    messages = []
    for method in ("nca", "mlkr"):
        with pytest.raises(ValueError) as err:
            fit_on_embeddings(x, np.zeros(30, dtype=int), method)
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    assert messages[1] == ("metric learning from labels needs at least 2 classes, got 1 "
                           "class(es): [0]")


def test_classical_fit_mlkr_one_class_keeps_an_earlier_fit(tmp_path):
    x, y = blobs()
    good, one = tmp_path / "good.npz", tmp_path / "one.npz"
    np.savez(good, embeddings=x, labels=y)
    np.savez(one, embeddings=x, labels=np.zeros_like(y))
    out = tmp_path / "m"
    res = runner.invoke(app, ["classical", "fit", str(good), "-m", "lfda", "--out", str(out)])
    assert res.exit_code == 0, res.output
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res = runner.invoke(app, ["classical", "fit", str(one), "-m", "mlkr", "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert "error: metric learning from labels needs at least 2 classes" in res.output
    assert "Traceback" not in res.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# 3. integer embeddings: one rule (read as float32) for every section


@pytest.mark.filterwarnings("ignore:TAR at FAR")

def test_integer_embeddings_work_in_every_section_as_float32():
    from dmlkit.evaluation import evaluate_embeddings

    x, y = blobs()
    x_int = np.round(x * 10).astype(np.int64)
    for section in ("retrieval", "clustering", "verification"):
        got = evaluate_embeddings(x_int, y, sections=[section])[section]
        want = evaluate_embeddings(x_int.astype(np.float32), y, sections=[section])[section]
        assert_equal(got, want)  # (NaN TAR at a FAR the pairs cannot resolve: equal too)
    got = evaluate_embeddings(x_int[:18], y[:18], x_int[18:], y[18:], sections=["retrieval"])
    want = evaluate_embeddings(x_int[:18].astype(np.float32), y[:18],
                               x_int[18:].astype(np.float32), y[18:], sections=["retrieval"])
    assert_equal(got["retrieval"], want["retrieval"])


# 4. clustering_metrics checks its own inputs


def test_clustering_metrics_names_a_negative_seed():
    from dmlkit.evaluation import clustering_metrics, kmeans_labels

    x, y = blobs()
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match=rf"seed must be an integer >= 0, got {bad}"):
            clustering_metrics(x, y, seed=bad)
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0, got -1"):
        kmeans_labels(x, 3, seed=-1)


def test_clustering_metrics_names_nan_embeddings():
    from dmlkit.evaluation import clustering_metrics

    x, y = blobs()
    x[5, 2] = np.nan
    with pytest.raises(ValueError, match=r"embeddings holds NaN or infinite values in 1 of "
                                         r"36 rows \(row 5\)"):
        clustering_metrics(x, y)


def test_clustering_metrics_warns_on_one_class_once_through_evaluate():
    from dmlkit.evaluation import clustering_metrics, evaluate_embeddings

    x, _ = blobs()
    one = np.zeros(len(x), dtype=int)
    with pytest.warns(UserWarning, match="clustering metrics are trivial: all 36 labels are "
                                         "one class"):
        clustering_metrics(x, one)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate_embeddings(x, one, sections=["clustering"])
    trivial = [w for w in caught if "clustering metrics are trivial" in str(w.message)]
    assert len(trivial) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # two classes: no warning
        clustering_metrics(*blobs())


# 5. retrieval: a k asked for beyond the references is warned about


def test_retrieval_warns_once_when_k_exceeds_the_references():
    from dmlkit.evaluation import retrieval_metrics

    x, y = blobs(3)  # 9 items: 8 references each, leave-one-out
    with pytest.warns(UserWarning, match=r"k=100 exceeds the 8 reference\(s\).*"
                                         r"precision_at_100 is still relevant / 100") as rec:
        result = retrieval_metrics(x, y, k=100)
    assert len([w for w in rec if "exceeds" in str(w.message)]) == 1
    assert result["precision_at_100"] == pytest.approx(2 / 100)
    with pytest.warns(UserWarning, match=r"k=\[10, 100\] exceeds the 9 reference"):
        retrieval_metrics(x[:3], y[:3], x, y, k=(1, 9, 10, 100))


def test_retrieval_default_k_never_warns_on_small_sets():
    from dmlkit.evaluation import evaluate_embeddings, retrieval_metrics

    x, y = blobs(2)  # 6 items: 5 references, below the default cutoff 8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        retrieval_metrics(x, y)
        retrieval_metrics(x, y, k=4)  # within the references
        evaluate_embeddings(x, y, sections=["retrieval"])


# 6. crossval --folds names its option


@pytest.mark.parametrize("folds", ["1", "0"])
def test_crossval_folds_below_two_names_the_option(tmp_path, folds):
    config = tmp_path / "cv.yaml"
    config.write_text("name: cv\n")
    res = runner.invoke(app, ["crossval", str(config), "--folds", folds])
    assert res.exit_code == 1, res.output
    assert f"error: --folds must be >= 2, got {folds}" in res.output
    assert "Traceback" not in res.output


def test_class_folds_library_message_is_unchanged():
    from dmlkit.data.class_folds import class_folds

    with pytest.raises(ValueError, match=r"class folds need k >= 2, got 1"):
        class_folds(list(range(8)), 1)
