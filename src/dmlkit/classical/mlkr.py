"""Metric Learning for Kernel Regression (Weinberger & Tesauro, AISTATS 2007)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from dmlkit.classical.mahalanobis import (
    CHUNK_BUDGET,
    MahalanobisMixin,
    _validate_data,
    center,
    check_label_types,
    check_n_components,
    check_scale,
    check_y_given,
    finish_pair_grad,
    init_components,
    lbfgs,
    resolve_device,
    solver_threads,
    weighted_pair_grad,
)
from dmlkit.classical.params import check_solver_params
from dmlkit.functional.chunking import chunk_size_for, row_chunks


def mlkr_loss_grad(
    L: Tensor, X: Tensor, y: Tensor, budget: int = CHUNK_BUDGET
) -> tuple[Tensor, Tensor]:
    """Leave-one-out kernel regression error ``sum_i (y_i - yhat_i)^2`` and ``d/dL``.

    ``yhat_i = sum_{j != i} k_ij y_j / sum_{j != i} k_ij`` with the Gaussian kernel
    ``k_ij = exp(-|L x_i - L x_j|^2)``, i.e. ``yhat = p y`` with ``p`` the row softmax of
    ``-D``. ``dLoss/dD_im = 2 (y_i - yhat_i) p_im (y_m - yhat_i)``.

    Parameters
    ----------
    L : Tensor of shape (k, d)
    X : Tensor of shape (n, d)
    y : Tensor of shape (n,) or (n, T), float
        Targets; with ``T`` columns the loss sums the squared errors of all of them
        (``dLoss/dD_im = 2 p_im sum_t err_it (y_mt - yhat_it)``).
    budget : int
        Elements of one ``(chunk, n)`` block.

    Returns
    -------
    loss : Tensor, scalar
    grad : Tensor of shape (k, d)
    """
    n = X.shape[0]
    Z = X @ L.T  # (n, k)
    neg_z_sq = -(Z * Z).sum(dim=1)  # (n,)
    loss = X.new_zeros(())
    g = L.new_zeros(L.shape)
    col_sums = X.new_zeros(n)
    for start, stop in row_chunks(n, chunk_size_for(n, n, budget)):
        rows = torch.arange(start, stop, device=X.device)  # (c,)
        Zc, Xc = Z[start:stop], X[start:stop]  # (c, k), (c, d)
        logits = torch.addmm(neg_z_sq[None, :], Zc, Z.T, alpha=2.0)  # (c, n), -D + const
        logits[rows - start, rows] = float("-inf")
        p = torch.softmax(logits, dim=1)  # (c, n)
        if y.dim() == 1:
            yhat = p @ y  # (c,)
            err = y[start:stop] - yhat  # (c,)
            W = p * (y[None, :] - yhat[:, None]) * (2.0 * err[:, None])  # (c, n) = dLoss/dD
        else:  # (n, T) targets: the squared errors of every column add up
            yhat = p @ y  # (c, T)
            err = y[start:stop] - yhat  # (c, T)
            W = 2.0 * p * (err @ y.T - (err * yhat).sum(dim=1, keepdim=True))  # (c, n)
        loss = loss + (err * err).sum()
        g_c, s_c = weighted_pair_grad(W, Xc, Zc, X, L)
        g, col_sums = g + g_c, col_sums + s_c
    return loss, finish_pair_grad(g, col_sums, X, Z)


def check_targets_vary(y: np.ndarray) -> None:
    """A ``ValueError`` unless the targets ``y`` ``(n,)`` or ``(n, T)`` take at least 2
    distinct values (rows): constant targets (one class) leave nothing to regress, and
    the solver would stop at once with ``L`` unchanged."""
    distinct = np.unique(y, axis=0) if y.ndim == 2 else np.unique(y)
    if distinct.shape[0] < 2:
        shown = distinct[:5].tolist()
        raise ValueError(
            f"MLKR needs targets y with at least 2 distinct values (for class labels: at "
            f"least 2 classes), got {distinct.shape[0]} distinct value(s): {shown}; "
            "constant targets leave nothing to regress")


class MLKR(MahalanobisMixin):
    """Metric Learning for Kernel Regression (Weinberger & Tesauro, 2007).

    Learns ``L`` minimising the leave-one-out squared error of Nadaraya-Watson kernel
    regression with a Gaussian kernel in the learned space; ``y`` is a real-valued
    target (class labels work too, read as numbers). L-BFGS on a closed-form gradient,
    computed by torch in float64 in row chunks, on the GPU when there is one.

    Parameters
    ----------
    n_components : int or None
        Output dimension (``None``: ``n_features``).
    init : {'auto', 'pca', 'identity', 'random'} or ndarray of shape (k, n_features)
        Initial ``L``; 'auto' is PCA when ``n_components < n_features``, else identity.
    max_iter, tol : int, float
        L-BFGS limits; reaching ``max_iter`` raises a ``ConvergenceWarning``.
    verbose : bool
    random_state : int, RandomState or None
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Notes
    -----
    ``fit`` solves on ``X`` minus its mean (the kernel depends on differences only);
    ``components_`` applies to raw ``X``.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
    n_iter_ : int
    objective_ : float
    n_features_in_ : int
    """

    def __init__(
        self,
        n_components: int | None = None,
        init: str | np.ndarray = "auto",
        max_iter: int = 100,
        tol: float = 1e-5,
        verbose: bool = False,
        random_state: Any = None,
        device: str = "auto",
    ) -> None:
        self.n_components = n_components
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.random_state = random_state
        self.device = device

    def fit(self, X: Any, y: Any) -> MLKR:
        """Fit on ``X (n_samples, n_features)`` with real targets ``y (n_samples,)`` or
        ``(n_samples, n_targets)`` (e.g. one-hot class indicators)."""
        check_y_given(y, self, "real targets, one row per row of X")
        check_label_types(y, what="targets", hint="MLKR regresses real-valued targets: give "
                          "numbers (for class labels, their one-hot indicators)")
        X, y = _validate_data(self, X, y, dtype=np.float64, y_numeric=True,
                              ensure_min_samples=2, multi_output=True, order="C")
        y = np.asarray(y, dtype=np.float64)
        check_targets_vary(y)
        max_iter, tol = check_solver_params(self.max_iter, self.tol)
        k = check_n_components(self.n_components, X.shape[1])
        device = resolve_device(self.device)
        X = center(X)  # the objective depends on differences only
        check_scale(X, "MLKR")
        L0 = init_components(self.init, X, None, k, self.random_state)
        Xt = torch.tensor(X, device=device)
        yt = torch.tensor(y, device=device)
        with solver_threads(device, X.shape[0] ** 2 * X.shape[1]):
            L, self.n_iter_, self.objective_ = lbfgs(
                lambda Lt: mlkr_loss_grad(Lt, Xt, yt),
                L0, device, max_iter, tol, self.verbose, "MLKR",
            )
        self.components_ = L
        return self
