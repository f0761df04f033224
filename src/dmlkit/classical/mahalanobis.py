"""Shared base of the Mahalanobis metric learners (scikit-learn estimators).

Every learner fits a linear map ``L = components_`` of shape ``(n_components, n_features)``
so that the learned distance is ``d(x, y) = |L (x - y)|_2`` and the Mahalanobis matrix is
``M = L^T L`` (PSD by construction). The base class gives them one surface:
``transform``, ``get_mahalanobis_matrix``, ``pair_distance`` / ``pair_score`` on
``(n, 2, d)`` pair arrays (metric-learn's convention), ``get_metric`` (a callable for
scikit-learn's neighbours) and ``as_distance`` (a dmlkit ``MahalanobisDistance`` module).

The module also holds the pieces the gradient-based solvers share: input validation,
device resolution, the initialisation of ``L``, the ``sum_im W_im (z_i - z_m)(x_i - x_m)^T``
gradient contraction and an L-BFGS driver (scipy's L-BFGS-B with torch-computed objective
and gradient).
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import scipy.sparse
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted

from dmlkit._checks import is_int

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn

    def _validate_data(estimator: Any, *args: Any, **kwargs: Any) -> Any:
        return estimator._validate_data(*args, **kwargs)


Tensor = torch.Tensor
#: elements of a per-chunk intermediate in the solvers (16M doubles = 128 MB)
CHUNK_BUDGET = 1 << 24
#: below this many ``n * n * d`` multiply-adds per evaluation a CPU solve runs on one thread
SMALL_WORK = 1 << 26


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; anything else goes to ``torch.device``.

    A CUDA (or MPS) device that this torch build or machine does not offer is a
    ``ValueError`` naming it and the devices that are available.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda[:i]', got {device!r}") from err
    if resolved.type == "cuda":
        n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n_gpus == 0 or (resolved.index is not None and resolved.index >= n_gpus):
            raise ValueError(
                f"device={device!r} is not available: {_available_devices()}"
            )
    elif resolved.type == "mps" and not _mps_available():
        raise ValueError(f"device={device!r} is not available: {_available_devices()}")
    return resolved


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _available_devices() -> str:
    """A sentence listing the devices this process can use."""
    names = ["'cpu'"]
    if torch.cuda.is_available():
        names += [f"'cuda:{i}'" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("'mps'")
    note = "" if torch.cuda.is_available() else (
        " (torch reports no usable CUDA GPU"
        + ("; this torch build has no CUDA support)" if torch.version.cuda is None else ")")
    )
    return f"available devices are {', '.join(names)}{note}"


@contextmanager
def solver_threads(device: torch.device, work: int) -> Iterator[None]:
    """Run a small CPU solve on one torch thread, restoring the count afterwards.

    On small problems thread hand-offs dominate each matmul (and on a loaded machine a
    2-thread pool can be 10-25x slower than one thread), so ``work < SMALL_WORK`` on the
    CPU is solved single-threaded. The thread count is process-wide while this runs.
    """
    if device.type != "cpu" or work >= SMALL_WORK or torch.get_num_threads() == 1:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def check_pairs(pairs: Any, n_features: int | None = None) -> np.ndarray:
    """Validate a ``(n, 2, d)`` array of pairs (finite, float64); sparse input is a
    ``TypeError`` (a sparse matrix is 2-d, and pairs are densified to solve anyway)."""
    if scipy.sparse.issparse(pairs):
        raise TypeError(
            f"pairs: sparse input is not supported, got a {pairs.shape[0]} x "
            f"{pairs.shape[1]} {type(pairs).__name__}; densify it with .toarray() and give "
            "pairs of shape (n_pairs, 2, n_features) (to learn from points X (n, "
            "n_features) and class labels, use ITMLSupervised)")
    arr = np.asarray(pairs)
    if arr.ndim != 3 or arr.shape[1] != 2:
        raise ValueError(f"pairs must have shape (n_pairs, 2, n_features), got {arr.shape}")
    flat = check_array(arr.reshape(-1, arr.shape[2]), dtype=np.float64, input_name="pairs")
    if n_features is not None and flat.shape[1] != n_features:
        raise ValueError(
            f"pairs have {flat.shape[1]} features, but the metric expects {n_features} features"
        )
    return flat.reshape(arr.shape)


def check_label_types(y: Any, name: str = "y", what: str = "class labels",
                      hint: str = "give all numbers or all strings") -> None:
    """A ``ValueError`` when the values of an object array ``y`` mix kinds (numbers and
    strings, say), which no sort or label encoder can order; ``hint`` says what to give."""
    arr = np.asarray(y)
    if arr.dtype != object or arr.size == 0:
        return
    seen: dict[str, Any] = {}
    for value in arr.ravel():
        if isinstance(value, (str, bytes, np.str_, np.bytes_)):
            kind = "string"
        elif isinstance(value, (numbers.Number, np.number, np.bool_)):
            kind = "number"
        else:
            kind = type(value).__name__
        seen.setdefault(kind, value)
    if len(seen) > 1:
        examples = ", ".join(f"{kind} {value!r}" for kind, value in seen.items())
        raise ValueError(f"{name} ({what}) mix types: {examples}; {hint}")


def check_y_given(y: Any, estimator: Any, what: str = "class labels, one per row of X") -> None:
    """A ``ValueError`` when ``fit`` got no ``y`` (``None``), naming what ``y`` holds (in
    words that scikit-learn's ``check_requires_y_none`` reads as a clear refusal)."""
    if y is None:
        raise ValueError(f"{type(estimator).__name__}.fit requires y to be passed, but the "
                         f"target y is None: give y ({what})")


def encode_labels(y: np.ndarray, min_classes: int = 2) -> np.ndarray:
    """Classification targets -> int64 codes ``0..C-1``; too few classes is a ValueError,
    and so are labels mixing numbers and strings (:func:`check_label_types`)."""
    check_label_types(y)
    check_classification_targets(y)
    codes = LabelEncoder().fit_transform(y).astype(np.int64)
    n_classes = int(codes.max()) + 1 if codes.size else 0
    if n_classes < min_classes:
        raise ValueError(
            f"metric learning from labels needs at least {min_classes} classes, got "
            f"{n_classes} class(es): {np.unique(y)[:5].tolist()}"
        )
    return codes


def check_n_components(n_components: int | None, n_features: int) -> int:
    """``n_components`` as an int in ``[1, n_features]`` (``None``: ``n_features``).

    A bad value is a ``ValueError`` naming it and its type, the parameters' one rule
    (:mod:`dmlkit.classical.params`): ``2.0`` or ``True`` is refused, never truncated.
    """
    if n_components is None:
        return n_features
    if not is_int(n_components):
        raise ValueError(f"n_components must be an integer >= 1 or None, got "
                         f"{n_components!r} ({type(n_components).__name__})")
    if not 1 <= n_components <= n_features:
        raise ValueError(
            f"n_components={n_components} must be between 1 and n_features={n_features}"
        )
    return int(n_components)


def center(X: np.ndarray) -> np.ndarray:
    """``X`` minus its column means (float64).

    The learners' objectives depend on ``X`` only through differences ``x_i - x_j``, so
    they are solved on centred data: the same objective, without the cancellation that
    expanded distances ``|a|^2 + |b|^2 - 2 a.b`` suffer on data far from the origin. The
    learned ``L`` still applies to raw inputs (``transform(X) = X @ L.T``).
    """
    return X - X.mean(axis=0, dtype=np.float64)


def check_scale(X: np.ndarray, name: str) -> None:
    """Refuse a centred ``X`` whose squared row norms overflow float64, or all underflow
    to 0 although ``X`` is not constant (then no distance carries information)."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        sq = np.einsum("ij,ij->i", X, X)  # (n,)
    largest = float(np.abs(X).max()) if X.size else 0.0
    if not np.isfinite(sq).all():
        what = "overflow"
    elif largest > 0 and not sq.max() > 0:
        what = "underflow to 0"
    else:
        return
    raise ValueError(
        f"{name}: squared distances {what} in float64 on this X (largest |x - mean(x)| "
        f"is {largest:.3g}); rescale X (e.g. StandardScaler)"
    )


def init_components(
    init: str | np.ndarray,
    X: np.ndarray,
    y: np.ndarray | None,
    n_components: int,
    random_state: Any,
) -> np.ndarray:
    """Initial ``L (n_components, n_features)``: 'auto', 'pca', 'lda', 'identity', 'random'.

    'auto' follows scikit-learn's NCA: LDA when ``n_components <= n_classes - 1``, PCA when
    ``n_components < n_features``, else the identity. As in scikit-learn, 'pca' with
    ``n_components > min(n_samples, n_features)`` is a ``ValueError``. Where LDA finds
    fewer than ``n_components`` discriminant directions (rank-deficient ``X``, or class
    means spanning fewer dimensions) scikit-learn silently returns fewer rows; here a
    ``UserWarning`` says so and the remaining rows are the leading principal directions
    of ``X`` orthogonal to the LDA ones, so ``L`` keeps ``n_components`` rows.
    """
    n, d = X.shape
    if not isinstance(init, str):
        L = check_array(init, dtype=np.float64, input_name="init")
        if L.shape != (n_components, d):
            raise ValueError(f"init has shape {L.shape}, expected ({n_components}, {d})")
        return L.copy()
    if init == "auto":
        n_classes = len(np.unique(y)) if y is not None else 0
        if y is not None and n_components <= min(d, n_classes - 1):
            init = "lda"
        elif n_components < min(d, n):
            init = "pca"
        else:
            init = "identity"
    if init == "identity":
        return np.eye(n_components, d)
    if init == "random":
        return check_random_state(random_state).standard_normal((n_components, d))
    if init == "pca":
        from sklearn.decomposition import PCA

        if n_components > min(n, d):
            raise ValueError(
                f"init='pca' gives at most min(n_samples, n_features)={min(n, d)} "
                f"components, got n_components={n_components}; use a smaller "
                "n_components or init='identity' / 'random'"
            )
        return PCA(n_components=n_components, random_state=random_state).fit(X).components_
    if init == "lda":
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        if y is None:
            raise ValueError("init='lda' needs class labels")
        n_classes = len(np.unique(y))
        if n_components > min(d, n_classes - 1):
            raise ValueError(
                f"init='lda' gives at most min(n_features, n_classes - 1) = "
                f"{min(d, n_classes - 1)} components here ({d} features, {n_classes} "
                f"classes), got n_components={n_components}; use init='pca' or 'auto', or "
                f"n_components <= {min(d, n_classes - 1)}"
            )
        lda = LinearDiscriminantAnalysis(n_components=n_components).fit(X, y)
        L = lda.scalings_.T[:n_components]
        if L.shape[0] < n_components:
            warnings.warn(
                f"init='lda' found only {L.shape[0]} discriminant direction(s) for "
                f"n_components={n_components} (X or its class means span too few "
                "dimensions); the other rows start from principal directions",
                UserWarning,
                stacklevel=3,
            )
            L = np.vstack([L, _complement_directions(X, L, n_components - L.shape[0])])
        return L.copy()
    raise ValueError(
        f"init must be 'auto', 'pca', 'lda', 'identity', 'random' or an array, got {init!r}"
    )


def _complement_directions(X: np.ndarray, rows: np.ndarray, m: int) -> np.ndarray:
    """``m`` orthonormal directions orthogonal to ``rows (r, d)``, by variance of ``X``.

    The leading eigenvectors of ``P (C + t I) P`` with ``C`` the covariance of ``X``,
    ``P`` the projector onto the complement of the rows' span and ``t > 0``: on that
    complement ``t P`` is ``t I`` (the order by variance is unchanged) while the rows'
    span has eigenvalue 0, so the result never falls back into it.
    """
    d = X.shape[1]
    Q, _ = np.linalg.qr(rows.T)  # (d, r)
    P = np.eye(d) - Q @ Q.T  # (d, d)
    Xc = X - X.mean(axis=0)
    C = Xc.T @ Xc / max(X.shape[0] - 1, 1)  # (d, d)
    t = max(float(np.trace(C)) / d, np.finfo(np.float64).tiny)
    _, V = np.linalg.eigh(P @ (C + t * np.eye(d)) @ P)  # ascending
    return V[:, ::-1][:, :m].T.copy()


def components_from_metric(M: np.ndarray, n_components: int | None = None) -> np.ndarray:
    """``L (k, d)`` with ``L^T L = M`` from the top ``k`` eigenpairs of a symmetric ``M``."""
    M = (M + M.T) / 2.0
    w, V = np.linalg.eigh(M)  # ascending
    w, V = w[::-1].clip(min=0.0), V[:, ::-1]
    k = M.shape[0] if n_components is None else n_components
    return (V[:, :k] * np.sqrt(w[:k])).T.copy()


def weighted_pair_grad(
    Wc: Tensor, Xc: Tensor, Zc: Tensor, X: Tensor, L: Tensor
) -> tuple[Tensor, Tensor]:
    """Row-chunk part of ``sum_im W_im (z_i - z_m)(x_i - x_m)^T`` without forming pairs.

    ``Wc (c, n)`` weights rows ``i`` of a chunk against all ``m``; ``Xc (c, d)``,
    ``Zc = Xc L^T (c, k)``, ``X (n, d)``, ``L (k, d)``. Returns the chunk's ``(k, d)``
    part except the ``sum_m s_m z_m x_m^T`` term, and the column sums ``s (n,)`` to add
    it once (see :func:`finish_pair_grad`). With ``d_im = |L(x_i - x_m)|^2`` and
    ``W = dLoss/dD``, ``dLoss/dL = 2 * (that sum)``. One ``(c, n) x (n, d)`` product.
    """
    r = Wc.sum(dim=1, keepdim=True)  # (c, 1)
    WX = Wc @ X  # (c, d)
    g = (Zc * r).T @ Xc - Zc.T @ WX - (WX @ L.T).T @ Xc  # (k, d)
    return g, Wc.sum(dim=0)  # (k, d), (n,)


def finish_pair_grad(g: Tensor, col_sums: Tensor, X: Tensor, Z: Tensor) -> Tensor:
    """Add the ``sum_m s_m z_m x_m^T`` term and the factor 2: ``dLoss/dL (k, d)``."""
    return 2.0 * (g + (Z * col_sums[:, None]).T @ X)


class ManualGradObjective(torch.autograd.Function):
    """Wrap ``fn(L) -> (loss, dloss/dL)`` as an autograd function (for gradcheck)."""

    @staticmethod
    def forward(ctx: Any, L: Tensor, fn: Callable[[Tensor], tuple[Tensor, Tensor]]) -> Tensor:
        loss, grad = fn(L.detach())
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:
        (grad,) = ctx.saved_tensors
        return grad_out * grad, None


def lbfgs(
    fn: Callable[[Tensor], tuple[Tensor, Tensor]],
    L0: np.ndarray,
    device: torch.device,
    max_iter: int,
    tol: float,
    verbose: bool,
    name: str,
    hint: str = "",
) -> tuple[np.ndarray, int, float]:
    """Minimise ``fn(L) -> (loss, grad)`` with scipy's L-BFGS-B; warn at ``max_iter``.

    The objective and gradient are computed by torch on ``device`` (in the precision
    ``fn`` chooses; the solver itself runs in float64); only the ``(k, d)`` parameter
    crosses to the host per evaluation. Returns ``(L, n_iter, loss)``. A solve that ends
    on a non-finite objective or gradient (overflow) is a ``ValueError``, with ``hint``
    appended to its message.
    """
    from scipy.optimize import minimize

    shape = L0.shape
    calls = [0]

    def fun(flat: np.ndarray) -> tuple[float, np.ndarray]:
        L = torch.from_numpy(flat.reshape(shape)).to(device)
        loss, grad = fn(L)
        calls[0] += 1
        if verbose:
            print(f"[{name}] evaluation {calls[0]:4d}  loss {float(loss):.6g}")
        return float(loss), grad.detach().cpu().numpy().ravel().astype(np.float64)

    res = minimize(
        fun, L0.ravel(), jac=True, method="L-BFGS-B", tol=tol, options={"maxiter": max_iter}
    )
    if not (np.isfinite(res.fun) and np.isfinite(res.x).all() and np.isfinite(res.jac).all()):
        raise ValueError(
            f"{name}: the objective is {float(res.fun)} with a "
            f"{'finite' if np.isfinite(res.jac).all() else 'non-finite'} gradient after "
            f"{calls[0]} evaluation(s), so no metric was learned: the data's scale overflows "
            f"the arithmetic; rescale X (e.g. StandardScaler){hint}"
        )
    if res.status == 1 or res.nit >= max_iter:
        warn_no_convergence(name, max_iter)
    return res.x.reshape(shape), int(res.nit), float(res.fun)


def warn_no_convergence(name: str, max_iter: int) -> None:
    warnings.warn(
        f"{name} did not converge in max_iter={max_iter} iterations; increase max_iter",
        ConvergenceWarning,
        stacklevel=3,
    )


class MahalanobisMixin(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Base of the learners: everything that follows from a fitted ``components_``.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        The linear map ``L``; the learned distance is ``|L (x - y)|``.
    n_features_in_ : int
        Number of input features seen in ``fit``.
    """

    #: whether ``fit`` needs ``y`` (class labels, or pair labels for pair learners)
    _requires_y: bool = True

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.required = self._requires_y
        return tags

    def _more_tags(self) -> dict[str, Any]:  # scikit-learn < 1.6
        return {"requires_y": self._requires_y}

    @property
    def _n_features_out(self) -> int:
        return int(self.components_.shape[0])

    # -- validation ----------------------------------------------------------------------
    def _validate_xy(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        check_y_given(y, self)
        X, y = _validate_data(self, X, y, dtype=np.float64, ensure_min_samples=2, order="C")
        return X, encode_labels(y)

    # -- the learned metric ----------------------------------------------------------------
    def transform(self, X: Any) -> np.ndarray:
        """Map ``X (n, n_features)`` to ``X L^T (n, n_components)``."""
        check_is_fitted(self, "components_")
        X = _validate_data(self, X, dtype=np.float64, reset=False)
        return X @ self.components_.T

    def get_mahalanobis_matrix(self) -> np.ndarray:
        """The PSD matrix ``M = L^T L`` of shape ``(n_features, n_features)``."""
        check_is_fitted(self, "components_")
        return self.components_.T @ self.components_

    def pair_distance(self, pairs: Any) -> np.ndarray:
        """Learned distance ``|L (a - b)|`` of each pair in ``pairs (n, 2, d)`` -> ``(n,)``."""
        check_is_fitted(self, "components_")
        pairs = check_pairs(pairs, self.n_features_in_)
        diff = (pairs[:, 0] - pairs[:, 1]) @ self.components_.T  # (n, k)
        return np.sqrt((diff * diff).sum(axis=1))

    def pair_score(self, pairs: Any) -> np.ndarray:
        """Similarity score of each pair (larger = more similar): ``-pair_distance``."""
        return -self.pair_distance(pairs)

    def get_metric(self) -> Callable[[np.ndarray, np.ndarray], float]:
        """A callable ``metric(u, v) -> float`` (for ``KNeighborsClassifier(metric=...)``)."""
        check_is_fitted(self, "components_")
        L = self.components_.copy()

        def metric(u: np.ndarray, v: np.ndarray) -> float:
            diff = L @ (np.asarray(u, dtype=np.float64) - np.asarray(v, dtype=np.float64))
            return float(np.sqrt(diff @ diff))

        return metric

    def as_distance(self, squared: bool = False) -> Any:
        """The learned metric as a dmlkit :class:`~dmlkit.distances.MahalanobisDistance`."""
        from dmlkit.distances.mahalanobis import MahalanobisDistance

        check_is_fitted(self, "components_")
        return MahalanobisDistance(components=torch.from_numpy(self.components_.copy()),
                                   squared=squared)
