"""Neighbourhood Components Analysis (Goldberger et al., NIPS 2004)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from dmlkit.classical.mahalanobis import (
    CHUNK_BUDGET,
    MahalanobisMixin,
    center,
    check_n_components,
    check_scale,
    finish_pair_grad,
    init_components,
    lbfgs,
    resolve_device,
    solver_threads,
    weighted_pair_grad,
)
from dmlkit.classical.params import check_solver_params
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
    if n * n <= budget:
        return nca_loss_grad_dense(L, X, same_label_weights(labels, X.dtype))
    Z = X @ L.T  # (n, k)
    neg_z_sq = -(Z * Z).sum(dim=1)  # (n,)
    loss = X.new_zeros((), dtype=torch.float64)
    g = L.new_zeros(L.shape)  # (k, d)
    col_sums = X.new_zeros(n)  # (n,)
    for start, stop in row_chunks(n, chunk_size_for(n, n, budget)):
        rows = torch.arange(start, stop, device=X.device)  # (c,)
        Zc, Xc = Z[start:stop], X[start:stop]  # (c, k), (c, d)
        # -|z_i - z_m|^2 up to the row constant -|z_i|^2, which softmax ignores
        logits = torch.addmm(neg_z_sq[None, :], Zc, Z.T, alpha=2.0)  # (c, n)
        logits[rows - start, rows] = float("-inf")
        p = row_softmax(logits)  # (c, n)
        same = labels[start:stop, None] == labels[None, :]  # (c, n)
        p_same = torch.where(same, p, 0.0)  # (c, n), zero on the diagonal since p_ii = 0
        p_i = p_same.sum(dim=1)  # (c,)
        loss = loss - p_i.sum(dtype=torch.float64)
        W = flush_subnormal_(p_same.addcmul_(p, p_i[:, None], value=-1.0))  # (c, n) = p(s - p_i)
        g_c, s_c = weighted_pair_grad(W, Xc, Zc, X, L)
        g, col_sums = g + g_c, col_sums + s_c
    return loss, finish_pair_grad(g, col_sums, X, Z)


def flush_subnormal_(t: Tensor) -> Tensor:
    """``t`` with its subnormal entries (nonzero, below the smallest normal number of its
    dtype) set to 0, in place. Far neighbours' softmax probabilities underflow into that
    range in float32, where CPUs compute many times slower; they are below 1.2e-38, so
    dropping them changes the objective and gradient by less than float32 resolves."""
    return t.masked_fill_(t.abs() < torch.finfo(t.dtype).tiny, 0.0)


def row_softmax(logits: Tensor) -> Tensor:
    """``softmax(logits, dim=1)`` with no subnormal entries (:func:`flush_subnormal_`);
    logits more than 80 below their row's largest are exactly 0 before the exponential,
    whose subnormal results are as slow as the products after it."""
    if logits.dtype != torch.float64:
        peak = logits.amax(dim=1, keepdim=True)  # (c, 1)
        logits = logits.masked_fill(logits < peak - 80.0, float("-inf"))
    return flush_subnormal_(torch.softmax(logits, dim=1))


def same_label_weights(labels: Tensor, dtype: torch.dtype) -> Tensor:
    """``(n, n)`` matrix with 1 where ``labels[i] == labels[j]`` and 0 elsewhere."""
    return (labels[:, None] == labels[None, :]).to(dtype)  # (n, n)


def nca_loss_grad_dense(L: Tensor, X: Tensor, same: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`nca_loss_grad` in one ``(n, n)`` block, given ``same = same_label_weights(y)``.

    With ``W = dLoss/dD`` (``D`` the squared distances), ``r`` / ``s`` its row / column
    sums and ``A = diag(r + s) - W - W^T`` (symmetric), the gradient
    ``2 sum_ij W_ij (z_i - z_j)(x_i - x_j)^T`` is ``2 Z^T A X``: two products, the
    ``(n, n)`` one against the narrower of ``Z (n, k)`` and ``X (n, d)``. Temporaries are
    updated in place, so the solver holds about three ``(n, n)`` arrays.
    """
    Z = X @ L.T  # (n, k)
    z_sq = (Z * Z).sum(dim=1, keepdim=True)  # (n, 1)
    # -|z_i - z_m|^2 up to the row constant -|z_i|^2, which softmax ignores, as one
    # product of (n, k + 1) factors: 2 z_i.z_m - |z_m|^2
    left = torch.cat([2.0 * Z, -torch.ones_like(z_sq)], dim=1)  # (n, k + 1)
    logits = left @ torch.cat([Z, z_sq], dim=1).T  # (n, n)
    logits.diagonal().fill_(float("-inf"))
    p = row_softmax(logits)  # (n, n), p_ii = 0
    del logits
    W = p * same  # (n, n)
    p_i = W.sum(dim=1)  # (n,)
    loss = -p_i.sum(dtype=torch.float64)
    flush_subnormal_(W.addcmul_(p, p_i[:, None], value=-1.0))  # (n, n) = dLoss/dD = p(s - p_i)
    del p
    diag = W.sum(dim=1) + W.sum(dim=0)  # (n,) = r + s
    A = torch.add(W, W.T).neg_()  # (n, n), symmetric
    del W
    A.diagonal().add_(diag)
    if Z.shape[1] <= X.shape[1]:
        grad = (Z.T @ A) @ X  # (k, n) (n, d)
    else:
        grad = Z.T @ (A @ X)  # (k, n) (n, d)
    return loss, 2.0 * grad


PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


class NCA(MahalanobisMixin):
    """Neighbourhood Components Analysis (Goldberger, Roweis, Hinton & Salakhutdinov, 2004).

    Learns ``L`` maximising the expected leave-one-out accuracy of a stochastic
    (softmax) nearest-neighbour classifier, ``sum_i p_i``, with L-BFGS. The objective and
    its closed-form gradient are computed by torch (in one ``(n, n)`` block, or in row
    chunks of memory ``O(chunk * n)`` for large ``n``), on the GPU when there is one.

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
    precision : {'float32', 'float64'}
        Arithmetic of the ``O(n^2 k)`` products, the softmax and the gradient.
        ``'float32'`` (default) is as fast as float64 or up to 2-3x faster on CPUs,
        depending on the CPU (more on most GPUs); the
        objective is still summed in float64 and L-BFGS runs in float64, but the
        gradient carries ~1e-6 relative error, so the solver may stop at a slightly
        different point (on iris and digits: the same iterations, objective within
        2e-7 relative, the same 3-NN accuracy). ``'float64'`` follows scikit-learn's
        ``NeighborhoodComponentsAnalysis`` to rounding.

    Notes
    -----
    ``fit`` solves on ``X`` minus its mean (the objective depends on differences only),
    so the fit does not depend on where the data sits; ``components_`` applies to raw
    ``X``. A solve whose objective overflows (``X`` too large for ``precision``) is a
    ``ValueError``.

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
        precision: str = "float32",
    ) -> None:
        self.n_components = n_components
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.random_state = random_state
        self.device = device
        self.precision = precision

    def fit(self, X: Any, y: Any) -> NCA:
        """Fit on ``X (n_samples, n_features)`` with class labels ``y (n_samples,)``."""
        X, codes = self._validate_xy(X, y)
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be 'float64' or 'float32', got {self.precision!r}"
            )
        dtype = PRECISIONS[self.precision]
        max_iter, tol = check_solver_params(self.max_iter, self.tol)
        k = check_n_components(self.n_components, X.shape[1])
        if np.bincount(codes).max() < 2:  # no item has a same-class neighbour to pick
            raise ValueError("NCA needs a class with at least 2 samples; every class has 1")
        device = resolve_device(self.device)
        X = center(X)  # the objective depends on differences only
        check_scale(X, "NCA")
        L0 = init_components(self.init, X, codes, k, self.random_state)
        Xt = torch.tensor(X, device=device, dtype=dtype)
        yt = torch.from_numpy(codes).to(device)
        n = X.shape[0]
        if n * n <= CHUNK_BUDGET:  # one block: the label mask is built once per fit
            same = same_label_weights(yt, Xt.dtype)  # (n, n)
            objective = lambda Lt: nca_loss_grad_dense(Lt.to(dtype), Xt, same)  # noqa: E731
        else:
            objective = lambda Lt: nca_loss_grad(Lt.to(dtype), Xt, yt)  # noqa: E731
        with solver_threads(device, n * n * X.shape[1]):
            L, self.n_iter_, self.objective_ = lbfgs(
                objective,
                L0, device, max_iter, tol, self.verbose, "NCA",
                "" if dtype == torch.float64 else " or use precision='float64'",
            )
        self.components_ = L
        return self
