"""Classical learners: too few samples per class refused by the learner's own check,
``metric.json`` refitting an infinite ``gamma``, and hierarchical labels refused in one
line by ``dmlkit classical fit``."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.classical import LMNN, NCA, ITMLSupervised
from dmlkit.classical.frozen import (
    fit_on_embeddings,
    load_embeddings,
    make_learner,
    save_metric,
)
from dmlkit.classical.params import real_from_text
from dmlkit.cli.main import app

runner = CliRunner()

X = np.random.default_rng(0).normal(size=(5, 4))


@pytest.mark.parametrize("make", [
    lambda: ITMLSupervised(random_state=0), lambda: NCA(device="cpu", random_state=0),
    lambda: LMNN(device="cpu", random_state=0),
], ids=["ITMLSupervised", "NCA", "LMNN"])
def test_one_sample_per_class_is_refused_by_the_learner(make):
    learner = make()
    name = type(learner).__name__
    with pytest.raises(ValueError, match=rf"^{name} needs a class with at least 2 samples; "
                                         "every class has 1$"):
        learner.fit(X, np.arange(5))


def test_itml_supervised_refuses_one_class():
    with pytest.raises(ValueError, match="at least 2 classes"):
        ITMLSupervised(random_state=0).fit(X, np.zeros(5, dtype=int))


@pytest.mark.parametrize("text, value", [
    ("inf", np.inf), ("-inf", -np.inf), ("+Inf", np.inf), ("Infinity", np.inf),
])
def test_real_from_text_reads_non_finite_spellings(text, value):
    assert real_from_text(text) == value
    assert np.isnan(real_from_text("nan"))
    assert real_from_text("identity") == "identity" and real_from_text(1.5) == 1.5


def test_make_learner_reads_inf_only_where_a_real_is_expected():
    assert make_learner("itml", {"gamma": "inf"}).gamma == np.inf
    assert make_learner("itml", {"prior": "inf"}).prior == "inf"  # not a real parameter
    with pytest.raises(ValueError, match=r"tol must be a real number in \[0, inf\)"):
        make_learner("lmnn", {"tol": "inf", "device": "cpu"}).fit(X, [0, 0, 1, 1, 1])


def _data():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 10)
    return rng.normal(size=(30, 4)) + 2.0 * y[:, None], y


def test_metric_json_refits_an_infinite_gamma(tmp_path):
    x, y = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (convergence of a short solve)
        learner = ITMLSupervised(gamma=float("inf"), max_iter=5, random_state=0).fit(x, y)
        save_metric(learner, tmp_path)
        meta = json.loads((tmp_path / "metric.json").read_text())
        assert meta["params"]["gamma"] == "inf"
        again = fit_on_embeddings(x, y, meta["method"], meta["params"])
    assert again.gamma == np.inf
    np.testing.assert_allclose(again.components_, learner.components_)


@pytest.mark.parametrize("spelling", ["inf", ".inf"])
def test_cli_takes_gamma_inf_and_its_metric_json_refits(emb_npz, tmp_path, spelling):
    out = tmp_path / "m"
    res = runner.invoke(app, ["classical", "fit", str(emb_npz), "-m", "itml", "-o", str(out),
                              "-p", f"gamma={spelling}", "-p", "bounds=[1,5]",
                              "-p", "max_iter=3"])
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "metric.json").read_text())
    assert meta["params"]["gamma"] == "inf"
    splits = load_embeddings(emb_npz)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = fit_on_embeddings(splits.train, splits.train_labels, meta["method"],
                                  meta["params"])
    np.testing.assert_allclose(again.components_, np.load(out / "components.npy"))


def test_cli_still_refuses_an_infinite_tol(emb_npz, tmp_path):
    res = runner.invoke(app, ["classical", "fit", str(emb_npz), "-m", "nca",
                              "-o", str(tmp_path / "m"), "-p", "tol=inf"])
    assert res.exit_code == 1
    assert "error: tol must be a real number in [0, inf), got inf (float)" in res.output


HIER_RUN = """
name: hier
data: {{name: npz, path: {path}, split: stratified, test_fraction: 0.5}}
model: {{name: mlp, dim: 4, hidden: [8]}}
loss: {{name: triplet_margin, margin: 0.1}}
training: {{epochs: 1, seed: 0, num_threads: 1}}
"""


def _hier_labels() -> np.ndarray:
    leaf = np.repeat(np.arange(6), 8)
    return np.stack([leaf % 2, leaf], axis=1)  # (48, 2): parity, then the class


def test_classical_fit_refuses_a_hierarchical_run_in_one_line(tmp_path):
    labels = _hier_labels()
    data = tmp_path / "hier.npz"
    x = np.random.default_rng(0).normal(size=(len(labels), 6)).astype(np.float32)
    np.savez(data, x=x, labels=labels)
    config = tmp_path / "hier.yaml"
    config.write_text(HIER_RUN.format(path=data))
    run = tmp_path / "run"
    res = runner.invoke(app, ["train", str(config), "--out", str(run), "--no-progress"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["classical", "fit", str(run), "-o", str(tmp_path / "m")])
    assert res.exit_code == 1
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("error: ") and "hierarchical (n, L) labels" in line
    assert "one class label per item" in line and "labels[:, k]" in line
    assert "dmlkit embed" in line and "y should be a 1d array" not in res.output


def test_classical_fit_refuses_hierarchical_labels_of_an_npz(tmp_path):
    labels = _hier_labels()
    path = tmp_path / "e.npz"
    np.savez(path, embeddings=np.random.default_rng(0).normal(size=(len(labels), 4)),
             labels=labels)
    res = runner.invoke(app, ["classical", "fit", str(path), "-o", str(tmp_path / "m")])
    assert res.exit_code == 1
    assert "hierarchical (n, L) labels" in res.output and "labels[:, k]" in res.output


@pytest.mark.parametrize("labels, what", [
    (_hier_labels(), "hierarchical (n, L) labels"),
    (np.eye(6, dtype=bool)[np.repeat(np.arange(6), 8)], "(n, C) multi-labels"),
])
def test_fit_on_embeddings_wants_one_label_per_row(labels, what):
    x = np.random.default_rng(0).normal(size=(len(labels), 4))
    want = re.escape(f"{what}, but classical metric learners take one class label per item, (n,)")
    with pytest.raises(ValueError, match=want):
        fit_on_embeddings(x, labels, "lfda", {"device": "cpu"})
