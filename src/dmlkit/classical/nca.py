"""Neighbourhood Components Analysis (Goldberger et al., NIPS 2004)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from dmlkit.classical.mahalanobis import (
    CHUNK_BUDGET,
    MahalanobisMixin,
    check_n_components,
    finish_pair_grad,
    init_components,
    lbfgs,
    resolve_device,
    solver_threads,
    weighted_pair_grad,
)
from dmlkit.functional.chunking import chunk_size_for, row_chunks


def nca_loss_grad(
    L: Tensor, X: Tensor, labels: Tensor, budget: int = CHUNK_BUDGET
) -> tuple[Tensor, Tensor]:
    """NCA objective ``-sum_i p_i`` and its gradient with respect to ``L``.

    ``p_ij = softmax_{j != i}(-|L x_i - L x_j|^2)`` and ``p_i = sum_{j: y_j = y_i} p_ij`` is
    the probability that ``x_i`` is classified correctly by a stochastic nearest neighbour
    (scikit-learn's ``NeighborhoodComponentsAnalysis`` minimises the same sum).

    Parameters
    ----------
    L : Tensor of shape (k, d)
    X : Tensor of shape (n, d)
    labels : Tensor of shape (n,), int64
    budget : int
        Elements of one ``(chunk, n)`` block; rows are processed in chunks so memory is
        ``O(chunk * n)``.

    Returns
    -------
    loss : Tensor, scalar
    grad : Tensor of shape (k, d)
    """
    n = X.shape[0]
    Z = X @ L.T  # (n, k)
    neg_z_sq = -(Z * Z).sum(dim=1)  # (n,)
    loss = X.new_zeros(())
    g = L.new_zeros(L.shape)  # (k, d)
    col_sums = X.new_zeros(n)  # (n,)
    for start, stop in row_chunks(n, chunk_size_for(n, n, budget)):
        rows = torch.arange(start, stop, device=X.device)  # (c,)
        Zc, Xc = Z[start:stop], X[start:stop]  # (c, k), (c, d)
        # -|z_i - z_m|^2 up to the row constant -|z_i|^2, which softmax ignores
        logits = torch.addmm(neg_z_sq[None, :], Zc, Z.T, alpha=2.0)  # (c, n)
        logits[rows - start, rows] = float("-inf")
        p = torch.softmax(logits, dim=1)  # (c, n)
        same = labels[start:stop, None] == labels[None, :]  # (c, n)
        p_same = torch.where(same, p, 0.0)  # (c, n), zero on the diagonal since p_ii = 0
        p_i = p_same.sum(dim=1)  # (c,)
        loss = loss - p_i.sum()
        W = p_same.addcmul_(p, p_i[:, None], value=-1.0)  # (c, n) = dLoss/dD = p(s - p_i)
        g_c, s_c = weighted_pair_grad(W, Xc, Zc, X, L)
        g, col_sums = g + g_c, col_sums + s_c
    return loss, finish_pair_grad(g, col_sums, X, Z)


class NCA(MahalanobisMixin):
    """Neighbourhood Components Analysis (Goldberger, Roweis, Hinton & Salakhutdinov, 2004).

    Learns ``L`` maximising the expected leave-one-out accuracy of a stochastic
    (softmax) nearest-neighbour classifier, ``sum_i p_i``, with L-BFGS. The objective and
    its closed-form gradient are computed by torch in float64 in row chunks (memory
    ``O(chunk * n)``), on the GPU when there is one.

    Parameters
    ----------
    n_components : int or None
        Output dimension ``k`` (``None``: ``n_features``). ``k < n_features`` learns a
        low-rank metric, cheaper on high-dimensional inputs.
    init : {'auto', 'pca', 'lda', 'identity', 'random'} or ndarray of shape (k, n_features)
        Initial ``L`` (see scikit-learn's NCA; 'auto' picks LDA, PCA or identity).
    max_iter : int
        L-BFGS iterations; reaching it raises a ``ConvergenceWarning``.
    tol : float
        L-BFGS tolerance (scipy's ``tol``).
    verbose : bool
        Print the objective at each evaluation.
    random_state : int, RandomState or None
        Seed for ``init='random'`` and PCA.
    device : str
        ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
    n_iter_ : int
    objective_ : float
        Final value of ``-sum_i p_i``.
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

    def fit(self, X: Any, y: Any) -> NCA:
        """Fit on ``X (n_samples, n_features)`` with class labels ``y (n_samples,)``."""
        X, codes = self._validate_xy(X, y)
        k = check_n_components(self.n_components, X.shape[1])
        L0 = init_components(self.init, X, codes, k, self.random_state)
        device = resolve_device(self.device)
        Xt = torch.tensor(X, device=device)
        yt = torch.from_numpy(codes).to(device)
        with solver_threads(device, X.shape[0] ** 2 * X.shape[1]):
            L, self.n_iter_, self.objective_ = lbfgs(
                lambda Lt: nca_loss_grad(Lt, Xt, yt),
                L0, device, self.max_iter, self.tol, self.verbose, "NCA",
            )
        self.components_ = L
        return self
