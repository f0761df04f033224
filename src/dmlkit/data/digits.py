"""scikit-learn's handwritten digits (1797 8x8 images, 10 classes), bundled with scikit-learn."""

from __future__ import annotations

import numpy as np

from dmlkit.data.dataset import ArrayDataset

DIGIT_NAMES = [str(i) for i in range(10)]


def load_digits() -> ArrayDataset:
    """The digits as ``(1797, 1, 8, 8)`` float32 images scaled to ``[0, 1]``, labels 0-9.

    Embedded in scikit-learn (no download); the default dataset of ``dmlkit train``.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)[:, None] / 16.0  # (n, 1, 8, 8)
    return ArrayDataset(images, np.asarray(bunch.target, dtype=np.int64), DIGIT_NAMES)


__all__ = ["load_digits", "DIGIT_NAMES"]
