"""Mahalanobis metric learners with a scikit-learn API (fit / transform / get_metric).

``NCA``, ``LMNN``, ``ITML`` (pairs) and ``ITMLSupervised`` (labels), ``LFDA`` and ``MLKR``
(real-valued targets); each learns
``components_ = L`` so that ``d(x, y) = |L (x - y)|``. :mod:`dmlkit.classical.frozen`
fits them on frozen deep embeddings and saves the learned matrix without pickle.
"""

from dmlkit.classical.itml import ITML, ITMLSupervised
from dmlkit.classical.lfda import LFDA
from dmlkit.classical.lmnn import LMNN
from dmlkit.classical.mahalanobis import MahalanobisMixin
from dmlkit.classical.mlkr import MLKR
from dmlkit.classical.nca import NCA

#: learner name (CLI / configs) -> class, for the learners that take class labels
LEARNERS = {"nca": NCA, "lmnn": LMNN, "itml": ITMLSupervised, "lfda": LFDA}

__all__ = [
    "ITML", "ITMLSupervised", "LFDA", "LEARNERS", "LMNN", "MLKR", "MahalanobisMixin", "NCA",
]
