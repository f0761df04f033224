"""Mahalanobis learners on awkward inputs: translated data, numpy-integer settings,
label kinds in saved embeddings, degenerate classes, init edge cases, overflow,
unavailable devices, ITML bounds and scale, and saved method names."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from typer.testing import CliRunner

from dmlkit.classical import ITML, LFDA, LMNN, MLKR, NCA, ITMLSupervised
from dmlkit.classical.frozen import (
    encode_split_labels,
    load_embeddings,
    load_metric,
    save_metric,
)
from dmlkit.classical.mahalanobis import init_components, resolve_device
from dmlkit.cli.main import app

runner = CliRunner()


def blobs(n_per_class: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three Gaussian classes in 4-d (continuous values: no distance ties)."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per_class)
    return rng.standard_normal((y.size, 4)) + 1.5 * np.eye(3, 4)[y], y


def quiet_fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, y)


# -- 1. translation invariance ----------------------------------------------------------------
LEARNERS = {
    "nca_float32": (lambda: NCA(device="cpu"), False),
    "nca_float64": (lambda: NCA(device="cpu", precision="float64"), False),
    "lmnn": (lambda: LMNN(device="cpu", max_iter=200), False),
    "mlkr": (lambda: MLKR(device="cpu"), False),
    "lfda": (lambda: LFDA(device="cpu", n_components=2), True),
    "itml": (lambda: ITMLSupervised(random_state=0), True),
}


@pytest.mark.parametrize("offset", [1e3, 1e6])
@pytest.mark.parametrize("name", list(LEARNERS))
def test_fit_does_not_depend_on_where_the_data_sits(name, offset):
    make, closed_form = LEARNERS[name]
    X, y = blobs()
    base = quiet_fit(make(), X, y)
    shifted = quiet_fit(make(), X + offset, y)
    M0, M1 = base.get_mahalanobis_matrix(), shifted.get_mahalanobis_matrix()
    # closed-form / projection solvers agree to rounding; L-BFGS stops within its tol
    tol = 1e-8 if closed_form else (1e-5 if offset == 1e3 else 1e-2)
    assert np.linalg.norm(M1 - M0) / np.linalg.norm(M0) < tol
    if hasattr(base, "objective_"):
        assert shifted.objective_ == pytest.approx(base.objective_, rel=1e-6)
    # the learned map still applies to raw inputs: distances equal those of the base fit
    a, b = X[:10] + offset, X[10:20] + offset
    np.testing.assert_allclose(
        np.linalg.norm(shifted.transform(a) - shifted.transform(b), axis=1),
        np.linalg.norm(base.transform(X[:10]) - base.transform(X[10:20]), axis=1),
        rtol=max(tol, 1e-6) ** 0.5,
    )


# -- 2. numpy integer settings ------------------------------------------------------------------
@pytest.mark.parametrize("est,key", [(LMNN(device="cpu", max_iter=5), "lmnn__n_neighbors"),
                                     (LFDA(device="cpu"), "lfda__n_neighbors"),
                                     (NCA(device="cpu", max_iter=5), "nca__n_components")])
def test_grid_search_over_numpy_integers(est, key):
    X, y = blobs(10)
    grid = GridSearchCV(make_pipeline(est, KNeighborsClassifier(3)), {key: np.arange(1, 4)},
                        cv=2, error_score="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        grid.fit(X, y)
    assert isinstance(grid.best_params_[key], np.integer)


@pytest.mark.parametrize("cls", [LMNN, LFDA])
@pytest.mark.parametrize("bad", [True, np.bool_(True), 2.0, 0, np.int64(-1)])
def test_n_neighbors_rejects_bools_floats_and_non_positive(cls, bad):
    X, y = blobs(5)
    with pytest.raises(ValueError, match="n_neighbors must be an integer >= 1"):
        cls(n_neighbors=bad, device="cpu").fit(X, y)


# -- 3. labels of saved embeddings --------------------------------------------------------------
def test_npz_string_labels_are_encoded_jointly(tmp_path):
    X, y = blobs(10)
    names = np.array(["ant", "bee", "cat"])
    np.savez(tmp_path / "s.npz", embeddings=X, labels=names[y], heldout_embeddings=X[::-1],
             heldout_labels=names[y[::-1]])
    splits = load_embeddings(tmp_path / "s.npz")
    assert splits.train_labels.dtype == np.int64
    np.testing.assert_array_equal(splits.classes[splits.train_labels], names[y])
    np.testing.assert_array_equal(splits.classes[splits.heldout_labels], names[y[::-1]])
    out = tmp_path / "m"
    res = runner.invoke(app, ["classical", "fit", str(tmp_path / "s.npz"), "-m", "nca",
                              "-o", str(out), "-p", "device=cpu"])
    assert res.exit_code == 0, res.output
    assert (out / "components.npy").is_file()


def test_npz_float_labels(tmp_path):
    X, y = blobs(10)
    np.savez(tmp_path / "whole.npz", embeddings=X, labels=y.astype(np.float64))
    np.testing.assert_array_equal(load_embeddings(tmp_path / "whole.npz").train_labels, y)
    np.savez(tmp_path / "half.npz", embeddings=X, labels=y * 0.5)  # 0.0, 0.5, 1.0
    with pytest.raises(ValueError, match=r"non-integral float label\(s\) \[0\.5\]"):
        load_embeddings(tmp_path / "half.npz")
    res = runner.invoke(app, ["classical", "fit", str(tmp_path / "half.npz"), "-m", "lmnn",
                              "-o", str(tmp_path / "m"), "-p", "device=cpu"])
    assert res.exit_code == 1 and "0.5" in res.output
    assert not (tmp_path / "m").exists()


def test_encode_split_labels_keeps_integers_and_refuses_nan():
    tr, he, classes = encode_split_labels(np.array([10**12, 3]), np.array([3]))
    assert classes is None and tr.tolist() == [10**12, 3] and he.tolist() == [3]
    with pytest.raises(ValueError, match="nan"):
        encode_split_labels(np.array([0.0, np.nan]), np.array([0.0]))


# -- 4. LFDA without within-class scatter ----------------------------------------------------
def test_lfda_refuses_zero_within_class_scatter():
    X = np.random.default_rng(0).standard_normal((6, 3))
    with pytest.raises(ValueError, match="at least 2 samples"):
        LFDA(device="cpu").fit(X, np.arange(6))
    with pytest.raises(ValueError, match="within-class scatter is zero"):
        LFDA(device="cpu").fit(np.repeat(X[:3], 2, axis=0), np.repeat(np.arange(3), 2))


# -- 5. init edge cases -----------------------------------------------------------------------
@pytest.mark.parametrize("cls", [NCA, LMNN, MLKR])
def test_pca_init_with_more_components_than_samples_raises(cls):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((10, 30)), np.repeat([0, 1], 5)
    with pytest.raises(ValueError, match=r"min\(n_samples, n_features\)=10"):
        cls(n_components=20, init="pca", device="cpu").fit(X, y)


def rank_two_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 4))
    X[:, 2] = X[:, 0] + X[:, 1]
    X[:, 3] = 2 * X[:, 0]
    return X, np.repeat(np.arange(5), 10)


@pytest.mark.parametrize("cls", [NCA, LMNN])
def test_lda_init_on_rank_deficient_data_warns_and_keeps_n_components(cls):
    X, y = rank_two_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.warns(UserWarning, match="only 2 discriminant direction"):
            est = cls(n_components=3, device="cpu", max_iter=20).fit(X, y)
    assert est.components_.shape == (3, 4) and est.transform(X).shape == (50, 3)


def test_lda_init_completion_is_orthogonal_and_by_variance():
    X, y = rank_two_data()
    with pytest.warns(UserWarning):
        L = init_components("lda", X, y, 3, None)
    lda_rows, extra = L[:2], L[2]
    assert np.linalg.matrix_rank(lda_rows) == 2
    assert abs(np.linalg.norm(extra) - 1.0) < 1e-12
    np.testing.assert_allclose(lda_rows @ extra, 0.0, atol=1e-10)


# -- 6. overflow ------------------------------------------------------------------------------
def test_non_finite_objective_raises():
    X, y = blobs()
    with pytest.raises(ValueError, match="not finite|precision='float64'"):
        NCA(device="cpu").fit(X * 1e19, y)  # finite in float64, squares overflow float32
    NCA(device="cpu", precision="float64", max_iter=5).fit(X * 1e19, y)  # fine there
    for est in (MLKR(device="cpu"), LMNN(device="cpu"), LFDA(device="cpu")):
        with pytest.raises(ValueError, match="overflow in float64.*rescale X"):
            est.fit(X * 1e160, y)


@pytest.mark.parametrize("cls", [NCA, LMNN, MLKR, LFDA])
def test_distances_underflowing_to_zero_raise(cls):
    X, y = blobs()
    with pytest.raises(ValueError, match="underflow to 0.*rescale X"):
        cls(device="cpu").fit(X * 1e-200, y)


# -- 7. devices -------------------------------------------------------------------------------
def test_unavailable_cuda_is_a_value_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    X, y = blobs(5)
    for est in (NCA(device="cuda"), LMNN(device="cuda"), LFDA(device="cuda"),
                MLKR(device="cuda")):
        with pytest.raises(ValueError, match=r"device='cuda' is not available.*'cpu'"):
            est.fit(X, y)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"'cuda:7' is not available.*'cuda:0'"):
        resolve_device("cuda:7")
    assert resolve_device("cuda:0") == torch.device("cuda:0")


# -- 8. ITML bounds and scale; saved method names ---------------------------------------------
def test_itml_bounds_must_be_positive():
    rng = np.random.default_rng(0)
    pairs, sim = rng.standard_normal((20, 2, 3)), np.r_[np.ones(10), -np.ones(10)]
    for bounds in [(-1.0, 2.0), (1.0, 0.0)]:
        with pytest.raises(ValueError, match="finite positive"):
            ITML(bounds=bounds).fit(pairs, sim)
    assert ITML(bounds=(0.5, 2.0)).fit(pairs, sim).bounds_.tolist() == [0.5, 2.0]


@pytest.mark.parametrize("scale", [1e200, 1e-200])
def test_itml_extreme_magnitudes_raise_clearly(scale):
    X, y = blobs(10)
    with pytest.raises(ValueError, match="rescale"):
        ITMLSupervised(random_state=0).fit(X * scale, y)


def test_saved_method_is_the_cli_name_and_class_names_load(tmp_path):
    X, y = blobs(10)
    est = quiet_fit(MLKR(device="cpu", max_iter=5), X, y.astype(float))
    save_metric(est, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "metric.json").read_text())["method"] == "mlkr"
    meta_file = tmp_path / "m" / "metric.json"
    for written, read in [("MLKR", "mlkr"), ("ITMLSupervised", "itml"), ("nca", "nca"),
                          ("Custom", "Custom")]:
        meta = json.loads(meta_file.read_text())
        meta["method"] = written
        meta_file.write_text(json.dumps(meta))
        assert load_metric(tmp_path / "m")[1]["method"] == read


def test_cli_fit_reports_a_badly_typed_param(tmp_path):
    X, y = blobs(10)
    np.savez(tmp_path / "e.npz", embeddings=X, labels=y)
    res = runner.invoke(app, ["classical", "fit", str(tmp_path / "e.npz"), "-m", "nca",
                              "-o", str(tmp_path / "m"), "-p", "n_components=abc"])
    assert res.exit_code == 1 and "n_components must be an int" in res.output
