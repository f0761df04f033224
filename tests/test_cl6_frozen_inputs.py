"""Frozen-embedding metrics: any label values, held-out checks before the fit, strict JSON,
checked metric files, the fingerprint warning, ITML's pair-only surface, n_components."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.base import clone
from typer.testing import CliRunner

from dmlkit.classical import ITML, LFDA, LMNN, MLKR, NCA, ITMLSupervised
from dmlkit.classical.frozen import (
    EmbeddedSplits,
    evaluate_metric,
    load_embeddings,
    load_metric,
    save_metric,
)
from dmlkit.cli.main import app

runner = CliRunner()


def _data(n_classes: int = 3, per: int = 10, dim: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), per)
    x = rng.normal(size=(n_classes * per, dim)) + 2.0 * y[:, None]
    return x, y


def _strict(text: str):
    """``json.loads`` that refuses NaN / Infinity (not JSON)."""
    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


# -- leave-one-out kNN votes on any label values --------------------------------------------

@pytest.mark.parametrize("shift", [-5, -1_000, 10**12])
def test_leave_one_out_knn_votes_on_any_label_values(shift):
    x, y = _data()
    rng = np.random.default_rng(3)
    x = x + rng.normal(scale=3.0, size=x.shape)  # some wrong votes, so ties matter
    base = evaluate_metric(np.eye(4), EmbeddedSplits(x, y, x, y))
    moved = evaluate_metric(np.eye(4), EmbeddedSplits(x, y + shift, x, y + shift))
    assert moved == base


def _naive_loo_knn_accuracy(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Leave-one-out k-NN by loops: the k nearest other items vote, a tie goes to the
    lowest label."""
    hits = 0
    for i in range(len(x)):
        d = np.linalg.norm(x - x[i], axis=1)
        order = [j for j in np.argsort(d, kind="stable") if j != i][:k]
        counts: dict[int, int] = {}
        for j in order:
            counts[int(y[j])] = counts.get(int(y[j]), 0) + 1
        best = max(counts.values())
        hits += min(lab for lab, c in counts.items() if c == best) == y[i]
    return hits / len(x)


def test_leave_one_out_tie_goes_to_the_lowest_label():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 2))
    y = rng.choice([4, -7, 10**12], size=40)  # noise labels: many 1-1 ties at k=2
    out = evaluate_metric(None, EmbeddedSplits(x, y, x, y), n_neighbors=2)
    assert out["raw"]["knn_accuracy"] == pytest.approx(_naive_loo_knn_accuracy(x, y, 2))


def test_fit_cli_on_negative_labels_without_heldout(tmp_path):
    x, y = _data()
    path = tmp_path / "neg.npz"
    np.savez(path, embeddings=x, labels=y - 5)
    res = runner.invoke(app, ["classical", "fit", str(path), "-m", "lfda", "--out",
                              str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert "knn_accuracy" in res.output


# -- held-out arrays checked when loaded, before any fit ------------------------------------

def _npz(tmp_path, **arrays):
    path = tmp_path / "e.npz"
    np.savez(path, **arrays)
    return path


def test_heldout_labels_of_another_length_are_refused_when_loaded(tmp_path):
    x, y = _data()
    path = _npz(tmp_path, embeddings=x, labels=y, heldout_embeddings=x[:12],
                heldout_labels=y[:11])
    with pytest.raises(ValueError, match=r"e\.npz: heldout_labels has 11 label\(s\) but "
                                         r"heldout_embeddings has 12 row\(s\)"):
        load_embeddings(path)


def test_training_labels_of_another_length_are_refused_by_file(tmp_path):
    x, y = _data()
    path = _npz(tmp_path, embeddings=x, labels=y[:-1])
    with pytest.raises(ValueError, match=r"e\.npz: labels has 29 label\(s\) but embeddings"):
        load_embeddings(path)


@pytest.mark.parametrize("present", ["heldout_embeddings", "heldout_labels"])
def test_half_a_heldout_split_is_refused(tmp_path, present):
    x, y = _data()
    path = _npz(tmp_path, embeddings=x, labels=y, **{present: x[:5] if "emb" in present
                                                     else y[:5]})
    with pytest.raises(ValueError, match=rf"e\.npz has {present} but no heldout_"):
        load_embeddings(path)


@pytest.mark.parametrize("key", ["embeddings", "heldout_embeddings"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_embeddings_are_refused_by_file_and_key(tmp_path, key, value):
    x, y = _data()
    arrays = {"embeddings": x.copy(), "labels": y, "heldout_embeddings": x[:12].copy(),
              "heldout_labels": y[:12]}
    arrays[key][2, 1] = value
    path = _npz(tmp_path, **arrays)
    with pytest.raises(ValueError, match=rf"e\.npz: {key} holds NaN or infinite values in 1 "
                                         r"of \d+ rows \(row 2\)"):
        load_embeddings(path)


def test_fit_cli_checks_the_heldout_split_before_fitting(tmp_path, monkeypatch):
    import dmlkit.classical.frozen as frozen

    def never(*args, **kwargs):
        raise AssertionError("fitted before the held-out split was checked")

    monkeypatch.setattr(frozen, "fit_on_embeddings", never)
    x, y = _data()
    path = _npz(tmp_path, embeddings=x, labels=y, heldout_embeddings=x[:12])
    res = runner.invoke(app, ["classical", "fit", str(path), "-m", "lmnn", "--out",
                              str(tmp_path / "m")])
    assert res.exit_code == 1, res.output
    assert "e.npz has heldout_embeddings but no heldout_labels" in res.output
    assert "Traceback" not in res.output


# -- NaN scores are written as null -----------------------------------------------------------

def _singleton_heldout(tmp_path):
    x, y = _data()
    return _npz(tmp_path, embeddings=x, labels=y, heldout_embeddings=x[[0, 10, 20]] + 0.1,
                heldout_labels=np.array([0, 1, 2]))  # one item per class: NaN retrieval


@pytest.mark.filterwarnings("ignore:retrieval metrics are NaN")
def test_metric_json_writes_nan_scores_as_null(tmp_path):
    path = _singleton_heldout(tmp_path)
    out = tmp_path / "m"
    res = runner.invoke(app, ["classical", "fit", str(path), "-m", "lfda", "--out", str(out)])
    assert res.exit_code == 0, res.output
    meta = _strict((out / "metric.json").read_text())
    assert meta["evaluation"]["raw"]["precision_at_1"] is None
    load_metric(out)  # reads back

    res = runner.invoke(app, ["classical", "evaluate", str(path), "--metric", str(out),
                              "--json"])
    assert res.exit_code == 0, res.output
    printed = _strict(res.stdout)
    assert printed["learned"]["map_at_r"] is None
    assert printed["raw"]["knn_accuracy"] == pytest.approx(1.0)


def test_save_metric_writes_strict_json_for_nan_extras(tmp_path):
    x, y = _data()
    learner = LFDA(device="cpu").fit(x, y)
    save_metric(learner, tmp_path, extra={"evaluation": {"raw": {"s": np.float32("nan")}}})
    meta = _strict((tmp_path / "metric.json").read_text())
    assert meta["evaluation"]["raw"]["s"] is None


# -- load_metric checks its files ---------------------------------------------------------------

def _metric_dir(tmp_path, components=None, meta_text=None):
    out = tmp_path / "bad"
    out.mkdir()
    np.save(out / "components.npy", np.eye(4) if components is None else components,
            allow_pickle=True)
    if meta_text is not None:
        (out / "metric.json").write_text(meta_text)
    return out


@pytest.mark.parametrize("text, kind", [("[]", "array"), ('"lfda"', "string"), ("3", "number"),
                                        ("null", "null")])
def test_metric_json_that_is_not_an_object_is_refused_by_file(tmp_path, text, kind):
    path = _metric_dir(tmp_path, meta_text=text)
    with pytest.raises(ValueError, match=rf"bad/metric\.json must hold a JSON object.*{kind}"):
        load_metric(path)


@pytest.mark.parametrize("text", ["{bad", '{"method": "lfda"', "\xff\xfe"])
def test_malformed_metric_json_is_refused_by_file(tmp_path, text):
    path = _metric_dir(tmp_path)
    (path / "metric.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=r"bad/metric\.json is not valid JSON"):
        load_metric(path)


@pytest.mark.parametrize("shape", [(0, 4), (4, 0), (0, 0)])
def test_empty_components_are_refused_by_file(tmp_path, shape):
    path = _metric_dir(tmp_path, components=np.zeros(shape))
    with pytest.raises(ValueError, match=r"bad/components\.npy must hold a finite float"):
        load_metric(path)


def test_unreadable_components_are_refused_by_file(tmp_path):
    path = _metric_dir(tmp_path, components=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"bad/components\.npy holds objects"):
        load_metric(path)
    np.save(path / "components.npy", np.eye(4))
    truncated = (path / "components.npy").read_bytes()[:40]
    (path / "components.npy").write_bytes(truncated)
    with pytest.raises(ValueError, match=r"bad/components\.npy cannot be read"):
        load_metric(path)


def test_evaluate_cli_reports_a_bad_metric_json_in_one_line(tmp_path):
    x, y = _data()
    data = _npz(tmp_path, embeddings=x, labels=y)
    path = _metric_dir(tmp_path, meta_text="[1, 2]")
    res = runner.invoke(app, ["classical", "evaluate", str(data), "--metric", str(path)])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    assert res.output.startswith("error: ") and "metric.json" in res.output


# -- data without a fingerprint against a metric with one ---------------------------------------

def test_evaluate_warns_when_the_data_has_no_fingerprint_to_check(tmp_path):
    x, y = _data()
    data = _npz(tmp_path, embeddings=x, labels=y)
    out = tmp_path / "m"
    res = runner.invoke(app, ["classical", "fit", str(data), "-m", "lfda", "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["classical", "evaluate", str(data), "--metric", str(out)])
    assert res.exit_code == 0 and "fingerprint" not in res.stderr  # nothing recorded, no claim
    meta = json.loads((out / "metric.json").read_text())
    meta["model_sha256"] = "ab" * 32
    (out / "metric.json").write_text(json.dumps(meta))
    res = runner.invoke(app, ["classical", "evaluate", str(data), "--metric", str(out)])
    assert res.exit_code == 0, res.output
    warning = [line for line in res.stderr.splitlines()
               if line.startswith("warning:") and "has no held-out items" not in line]
    assert len(warning) == 1  # (besides the no-held-out warning: these data have none)
    assert str(data) in warning[0] and str(out) in warning[0] and "fingerprint" in warning[0]
    assert "knn_accuracy" in res.stdout


# -- ITML: pairs in, points out -------------------------------------------------------------------

def _pairs():
    x, _ = _data(n_classes=2, per=10)
    return np.stack([x[:10], x[10:]], axis=1), np.array([1, -1] * 5)


def test_itml_fit_transform_fails_before_fitting():
    pairs, y = _pairs()
    est = ITML()
    with pytest.raises(TypeError, match=r"ITML learns from pairs; call fit\(pairs, y\) then "
                                        r"transform\(X\)"):
        est.fit_transform(pairs, y)
    assert not hasattr(est, "components_")


def test_itml_supervised_keeps_fit_transform():
    x, y = _data()
    est = ITMLSupervised(n_constraints=20, random_state=0)
    z = est.fit_transform(x, y)
    np.testing.assert_allclose(z, clone(est).fit(x, y).transform(x))


def test_itml_pair_labels_must_be_one_column():
    pairs, y = _pairs()
    with pytest.raises(ValueError, match=r"y must be 1-d, one label \(\+1 / -1\) per pair, "
                                         r"got shape \(10, 2\)"):
        ITML().fit(pairs, np.stack([y, y], axis=1))
    assert ITML().fit(pairs, y[:, None]).components_.shape == (4, 4)  # a column is one label


# -- n_components follows the parameters' rule ----------------------------------------

@pytest.mark.parametrize("make", [lambda k: NCA(n_components=k, max_iter=2, device="cpu"),
                                  lambda k: LMNN(n_components=k, max_iter=2, device="cpu"),
                                  lambda k: ITMLSupervised(n_components=k, max_iter=2),
                                  lambda k: LFDA(n_components=k, device="cpu"),
                                  lambda k: MLKR(n_components=k, max_iter=2, device="cpu")])
@pytest.mark.parametrize("bad, kind", [(2.0, "float"), (True, "bool"), ("2", "str")])
def test_n_components_of_the_wrong_type_is_a_value_error(make, bad, kind):
    x, y = _data()
    with pytest.raises(ValueError, match=rf"n_components must be an integer >= 1 or None, "
                                         rf"got {bad!r} \({kind}\)"):
        make(bad).fit(x, y)
