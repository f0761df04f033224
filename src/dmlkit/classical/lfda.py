"""Local Fisher Discriminant Analysis (Sugiyama, JMLR 2007)."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from dmlkit._checks import check_int_param, check_real
from dmlkit.classical.mahalanobis import (
    MahalanobisMixin,
    center,
    check_n_components,
    check_scale,
    resolve_device,
    solver_threads,
)


def lfda_scatter(X: Tensor, labels: Tensor, n_neighbors: int) -> tuple[Tensor, Tensor]:
    """Local between- and within-class scatter ``(S_lb, S_lw)``, each ``(d, d)``.

    ``S = 1/2 sum_ij W_ij (x_i - x_j)(x_i - x_j)^T = X^T (diag(W 1) - W) X`` with
    ``W_lw = A / n_c`` and ``W_lb = A (1/n - 1/n_c)`` inside class ``c``, ``W_lb = 1/n``
    across classes; ``A_ij = exp(-|x_i - x_j|^2 / (s_i s_j))`` is the local-scaling
    affinity (``s_i`` the distance to the ``n_neighbors``-th nearest same-class point).
    Only the per-class ``(n_c, n_c)`` blocks are formed.
    """
    n, d = X.shape
    total = X.sum(dim=0)  # (d,)
    S_lb = X.T @ X - torch.outer(total, total) / n  # (d, d) total scatter (W = 1/n)
    S_lw = X.new_zeros(d, d)
    for c in torch.unique(labels):
        Xc = X[labels == c]  # (n_c, d)
        nc = Xc.shape[0]
        sq = (Xc * Xc).sum(dim=1)  # (n_c,)
        D = (sq[:, None] + sq[None, :] - 2.0 * Xc @ Xc.T).clamp_min(0.0)  # (n_c, n_c)
        kk = min(n_neighbors, nc - 1)
        sigma = torch.kthvalue(D, kk + 1, dim=1).values.sqrt()  # (n_c,) incl. self at 0
        scale = torch.outer(sigma, sigma)  # (n_c, n_c)
        A = torch.where(scale > 0, torch.exp(-D / scale.clamp_min(1e-300)), torch.zeros_like(D))
        G = Xc.T @ (A.sum(dim=1, keepdim=True) * Xc) - Xc.T @ (A @ Xc)  # (d, d) Laplacian
        sc = Xc.sum(dim=0)  # (d,)
        S_lw = S_lw + G / nc
        # inside the class replace W = 1/n by A/n (the -A/n_c part is -S_lw below)
        S_lb = S_lb - (nc * Xc.T @ Xc - torch.outer(sc, sc)) / n + G / n
    S_lb = S_lb - S_lw
    return (S_lb + S_lb.T) / 2, (S_lw + S_lw.T) / 2


class LFDA(MahalanobisMixin):
    """Local Fisher Discriminant Analysis (Sugiyama, 2007).

    Fisher discriminant analysis with locality-preserving weights: it keeps nearby
    same-class points together without forcing multi-modal classes into one cluster.
    Closed form: the top generalized eigenvectors of ``S_lb v = lambda S_lw v`` (scatter
    matrices in torch on ``device``, eigensolver in scipy).

    Parameters
    ----------
    n_components : int or None
        Output dimension (``None``: ``n_features``).
    n_neighbors : int
        Neighbour rank for the local scaling of the affinity (paper: 7).
    embedding_type : {'weighted', 'orthonormalized', 'plain'}
        Scale eigenvectors by ``sqrt(lambda)``, orthonormalize them, or keep them.
    reg : float
        Ridge ``reg * trace(S_lw) / d`` added to ``S_lw`` (singular with constant features).
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Notes
    -----
    ``fit`` computes the scatter matrices from ``X`` minus its mean (they depend on
    differences only); ``components_`` applies to raw ``X``. Data in which no class has
    two samples (zero within-class scatter) is a ``ValueError``.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
    eigenvalues_ : ndarray of shape (n_components,)
    n_features_in_ : int
    """

    def __init__(
        self,
        n_components: int | None = None,
        n_neighbors: int = 7,
        embedding_type: str = "weighted",
        reg: float = 1e-6,
        device: str = "auto",
    ) -> None:
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.embedding_type = embedding_type
        self.reg = reg
        self.device = device

    def fit(self, X: Any, y: Any) -> LFDA:
        """Fit on ``X (n_samples, n_features)`` with class labels ``y (n_samples,)``."""
        X, codes = self._validate_xy(X, y)
        n, d = X.shape
        k = check_n_components(self.n_components, d)
        if self.embedding_type not in ("weighted", "orthonormalized", "plain"):
            raise ValueError(
                "embedding_type must be 'weighted', 'orthonormalized' or 'plain', got "
                f"{self.embedding_type!r}"
            )
        n_neighbors = check_int_param("n_neighbors", self.n_neighbors)
        reg = check_real("reg", self.reg, 0.0, np.inf, high_open=True)
        if np.bincount(codes).max() < 2:
            raise ValueError("LFDA needs a class with at least 2 samples; every class has 1")
        device = resolve_device(self.device)
        X = center(X)  # the scatter matrices depend on differences only
        check_scale(X, "LFDA")
        with solver_threads(device, n * n * d):
            S_lb, S_lw = lfda_scatter(
                torch.tensor(X, device=device), torch.from_numpy(codes).to(device),
                n_neighbors,
            )
        S_lb, S_lw = S_lb.cpu().numpy(), S_lw.cpu().numpy()
        if not (np.isfinite(S_lb).all() and np.isfinite(S_lw).all()):
            raise ValueError("LFDA's scatter matrices are not finite: the scale of X "
                             "overflows float64 arithmetic; rescale X (e.g. StandardScaler)")
        if not np.trace(S_lw) > 0:
            raise ValueError(
                "LFDA's local within-class scatter is zero (the samples inside each class "
                "are identical, or so close that their squared distances underflow): the "
                "generalized eigenproblem has no finite solution"
            )
        ridge = reg * max(np.trace(S_lw) / d, 1e-12)
        vals, vecs = scipy.linalg.eigh(S_lb, S_lw + ridge * np.eye(d))  # ascending
        vals, vecs = vals[::-1][:k], vecs[:, ::-1][:, :k]
        if self.embedding_type == "weighted":
            vecs = vecs * np.sqrt(np.clip(vals, 0.0, None))
        elif self.embedding_type == "orthonormalized":
            vecs, _ = np.linalg.qr(vecs)
        self.eigenvalues_ = vals.copy()
        self.components_ = np.ascontiguousarray(vecs.T)
        return self
