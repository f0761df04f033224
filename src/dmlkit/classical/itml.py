"""Information-Theoretic Metric Learning (Davis, Kulis, Jain, Sra & Dhillon, ICML 2007)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy.linalg import get_blas_funcs
from sklearn.base import TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array

from dmlkit._checks import check_int_param, check_real
from dmlkit.classical.mahalanobis import (
    MahalanobisMixin,
    _validate_data,
    check_label_types,
    check_n_components,
    check_pairs,
    check_y_given,
    components_from_metric,
    encode_labels,
    warn_no_convergence,
)
from dmlkit.classical.params import check_solver_params


def itml_bregman(
    diffs: np.ndarray,
    delta: np.ndarray,
    bounds: np.ndarray,
    A0: np.ndarray,
    gamma: float,
    max_iter: int,
    tol: float,
    verbose: bool = False,
) -> tuple[np.ndarray, int, bool]:
    """Cyclic Bregman projections for ITML (Davis et al., 2007, Algorithm 1).

    Each step projects ``A`` onto one constraint ``d_A(v) = v^T A v <= u`` (``delta=+1``)
    or ``>= l`` (``delta=-1``) with slack ``gamma`` via the rank-one update
    ``A <- A + beta (A v)(A v)^T``. The projections are sequential by nature; each costs
    two level-2 BLAS calls on the ``(d, d)`` matrix (``symv``, in-place ``syr``), so a
    pass over ``m`` constraints is ``O(m d^2)`` with a few microseconds of Python per
    constraint. Stops when the dual variables move by less than ``tol`` (relative L1).

    Parameters
    ----------
    diffs : ndarray of shape (m, d)
        ``x_a - x_b`` of each constrained pair (no zero rows).
    delta : ndarray of shape (m,)
        +1 for similar, -1 for dissimilar pairs.
    bounds : ndarray of shape (m,)
        Target squared distance of each constraint (``u`` or ``l``).
    A0 : ndarray of shape (d, d)
        The prior, strictly positive definite.

    Returns
    -------
    A : ndarray of shape (d, d)
    n_iter : int
        Passes over the constraints.
    converged : bool
    """
    A = np.array(A0, dtype=np.float64, order="F", copy=True)
    symv, syr = get_blas_funcs(("symv", "syr"), (A,))
    rows = [np.ascontiguousarray(v) for v in diffs]
    dl = [float(s) for s in delta]
    bhat = [float(b) for b in bounds]
    lam = [0.0] * len(rows)
    g_proj = 1.0 if np.isinf(gamma) else gamma / (gamma + 1.0)
    inv_gamma = 0.0 if np.isinf(gamma) else 1.0 / gamma
    lam_old = np.zeros(len(rows))
    inf = float("inf")
    for it in range(1, max_iter + 1):
        for c, v in enumerate(rows):
            Av = symv(1.0, A, v)  # (d,) from the upper triangle
            p = float(v @ Av)
            if not 0.0 < p < inf:
                raise ValueError(
                    f"ITML: the squared distance of constraint {c} is {p} under the current "
                    "metric (float64 underflow or overflow); rescale the inputs"
                )
            s = dl[c]
            alpha = min(lam[c], s * g_proj * (1.0 / p - 1.0 / bhat[c]))
            lam[c] -= alpha
            bhat[c] = 1.0 / (1.0 / bhat[c] + s * alpha * inv_gamma)
            A = syr(s * alpha / (1.0 - s * alpha * p), Av, a=A, overwrite_a=1)
        lam_new = np.asarray(lam)
        norm = np.linalg.norm(lam_new) + np.linalg.norm(lam_old)
        conv = 0.0 if norm == 0 else float(np.abs(lam_new - lam_old).sum() / norm)
        if verbose:
            print(f"[ITML] pass {it:4d}  change {conv:.3e}")
        if conv < tol:
            return _symmetrize(A), it, True
        lam_old = lam_new
    return _symmetrize(A), max_iter, False


def _default_bounds(
    points: np.ndarray, A0: np.ndarray, rng: np.random.RandomState, max_points: int = 1000
) -> tuple[float, float]:
    """5th / 95th percentiles of the prior distance ``sqrt(d_A0)`` over pairs of points.

    The thresholds are then applied to squared distances, which makes them tighter than
    percentiles of squared distances; this is metric-learn's heuristic and gives better
    kNN accuracy and faster convergence on standardized data than the squared variant.
    """
    if points.shape[0] > max_points:
        points = points[rng.choice(points.shape[0], max_points, replace=False)]
    points = points - points.mean(axis=0)  # distances are translation invariant
    Z = points @ np.linalg.cholesky(A0)  # d_A0(x, y) = |(x - y) C|^2 with A0 = C C^T
    sq = (Z * Z).sum(axis=1)
    D = sq[:, None] + sq[None, :] - 2.0 * Z @ Z.T  # (p, p)
    iu = np.triu_indices(points.shape[0], k=1)
    if iu[0].size == 0:
        return 1.0, 1.0
    upper, lower = np.percentile(np.sqrt(np.maximum(D[iu], 0.0)), (5, 95))
    return float(upper), float(lower)


def _check_scale(diffs: np.ndarray, A0: np.ndarray) -> None:
    """Refuse pair differences whose squared prior distance is not a positive float."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        p = ((diffs @ A0) * diffs).sum(axis=1)  # (m,) squared prior distances
    bad = ~((p > 0) & np.isfinite(p))
    if bad.any():
        mags = np.abs(diffs[bad]).max(axis=1)
        raise ValueError(
            f"ITML: {int(bad.sum())} of {p.size} pair(s) have a squared prior distance that "
            f"is 0 or not finite in float64 (largest |x_a - x_b| of those from "
            f"{mags.min():.3g} to {mags.max():.3g}): the inputs are too small or too large; "
            "rescale them (e.g. StandardScaler)"
        )


def _symmetrize(A: np.ndarray) -> np.ndarray:
    upper = np.triu(A)
    return np.ascontiguousarray(upper + np.triu(A, 1).T)


class ITML(MahalanobisMixin):
    """ITML from similar / dissimilar pairs (weak supervision).

    Finds the ``M`` closest to a prior ``M0`` in LogDet divergence such that similar pairs
    have squared distance ``<= u`` and dissimilar ones ``>= l`` (with slack ``gamma``),
    by cyclic Bregman projections (see :func:`itml_bregman`). Runs on the CPU in numpy /
    BLAS: the projections are sequential, so a GPU would not help at small ``d``.

    ``fit(pairs, y)`` takes ``pairs (n_pairs, 2, n_features)`` and ``y (n_pairs,)`` in
    ``{+1, -1}`` (similar / dissimilar), metric-learn's convention; to learn from class
    labels use :class:`ITMLSupervised`.

    Parameters
    ----------
    gamma : float
        Slack trade-off (``inf``: hard constraints).
    max_iter : int
        Passes over the constraints; reaching it raises a ``ConvergenceWarning``.
    tol : float
        Relative change of the dual variables that stops the passes.
    prior : {'identity', 'covariance'} or ndarray of shape (n_features, n_features)
        ``M0``: identity, the inverse covariance of the paired points, or a given SPD matrix.
    bounds : tuple (u, l) or None
        Thresholds on the squared learned distance, both positive. ``None``: the 5th and 95th
        percentiles of the (unsquared) prior distances between the paired points (all
        pairs of them, or of 1000 drawn with ``random_state``), metric-learn's heuristic.
    n_components : int or None
        Keep the top ``n_components`` eigen-directions of ``M`` in ``components_`` (the
        solver itself is full rank).
    verbose : bool
    random_state : int, RandomState or None
        Subsample for the default bounds (and, in ITMLSupervised, the pair sampling).

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
    bounds_ : ndarray of shape (2,)
    n_iter_ : int
    n_features_in_ : int
    """

    def __init__(
        self,
        gamma: float = 1.0,
        max_iter: int = 1000,
        tol: float = 1e-3,
        prior: str | np.ndarray = "identity",
        bounds: tuple[float, float] | None = None,
        n_components: int | None = None,
        verbose: bool = False,
        random_state: Any = None,
    ) -> None:
        self.gamma = gamma
        self.max_iter = max_iter
        self.tol = tol
        self.prior = prior
        self.bounds = bounds
        self.n_components = n_components
        self.verbose = verbose
        self.random_state = random_state

    def fit(self, pairs: Any, y: Any) -> ITML:
        """Fit on ``pairs (n_pairs, 2, n_features)`` with ``y (n_pairs,)`` in {+1, -1}."""
        self._check_params()
        pairs = check_pairs(pairs)
        check_y_given(y, self, "the pair labels, one per pair: +1 similar, -1 dissimilar")
        check_label_types(y, what="pair labels",
                          hint="pair labels must be +1 (similar) or -1 (dissimilar)")
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:  # a column vector: one label per pair still
            y = y.ravel()
        if y.ndim != 1:
            raise ValueError(f"y must be 1-d, one label (+1 / -1) per pair, got shape "
                             f"{y.shape}")
        if y.shape[0] != pairs.shape[0]:
            raise ValueError(f"y has length {y.shape[0]} but there are {pairs.shape[0]} pairs")
        bad = np.setdiff1d(np.unique(y), [-1, 1])
        if bad.size:
            raise ValueError(f"pair labels must be +1 (similar) or -1 (dissimilar), got {bad}")
        self.n_features_in_ = pairs.shape[2]
        return self._fit_pairs(pairs, y.astype(np.float64))

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> np.ndarray:
        """Refused before any fitting: ITML learns from pairs ``(n_pairs, 2, n_features)``
        and transforms points ``(n, n_features)``, so no one array is both; call
        ``fit(pairs, y)``, then ``transform(X)`` (or use :class:`ITMLSupervised`, which
        learns from points and class labels)."""
        raise TypeError("ITML learns from pairs; call fit(pairs, y) then transform(X), or "
                        "use ITMLSupervised to fit_transform(X, y) with class labels")

    def _check_params(self) -> tuple[float, int, float, tuple[float, float] | None]:
        """``(gamma, max_iter, tol, bounds)`` checked (a ``ValueError`` naming a bad one)."""
        gamma = check_real("gamma", self.gamma, 0.0, np.inf, low_open=True)
        max_iter, tol = check_solver_params(self.max_iter, self.tol)
        if self.bounds is None:
            return gamma, max_iter, tol, None
        try:
            b = np.asarray(self.bounds, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            b = np.zeros(0)
        if b.size != 2 or not np.isfinite(b).all() or (b <= 0).any():
            raise ValueError(
                f"bounds must be two finite positive numbers (u, l), got {self.bounds!r}"
            )
        if b[0] > b[1]:
            raise ValueError(
                f"bounds (u, l) = {self.bounds!r}: the bound u on similar pairs' squared "
                "distance must not exceed the bound l on dissimilar pairs' (u <= l; "
                "similar pairs are the closer ones)")
        return gamma, max_iter, tol, (float(b[0]), float(b[1]))

    def _fit_pairs(self, pairs: np.ndarray, y: np.ndarray) -> ITML:
        gamma, max_iter, tol, bounds = self._check_params()
        d = pairs.shape[2]
        k = check_n_components(self.n_components, d)
        points = np.unique(pairs.reshape(-1, d), axis=0)
        diffs = pairs[:, 0] - pairs[:, 1]  # (m, d)
        keep = np.abs(diffs).sum(axis=1) > 0  # a pair of one point twice constrains nothing
        if not keep.any():
            raise ValueError(f"ITML: all {len(keep)} pairs join a point to itself (zero "
                             "difference), so no constraint is left to learn from")
        if not keep.all():
            warnings.warn(f"ITML: {int((~keep).sum())} of {len(keep)} pairs join a point to "
                          "itself (zero difference) and are dropped", UserWarning, stacklevel=3)
        diffs, y = diffs[keep], y[keep]
        A0 = self._prior(points)
        _check_scale(diffs, A0)
        if bounds is None:
            upper, lower = _default_bounds(points, A0, check_random_state(self.random_state))
            if not (np.isfinite(upper) and np.isfinite(lower)):
                raise ValueError("ITML: the default bounds are not finite: the distances "
                                 "between the points overflow float64; rescale the inputs")
            upper, lower = max(upper, 1e-9), max(lower, 1e-9)
        else:
            upper, lower = bounds
        self.bounds_ = np.array([upper, lower])
        A, self.n_iter_, converged = itml_bregman(
            diffs, y, np.where(y > 0, upper, lower), A0, gamma, max_iter, tol, self.verbose,
        )
        if not converged:
            warn_no_convergence("ITML", max_iter)
        if not np.isfinite(A).all():
            raise ValueError("ITML: the learned matrix is not finite (float64 overflow); "
                             "rescale the inputs")
        self.components_ = components_from_metric(A, k)
        return self

    def _prior(self, points: np.ndarray) -> np.ndarray:
        d = points.shape[1]
        if isinstance(self.prior, str):
            if self.prior == "identity":
                return np.eye(d)
            if self.prior == "covariance":
                cov = np.atleast_2d(np.cov(points, rowvar=False))
                if not np.isfinite(cov).all():
                    raise ValueError("ITML: the covariance of the points is not finite "
                                     "(float64 overflow); rescale the inputs")
                return np.linalg.inv(cov + 1e-6 * max(np.trace(cov) / d, 1e-12) * np.eye(d))
            raise ValueError(f"prior must be 'identity', 'covariance' or an array, got "
                             f"{self.prior!r}")
        A0 = check_array(self.prior, dtype=np.float64, input_name="prior")
        if A0.shape != (d, d) or not np.allclose(A0, A0.T):
            raise ValueError(f"prior must be a symmetric ({d}, {d}) matrix, got shape {A0.shape}")
        if np.linalg.eigvalsh(A0).min() <= 0:
            raise ValueError("prior must be strictly positive definite")
        return A0


class ITMLSupervised(ITML):
    """ITML from class labels: samples similar / dissimilar pairs, then runs :class:`ITML`.

    ``fit(X, y)`` draws ``n_constraints`` same-class pairs and as many different-class
    pairs (random anchors, ``random_state``); default ``20 * n_classes**2`` each.

    Parameters
    ----------
    n_constraints : int or None
        Pairs of each kind (similar, dissimilar) to sample.
    gamma, max_iter, tol, prior, bounds, n_components, verbose, random_state
        As in :class:`ITML`.
    """

    def __init__(
        self,
        gamma: float = 1.0,
        max_iter: int = 1000,
        tol: float = 1e-3,
        prior: str | np.ndarray = "identity",
        bounds: tuple[float, float] | None = None,
        n_components: int | None = None,
        n_constraints: int | None = None,
        verbose: bool = False,
        random_state: Any = None,
    ) -> None:
        super().__init__(gamma=gamma, max_iter=max_iter, tol=tol, prior=prior, bounds=bounds,
                         n_components=n_components, verbose=verbose, random_state=random_state)
        self.n_constraints = n_constraints

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> np.ndarray:
        """``fit(X, y).transform(X)``: learns from points and class labels."""
        return TransformerMixin.fit_transform(self, X, y, **fit_params)

    def fit(self, X: Any, y: Any) -> ITMLSupervised:  # type: ignore[override]
        """Fit on ``X (n_samples, n_features)`` with class labels ``y (n_samples,)``."""
        self._check_params()
        if self.n_constraints is not None:
            check_int_param("n_constraints", self.n_constraints, 1)
        check_y_given(y, self)
        X, y = _validate_data(self, X, y, dtype=np.float64, ensure_min_samples=2, order="C")
        codes = encode_labels(y)
        n_classes = int(codes.max()) + 1
        if np.bincount(codes).max() < 2:  # no same-class pair to draw
            raise ValueError("ITMLSupervised needs a class with at least 2 samples; every "
                             "class has 1")
        m = 20 * n_classes**2 if self.n_constraints is None else int(self.n_constraints)
        a, b, sim = sample_pairs(codes, m, check_random_state(self.random_state))
        pairs = np.stack([X[a], X[b]], axis=1)  # (2m, 2, d)
        return self._fit_pairs(pairs, sim)  # type: ignore[return-value]


def sample_pairs(
    codes: np.ndarray, m: int, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to ``m`` same-class and ``m`` different-class index pairs ``(a, b, +1/-1)``."""
    n = codes.shape[0]
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # similar: anchors from classes with >= 2 members, partner != anchor in the same class
    ok = np.flatnonzero(counts[codes] >= 2)
    pos_a = ok[rng.randint(0, ok.size, m)] if ok.size else np.zeros(0, dtype=np.int64)
    cnt = counts[codes[pos_a]]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts[codes[order]]  # position inside its class
    shift = rng.randint(1, np.maximum(cnt, 2))  # in [1, cnt - 1]
    pos_b = order[starts[codes[pos_a]] + (rank[pos_a] + shift) % np.maximum(cnt, 1)]
    # dissimilar: partner drawn from the samples outside the anchor's class
    neg_a = rng.randint(0, n, m)
    outside = n - counts[codes[neg_a]]
    j = (rng.random_sample(m) * outside).astype(np.int64)  # index among other classes
    before = starts[codes[neg_a]]
    neg_b = order[np.where(j < before, j, j + counts[codes[neg_a]])]
    a = np.concatenate([pos_a, neg_a])
    b = np.concatenate([pos_b, neg_b])
    sim = np.concatenate([np.ones(pos_a.size), -np.ones(m)])
    return a, b, sim
