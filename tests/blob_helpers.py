"""Labelled Gaussian blobs: the small embeddings the application tests verify, identify
and classify."""

from __future__ import annotations

import numpy as np


def labelled_blobs(n_classes: int, per_class: int, d: int, noise: float, seed: int = 0,
                   spread: float = 1.0, float32: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(x (n, d), y (n,))``: ``per_class`` points of each of ``n_classes`` classes round
    centres drawn from ``N(0, spread^2)``, at ``noise`` standard deviation."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, d)) * spread
    y = np.repeat(np.arange(n_classes), per_class)
    x = centers[y] + noise * rng.normal(size=(y.size, d))
    return (x.astype(np.float32) if float32 else x), y
