"""Classical Mahalanobis learners: objectives, gradients, known answers, metric surface."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.neighbors import KNeighborsClassifier, NeighborhoodComponentsAnalysis

from dmlkit.classical import ITML, LFDA, LMNN, MLKR, NCA, ITMLSupervised
from dmlkit.classical.itml import itml_bregman, sample_pairs
from dmlkit.classical.lfda import lfda_scatter
from dmlkit.classical.lmnn import lmnn_loss_grad, target_neighbors
from dmlkit.classical.mahalanobis import ManualGradObjective
from dmlkit.classical.mlkr import mlkr_loss_grad
from dmlkit.classical.nca import nca_loss_grad

LABEL_LEARNERS = [
    lambda: NCA(device="cpu", random_state=0),
    lambda: LMNN(device="cpu", random_state=0),
    lambda: ITMLSupervised(random_state=0, n_constraints=60, max_iter=300),
    lambda: LFDA(device="cpu"),
]
IDS = ["nca", "lmnn", "itml", "lfda"]


def toy(
    n: int = 90, seed: int = 0, noise: float = 3.0, spread: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """3 classes along feature 0 (std ``spread``), feature 1 pure noise of std ``noise``."""
    rng = np.random.RandomState(seed)
    y = np.arange(n) % 3
    X = np.stack([y + spread * rng.randn(n), noise * rng.randn(n)], axis=1)
    return X, y


# -- naive references (loops, fp64) ----------------------------------------------------
def nca_reference(L: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    Z = X @ L.T
    total = X.new_zeros(())
    for i in range(X.shape[0]):
        d = torch.stack([((Z[i] - Z[j]) ** 2).sum() for j in range(X.shape[0]) if j != i])
        others = [j for j in range(X.shape[0]) if j != i]
        p = torch.softmax(-d, dim=0)
        total = total - sum(p[t] for t, j in enumerate(others) if y[j] == y[i])
    return total


def lmnn_reference(L, X, y, targets, valid, mu):
    Z = X @ L.T
    total = X.new_zeros(())
    for i in range(X.shape[0]):
        for t in range(targets.shape[1]):
            if not valid[i, t]:
                continue
            j = int(targets[i, t])
            dij = ((Z[i] - Z[j]) ** 2).sum()
            total = total + (1 - mu) * dij
            for m in range(X.shape[0]):
                if y[m] != y[i]:
                    total = total + mu * torch.relu(1 + dij - ((Z[i] - Z[m]) ** 2).sum())
    return total


def small(seed: int = 0, n: int = 14, d: int = 3, k: int = 2):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, dtype=torch.float64, generator=g)
    y = torch.arange(n) % 3
    L = torch.randn(k, d, dtype=torch.float64, generator=g)
    return X, y, L


# -- objectives and gradients --------------------------------------------------------
@pytest.mark.parametrize("budget", [1 << 24, 20])  # one chunk / many chunks
def test_nca_objective_matches_loop_reference_and_gradcheck(budget):
    X, y, L = small()
    loss, grad = nca_loss_grad(L, X, y, budget=budget)
    Lr = L.clone().requires_grad_(True)
    ref = nca_reference(Lr, X, y)
    ref.backward()
    assert torch.allclose(loss, ref, atol=1e-10)
    assert torch.allclose(grad, Lr.grad, atol=1e-8)
    Lg = L.clone().requires_grad_(True)
    fn = lambda A: ManualGradObjective.apply(A, lambda B: nca_loss_grad(B, X, y, budget))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (Lg,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("budget", [1 << 24, 40])
def test_lmnn_objective_matches_loop_reference_and_gradcheck(budget):
    X, y, L = small(seed=1)
    y[0] = 3  # a singleton class: no target neighbours for it
    targets, valid = target_neighbors(X, y, 2)
    assert not valid[0].any() and valid[1:].all()
    loss, grad = lmnn_loss_grad(L, X, y, targets, valid, 0.4, budget=budget)
    Lr = L.clone().requires_grad_(True)
    ref = lmnn_reference(Lr, X, y, targets, valid, 0.4)
    ref.backward()
    assert torch.allclose(loss, ref, atol=1e-10)
    assert torch.allclose(grad, Lr.grad, atol=1e-8)
    Lg = L.clone().requires_grad_(True)
    fn = lambda A: ManualGradObjective.apply(  # noqa: E731
        A, lambda B: lmnn_loss_grad(B, X, y, targets, valid, 0.4, budget)
    )
    assert torch.autograd.gradcheck(fn, (Lg,), eps=1e-6, atol=1e-5)


def test_target_neighbors_are_nearest_same_class():
    X, y, _ = small(seed=2, n=12)
    targets, valid = target_neighbors(X, y, 2, budget=30)
    for i in range(12):
        same = [j for j in range(12) if j != i and y[j] == y[i]]
        dist = sorted(same, key=lambda j: float(((X[i] - X[j]) ** 2).sum()))
        assert targets[i].tolist() == dist[:2] and valid[i].all()


def test_lfda_scatter_matches_pairwise_definition():
    X, y, _ = small(seed=3, n=15)
    k = 3
    S_lb, S_lw = lfda_scatter(X, y, k)
    n = X.shape[0]
    D = torch.cdist(X, X) ** 2
    ref_lb = torch.zeros(3, 3, dtype=torch.float64)
    ref_lw = torch.zeros(3, 3, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            v = (X[i] - X[j])[:, None]
            if y[i] == y[j]:
                cls = (y == y[i]).nonzero().squeeze(1)
                nc = cls.numel()
                si = torch.sort(D[i, cls]).values[k].sqrt()  # k-th neighbour (self first)
                sj = torch.sort(D[j, cls]).values[k].sqrt()
                a = torch.exp(-D[i, j] / (si * sj))
                w_lw, w_lb = a / nc, a * (1 / n - 1 / nc)
            else:
                w_lw, w_lb = 0.0, 1 / n
            ref_lw += 0.5 * w_lw * v @ v.T
            ref_lb += 0.5 * w_lb * v @ v.T
    assert torch.allclose(S_lw, ref_lw, atol=1e-10)
    assert torch.allclose(S_lb, ref_lb, atol=1e-10)


def test_itml_bregman_matches_plain_loop():
    rng = np.random.RandomState(0)
    X, y = rng.randn(20, 4), np.arange(20) % 2
    a, b, sim = sample_pairs(y, 15, rng)
    diffs = X[a] - X[b]
    bounds = np.where(sim > 0, 1.0, 6.0)
    A, it, _ = itml_bregman(diffs, sim, bounds, np.eye(4), 1.0, 7, 0.0)
    # the reference: Davis et al. (2007), Algorithm 1, written with dense numpy
    R, lam, xi = np.eye(4), np.zeros(len(sim)), bounds.copy()
    for _ in range(7):
        for c in range(len(sim)):
            v, s = diffs[c], sim[c]
            p = v @ R @ v
            alpha = min(lam[c], s * 0.5 * (1 / p - 1 / xi[c]))  # gamma/(gamma+1) = 0.5
            lam[c] -= alpha
            beta = s * alpha / (1 - s * alpha * p)
            xi[c] = 1 / (1 / xi[c] + s * alpha / 1.0)
            R = R + beta * np.outer(R @ v, R @ v)
    assert it == 7
    np.testing.assert_allclose(A, R, atol=1e-10)


def test_itml_hard_constraints_are_met():
    X, y = toy(n=40, spread=0.02)  # feasible: feature 0 separates the classes
    a, b, sim = sample_pairs(y, 10, np.random.RandomState(1))
    pairs = np.stack([X[a], X[b]], axis=1)
    est = ITML(gamma=1e8, bounds=(1.0, 8.0), max_iter=5000, tol=1e-6).fit(pairs, sim)
    d2 = est.pair_distance(pairs) ** 2
    assert (d2[sim > 0] <= 1.0 * 1.01).all() and (d2[sim < 0] >= 8.0 * 0.99).all()


# -- known answers ---------------------------------------------------------------------
@pytest.mark.parametrize("make", LABEL_LEARNERS, ids=IDS)
def test_noise_feature_is_down_weighted_and_knn_improves(make):
    X, y = toy()
    Xte, yte = toy(seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = make().fit(X, y)
    M = est.get_mahalanobis_matrix()
    assert M[1, 1] < 0.05 * M[0, 0], M  # the noise direction is (nearly) ignored
    raw = KNeighborsClassifier(3).fit(X, y).score(Xte, yte)
    learned = KNeighborsClassifier(3).fit(est.transform(X), y).score(est.transform(Xte), yte)
    assert learned >= 0.97 and learned > raw


@pytest.mark.parametrize("make", LABEL_LEARNERS, ids=IDS)
def test_metric_surface_is_consistent(make):
    X, y = toy(n=30)
    X = np.column_stack([X, np.random.RandomState(2).randn(30)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = make().fit(X, y)
    L, M = est.components_, est.get_mahalanobis_matrix()
    assert L.shape == (3, 3) and np.allclose(M, M.T) and np.allclose(M, L.T @ L)
    assert np.linalg.eigvalsh(M).min() >= -1e-9 * max(1.0, np.abs(M).max())  # PSD
    pairs = np.stack([X[:10], X[10:20]], axis=1)  # (10, 2, 3)
    diff = X[:10] - X[10:20]
    expect = np.sqrt(np.einsum("nd,de,ne->n", diff, M, diff))
    np.testing.assert_allclose(est.pair_distance(pairs), expect, rtol=1e-8)
    np.testing.assert_allclose(est.pair_score(pairs), -expect, rtol=1e-8)
    metric = est.get_metric()
    assert metric(X[0], X[10]) == pytest.approx(expect[0], rel=1e-8)
    dist = est.as_distance()
    got = dist.pairwise(torch.from_numpy(X[:10]), torch.from_numpy(X[10:20]))
    np.testing.assert_allclose(got.numpy(), expect, rtol=1e-6)
    full = dist(torch.from_numpy(X[:10]), torch.from_numpy(X[10:20])).numpy()
    np.testing.assert_allclose(np.diag(full), expect, rtol=1e-6)
    # kNN through transform and through the callable metric agree
    knn_t = KNeighborsClassifier(3).fit(est.transform(X), y).predict(est.transform(X[:10]))
    knn_m = KNeighborsClassifier(3, metric=metric, algorithm="brute").fit(X, y).predict(X[:10])
    assert (knn_t == knn_m).all()


def test_nca_matches_scikit_learn():
    from sklearn.datasets import load_iris
    from sklearn.preprocessing import StandardScaler

    X, y = load_iris(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    ours = NCA(init="identity", max_iter=200, tol=1e-8, device="cpu").fit(X, y)
    theirs = NeighborhoodComponentsAnalysis(init="identity", max_iter=200, tol=1e-8).fit(X, y)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    f_theirs = float(nca_loss_grad(torch.from_numpy(theirs.components_), Xt, yt)[0])
    assert ours.objective_ == pytest.approx(f_theirs, rel=1e-3)  # same optimum value
    acc = [KNeighborsClassifier(3).fit(e.transform(X), y).score(e.transform(X), y)
           for e in (ours, theirs)]
    assert abs(acc[0] - acc[1]) <= 0.02


def test_nca_dense_wide_map_and_float32_match_float64():
    from dmlkit.classical.nca import nca_loss_grad_dense, same_label_weights

    X, y, _ = small(seed=2)
    L = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    same = same_label_weights(y, torch.float64)
    loss, grad = nca_loss_grad_dense(L, X, same)  # k > d: the (A X) first branch
    Lr = L.clone().requires_grad_(True)
    ref = nca_reference(Lr, X, y)
    ref.backward()
    assert torch.allclose(loss, ref, atol=1e-10)
    assert torch.allclose(grad, Lr.grad, atol=1e-8)
    loss32, grad32 = nca_loss_grad_dense(L.float(), X.float(), same.float())
    assert loss32.dtype == torch.float64
    assert float(loss32) == pytest.approx(float(ref.detach()), abs=1e-4)
    assert torch.allclose(grad32.double(), Lr.grad, atol=1e-4)
    from sklearn.datasets import load_iris
    from sklearn.preprocessing import StandardScaler

    Xi, yi = load_iris(return_X_y=True)
    Xi = StandardScaler().fit_transform(Xi)
    f64 = NCA(init="identity", device="cpu", precision="float64").fit(Xi, yi)
    f32 = NCA(init="identity", device="cpu", precision="float32").fit(Xi, yi)
    assert f32.objective_ == pytest.approx(f64.objective_, rel=1e-4)
    assert f32.components_.dtype == np.float64
    with pytest.raises(ValueError, match="float16"):
        NCA(precision="float16", device="cpu").fit(Xi, yi)


def test_low_rank_components_and_random_state():
    X, y = toy(n=60)
    X = np.column_stack([X, np.random.RandomState(3).randn(60, 3)])  # (60, 5)
    for cls in (NCA, LMNN):
        a = cls(n_components=2, init="random", random_state=4, device="cpu", max_iter=20)
        b = cls(n_components=2, init="random", random_state=4, device="cpu", max_iter=20)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            La, Lb = a.fit(X, y).components_, b.fit(X, y).components_
        assert La.shape == (2, 5) and np.array_equal(La, Lb)
        assert a.transform(X).shape == (60, 2)
    assert LFDA(n_components=2).fit(X, y).transform(X).shape == (60, 2)
    itml = ITMLSupervised(n_components=2, random_state=0, n_constraints=30, max_iter=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        assert itml.fit(X, y).components_.shape == (2, 5)


# -- warnings and errors -----------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: NCA(max_iter=1, init="identity", device="cpu"),
                                  lambda: LMNN(max_iter=1, init="identity", device="cpu"),
                                  lambda: ITMLSupervised(max_iter=1, random_state=0)],
                         ids=["nca", "lmnn", "itml"])
def test_convergence_warning_at_max_iter(make):
    X, y = toy(n=60)
    with pytest.warns(ConvergenceWarning, match="max_iter=1"):
        make().fit(X, y)


@pytest.mark.parametrize("make", LABEL_LEARNERS, ids=IDS)
def test_bad_input_raises_clear_errors(make):
    X, y = toy(n=30)
    with pytest.raises(NotFittedError):
        make().transform(X)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        make().fit(bad, y)
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        make().fit(bad, y)
    with pytest.raises(ValueError, match="1 class"):
        make().fit(X, np.zeros(30))
    with pytest.raises(ValueError, match="n_components=3"):
        make().set_params(n_components=3).fit(X, y)
    with pytest.raises(ValueError, match="2D array"):
        make().fit(X[:, 0], y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        make().fit(X, y[:-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = make().fit(X, y)
    with pytest.raises(ValueError, match="3 features"):
        est.transform(np.ones((2, 3)))
    with pytest.raises(ValueError, match="pairs"):
        est.pair_distance(X[:4])
    with pytest.raises(ValueError, match="expects 2 features"):
        est.pair_distance(np.ones((4, 2, 3)))


def test_bad_parameters_raise():
    X, y = toy(n=30)
    with pytest.raises(ValueError, match="device"):
        NCA(device="tpu-9").fit(X, y)
    with pytest.raises(ValueError, match="init"):
        NCA(init="nope", device="cpu").fit(X, y)
    with pytest.raises(ValueError, match="mu"):
        LMNN(mu=2.0, device="cpu").fit(X, y)
    with pytest.raises(ValueError, match="embedding_type"):
        LFDA(embedding_type="x").fit(X, y)
    with pytest.raises(ValueError, match="gamma"):
        ITMLSupervised(gamma=0.0).fit(X, y)


def test_itml_pairs_api():
    X, y = toy(n=60)
    a, b, sim = sample_pairs(y, 40, np.random.RandomState(0))
    pairs = np.stack([X[a], X[b]], axis=1)
    with pytest.raises(NotFittedError):
        ITML().pair_distance(pairs)
    est = ITML().fit(pairs, sim)
    assert est.n_features_in_ == 2 and est.transform(X).shape == (60, 2)
    M = est.get_mahalanobis_matrix()
    assert M[1, 1] < 0.1 * M[0, 0]
    d = est.pair_distance(pairs)
    assert d[sim > 0].mean() < d[sim < 0].mean()
    with pytest.raises(ValueError, match="pair labels"):
        ITML().fit(pairs, np.where(sim > 0, 1, 0))
    with pytest.raises(ValueError, match="shape"):
        ITML().fit(X, sim[:60])
    with pytest.raises(ValueError, match="length"):
        ITML().fit(pairs, sim[:-1])
    with pytest.raises(ValueError, match="positive definite"):
        ITML(prior=-np.eye(2)).fit(pairs, sim)


def test_nca_objective_and_gradient_equal_scikit_learn():
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    L = np.random.RandomState(0).randn(2, 4) * 0.3
    est = NeighborhoodComponentsAnalysis()
    if not hasattr(est, "_loss_grad_lbfgs"):
        pytest.skip("scikit-learn's private NCA objective moved")
    est.n_iter_ = 0
    loss, grad = est._loss_grad_lbfgs(L.ravel(), X, y[:, None] == y[None, :], -1.0)
    ours, our_grad = nca_loss_grad(torch.from_numpy(L), torch.from_numpy(X), torch.from_numpy(y))
    assert float(ours) == pytest.approx(loss, rel=1e-10)
    np.testing.assert_allclose(our_grad.numpy().ravel(), grad, rtol=1e-8, atol=1e-10)


def test_mlkr_objective_matches_loop_reference_and_gradcheck():
    X, _, L = small(seed=4)
    y = torch.linspace(-1, 2, X.shape[0], dtype=torch.float64)
    loss, grad = mlkr_loss_grad(L, X, y, budget=30)
    Lr = L.clone().requires_grad_(True)
    Z = X @ Lr.T
    ref = X.new_zeros(())
    for i in range(X.shape[0]):
        k = torch.stack([torch.exp(-((Z[i] - Z[j]) ** 2).sum()) for j in range(X.shape[0])])
        k = torch.cat([k[:i], k[i + 1 :]])
        yo = torch.cat([y[:i], y[i + 1 :]])
        ref = ref + (y[i] - (k * yo).sum() / k.sum()) ** 2
    ref.backward()
    assert torch.allclose(loss, ref, atol=1e-10) and torch.allclose(grad, Lr.grad, atol=1e-8)
    Lg = L.clone().requires_grad_(True)
    fn = lambda A: ManualGradObjective.apply(A, lambda B: mlkr_loss_grad(B, X, y, 30))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (Lg,), eps=1e-6, atol=1e-5)


def test_mlkr_down_weights_noise_for_regression():
    rng = np.random.RandomState(0)
    X = np.column_stack([3 * rng.rand(100), 3 * rng.randn(100)])
    y = np.sin(X[:, 0])
    est = MLKR(device="cpu").fit(X, y)
    M = est.get_mahalanobis_matrix()
    assert M[1, 1] < 0.01 * M[0, 0] and np.linalg.eigvalsh(M).min() >= -1e-9
    with pytest.raises(ValueError, match="NaN"):
        MLKR(device="cpu").fit(np.where(X > 2, np.nan, X), y)
    with pytest.raises(ValueError, match="class labels"):
        MLKR(init="lda", device="cpu").fit(X, y)
