"""Large Margin Nearest Neighbour (Weinberger & Saul, JMLR 2009)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from dmlkit._checks import check_int_param, check_real
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


def target_neighbors(
    X: Tensor, labels: Tensor, k: int, budget: int = CHUNK_BUDGET
) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest same-class points of each sample (Euclidean, input space).

    Returns ``targets (n, k)`` int64 and ``valid (n, k)`` bool (False where a class has
    fewer than ``k + 1`` members; such slots point at the sample itself).
    """
    n = X.shape[0]
    x_sq = (X * X).sum(dim=1)  # (n,)
    targets = torch.empty(n, k, dtype=torch.long, device=X.device)
    valid = torch.empty(n, k, dtype=torch.bool, device=X.device)
    for start, stop in row_chunks(n, chunk_size_for(n, n, budget)):
        rows = torch.arange(start, stop, device=X.device)  # (c,)
        D = x_sq[start:stop, None] + x_sq[None, :] - 2.0 * X[start:stop] @ X.T  # (c, n)
        same = labels[start:stop, None] == labels[None, :]  # (c, n)
        same[rows - start, rows] = False
        D = torch.where(same, D, torch.full_like(D, float("inf")))
        vals, idx = torch.topk(D, k, dim=1, largest=False)  # (c, k)
        ok = torch.isfinite(vals)
        targets[start:stop] = torch.where(ok, idx, rows[:, None])
        valid[start:stop] = ok
    return targets, valid


def lmnn_loss_grad(
    L: Tensor,
    X: Tensor,
    labels: Tensor,
    targets: Tensor,
    valid: Tensor,
    mu: float,
    budget: int = CHUNK_BUDGET,
) -> tuple[Tensor, Tensor]:
    """LMNN objective and its gradient with respect to ``L``.

    ``(1 - mu) sum_{i, j~>i} d_ij + mu sum_{i, j~>i, l: y_l != y_i} [1 + d_ij - d_il]_+``
    with ``d_ij = |L (x_i - x_j)|^2`` and ``j ~> i`` the target neighbours. Anchors are
    walked in chunks; per chunk only the impostor columns ``l`` inside some anchor's
    margin (``d_il < max_j d_ij + 1``) enter the ``(c, k, m)`` hinge tensor (the active
    set), so no triplet list is ever materialised.

    Parameters
    ----------
    L : Tensor of shape (k_out, d)
    X : Tensor of shape (n, d)
    labels : Tensor of shape (n,), int64
    targets, valid : Tensor of shape (n, k)
        From :func:`target_neighbors`.
    mu : float
        Weight of the push (impostor) term, in ``[0, 1]``.

    Returns
    -------
    loss : Tensor, scalar
    grad : Tensor of shape (k_out, d)
    """
    n, k = targets.shape
    Z = X @ L.T  # (n, k_out)
    z_sq = (Z * Z).sum(dim=1)  # (n,)
    loss = X.new_zeros(())
    g = L.new_zeros(L.shape)
    col_sums = X.new_zeros(n)
    validf = valid.to(X.dtype)  # (n, k)
    for start, stop in row_chunks(n, chunk_size_for(n, n * k, budget)):
        Zc, Xc = Z[start:stop], X[start:stop]  # (c, k_out), (c, d)
        T, V = targets[start:stop], validf[start:stop]  # (c, k)
        Dt = ((Zc[:, None, :] - Z[T]) ** 2).sum(dim=2)  # (c, k)
        D = (z_sq[start:stop, None] + z_sq[None, :] - 2.0 * Zc @ Z.T).clamp_min(0.0)  # (c, n)
        thr = (Dt * V - (1 - V)).amax(dim=1) + 1.0  # (c,) widest margin per anchor
        cand = (labels[start:stop, None] != labels[None, :]) & (D < thr[:, None])  # (c, n)
        cols = cand.any(dim=0).nonzero().squeeze(1)  # (m,)
        h = 1.0 + Dt[:, :, None] - D[:, None, cols]  # (c, k, m)
        active = ((h > 0) & cand[:, None, cols]).to(X.dtype) * V[:, :, None]  # (c, k, m)
        loss = loss + (1.0 - mu) * (Dt * V).sum() + mu * (h * active).sum()
        W = X.new_zeros(stop - start, n)  # (c, n) = dLoss/dD
        W.scatter_add_(1, T, V * ((1.0 - mu) + mu * active.sum(dim=2)))
        W[:, cols] -= mu * active.sum(dim=1)
        g_c, s_c = weighted_pair_grad(W, Xc, Zc, X, L)
        g, col_sums = g + g_c, col_sums + s_c
    return loss, finish_pair_grad(g, col_sums, X, Z)


class LMNN(MahalanobisMixin):
    """Large Margin Nearest Neighbour (Weinberger & Saul, 2009).

    Pulls each sample's ``n_neighbors`` target neighbours (nearest same-class points in
    the input space) close while pushing differently labelled impostors at least a unit
    margin farther away. Minimises the hinge objective over ``L`` with L-BFGS (as
    PyLMNN does); the active impostor set is recomputed, vectorised, at every evaluation.

    Parameters
    ----------
    n_components : int or None
        Output dimension (``None``: ``n_features``); smaller gives a low-rank metric.
    n_neighbors : int
        Target neighbours per sample.
    mu : float in (0, 1]
        Weight of the push term in ``(1 - mu) * pull + mu * push`` (the paper's ``mu``;
        0 is refused: the pull term alone shrinks the metric to zero).
    init : {'auto', 'pca', 'lda', 'identity', 'random'} or ndarray
        Initial ``L`` (as in :class:`~dmlkit.classical.NCA`).
    max_iter, tol : int, float
        L-BFGS limits; reaching ``max_iter`` raises a ``ConvergenceWarning``.
    verbose : bool
    random_state : int, RandomState or None
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Notes
    -----
    ``fit`` solves on ``X`` minus its mean (target neighbours and the objective depend
    on differences only); ``components_`` applies to raw ``X``.

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
        n_neighbors: int = 3,
        mu: float = 0.5,
        init: str | np.ndarray = "auto",
        max_iter: int = 200,
        tol: float = 1e-5,
        verbose: bool = False,
        random_state: Any = None,
        device: str = "auto",
    ) -> None:
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.mu = mu
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.verbose = verbose
        self.random_state = random_state
        self.device = device

    def fit(self, X: Any, y: Any) -> LMNN:
        """Fit on ``X (n_samples, n_features)`` with class labels ``y (n_samples,)``."""
        X, codes = self._validate_xy(X, y)
        n_neighbors = check_int_param("n_neighbors", self.n_neighbors)
        try:
            mu = check_real("mu", self.mu, 0.0, 1.0, low_open=True)
        except ValueError:
            raise ValueError(
                f"mu must be a real number in (0, 1] (the push term's weight: mu=0 keeps only "
                f"the pull term, which shrinks the metric to zero), got {self.mu!r} "
                f"({type(self.mu).__name__})") from None
        max_iter, tol = check_solver_params(self.max_iter, self.tol)
        k_out = check_n_components(self.n_components, X.shape[1])
        if np.bincount(codes).max() < 2:  # before init, whose LDA would refuse it first
            raise ValueError("LMNN needs a class with at least 2 samples; every class has 1")
        device = resolve_device(self.device)
        X = center(X)  # the objective depends on differences only
        check_scale(X, "LMNN")
        L0 = init_components(self.init, X, codes, k_out, self.random_state)
        Xt = torch.tensor(X, device=device)
        yt = torch.from_numpy(codes).to(device)
        k = min(n_neighbors, X.shape[0] - 1)
        with solver_threads(device, X.shape[0] ** 2 * X.shape[1]):
            targets, valid = target_neighbors(Xt, yt, k)
            L, self.n_iter_, self.objective_ = lbfgs(
                lambda Lt: lmnn_loss_grad(Lt, Xt, yt, targets, valid, mu),
                L0, device, max_iter, tol, self.verbose, "LMNN",
            )
        self.components_ = L
        return self
