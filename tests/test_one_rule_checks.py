"""One rule, one place: real numbers in an interval (rates, recalls, learner parameters),
real-valued input arrays read from files, and the knn outlier score with and without
leave-one-out."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dmlkit._checks import check_real
from dmlkit.classical.params import check_real_param, check_solver_params
from dmlkit.functional.verification import check_far
from dmlkit.index.calibrate import check_target_recall

# 1. real numbers in an interval ---------------------------------------------------------


@pytest.mark.parametrize("value", [0.5, 1, np.float32(0.25), np.float64(1.0), np.int64(0),
                                   np.float16(0.5)])
def test_check_real_takes_python_and_numpy_reals_as_float(value):
    got = check_real("x", value, 0.0, 1.0)
    assert type(got) is float and got == float(value)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), "0.5", None, 1j,
                                   np.complex64(0.5), math.nan, np.float32("nan"),
                                   torch.tensor(0.5), [0.5]])
def test_check_real_refuses_non_reals_naming_value_and_type(value):
    with pytest.raises(ValueError, match=r"^x must be a real number in \[0, 1\], got .* \(\w+\)$"):
        check_real("x", value, 0.0, 1.0)


def test_check_real_bounds_open_or_closed_and_infinity():
    assert check_real("g", 0.0, 0.0, 1.0) == 0.0  # closed ends admit themselves
    assert check_real("g", 1.0, 0.0, 1.0) == 1.0
    for kw, bad in (({"low_open": True}, 0.0), ({"high_open": True}, 1.0)):
        with pytest.raises(ValueError, match=r"g must be a real number in [(\[]0, 1[)\]]"):
            check_real("g", bad, 0.0, 1.0, **kw)
    assert check_real("g", math.inf, 0.0, math.inf) == math.inf  # closed infinite end
    with pytest.raises(ValueError, match=r"g must be a real number in \[0, inf\), got inf"):
        check_real("g", math.inf, 0.0, math.inf, high_open=True)
    with pytest.raises(ValueError, match=r"g must be a real number in \[-inf, 0\], got inf"):
        check_real("g", math.inf, high=0.0)
    with pytest.raises(ValueError, match=r"^g must be a rate in \(0, 1\), got 2 \(int\)$"):
        check_real("g", 2, 0.0, 1.0, low_open=True, high_open=True, what="a rate")


def test_far_recall_and_learner_checks_are_the_one_rule():
    assert check_real_param is check_real  # the learners' name for it
    # one type rule: a numpy float passes, bools and complex numbers do not, anywhere
    assert check_far(np.float32(0.25)) == 0.25
    assert check_target_recall(np.float32(1.0)) == 1.0
    for bad in (True, np.bool_(True), np.complex64(0.5), math.nan):
        with pytest.raises(ValueError, match=r"^far must be in \(0, 1\), got "):
            check_far(bad)
        with pytest.raises(ValueError, match=r"^target must be a recall in \(0, 1\], got "):
            check_target_recall(bad)
        with pytest.raises(ValueError, match=r"^tol must be a real number in \[0, inf\), got "):
            check_solver_params(10, bad)
    # each its own interval: a far of 1 accepts everything, a recall of 1 is reachable
    with pytest.raises(ValueError, match=r"fars must be in \(0, 1\), got 1 \(int\)"):
        check_far(1, "fars")
    assert check_target_recall(1) == 1.0
    with pytest.raises(ValueError, match=r"--target-recall must be a recall in \(0, 1\], got 0"):
        check_target_recall(0, "--target-recall")
    with pytest.raises(ValueError, match=r"tol must be a real number in \[0, inf\), got inf"):
        check_solver_params(10, math.inf)


# 2. input arrays of real numbers --------------------------------------------------------


@pytest.mark.parametrize("x, what", [
    (np.ones((4, 3), np.complex64), r"complex64 \(complex numbers; keep a real part \(x\.real, "
                                    r"np\.abs\(x\)\) or stack the real and imaginary parts"),
    (np.array(list("abcd")), r"<U1 \(strings"),
])
def test_npz_inputs_and_tuple_features_are_refused_alike(tmp_path, x, what):
    from dmlkit.data.npz import load_npz
    from dmlkit.data.tuples import load_features

    np.savez(tmp_path / "odd.npz", x=x, labels=np.arange(len(x)) % 2)
    with pytest.raises(TypeError, match=rf"odd\.npz: 'x' must be real numbers, got dtype {what}"):
        load_npz(tmp_path / "odd.npz")
    with pytest.raises(TypeError, match=rf"odd\.npz \(array 'x'\): the features must be real "
                                        rf"numbers, got dtype {what}"):
        load_features(tmp_path / "odd.npz")
    np.save(tmp_path / "odd.npy", x)
    with pytest.raises(TypeError, match=rf"odd\.npy: the features must be real numbers, got "
                                        rf"dtype {what}"):
        load_features(tmp_path / "odd.npy")


def test_a_string_array_in_an_npz_names_the_key_setting(tmp_path):
    from dmlkit.data.npz import load_npz

    np.savez(tmp_path / "odd.npz", names=np.array(list("ab")), labels=np.arange(2))
    with pytest.raises(TypeError, match=r"'names' must be real numbers, got dtype <U1 "
                                        r"\(strings; name the inputs array with data\.x_key"):
        load_npz(tmp_path / "odd.npz", x_key="names")


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.int32, np.float16, np.float64])
def test_real_dtypes_pass(dtype):
    from dmlkit.data.npz import check_real_inputs

    check_real_inputs(np.zeros((2, 2), dtype), "f.npy", "the features")


# 6. the knn outlier score, with and without leave-one-out --------------------------------


def test_knn_distance_with_and_without_leave_one_out():
    from dmlkit.apps.outlier_scores import knn_distance

    g = torch.Generator().manual_seed(0)
    ref = torch.randn(12, 3, generator=g)
    q = torch.randn(5, 3, generator=g)
    d = torch.cdist(q.double(), ref.double())  # (5, 12)
    torch.testing.assert_close(knn_distance(q, ref, 3), d.topk(3, largest=False).values.mean(1))
    self_d = torch.cdist(ref.double(), ref.double()).fill_diagonal_(math.inf)  # (12, 12)
    torch.testing.assert_close(knn_distance(ref, None, 3),
                               self_d.topk(3, largest=False).values.mean(1))


def test_knn_detector_threshold_is_the_leave_one_out_quantile():
    from dmlkit.apps.outliers import MetricOutlierDetector

    x = np.random.default_rng(1).normal(size=(40, 4)).astype(np.float32)
    det = MetricOutlierDetector(method="knn", n_neighbors=3, contamination=0.1,
                                normalize=False).fit(x)
    z = torch.from_numpy(x).double()
    d = torch.cdist(z, z).fill_diagonal_(math.inf).topk(3, largest=False).values.mean(1)
    assert det.offset_ == pytest.approx(float(np.quantile(-d.numpy(), 0.1)))
    new = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
    want = torch.cdist(torch.from_numpy(new).double(), z).topk(3, largest=False).values.mean(1)
    np.testing.assert_allclose(det.score_samples(new), -want.numpy(), rtol=1e-6)
