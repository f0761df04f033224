"""Anomaly detection by distance in a (learned) metric space, with scikit-learn's API.

:class:`MetricOutlierDetector` is fitted on normal data only and scores new points by how
far they lie from it: the distance to their k nearest normal neighbours (``"knn"``), to
the nearest class prototype (``"prototype"``: class means when labels are given, k-means
centres otherwise) or the Mahalanobis distance to the nearest class under one shared,
shrunk covariance (``"mahalanobis"``, Lee et al., NeurIPS 2018). Scores are computed
over raw features, over any embedder's output, or over a dmlkit run's embeddings; with
``embedder="learn"`` and labelled normal classes a metric is first trained on them with
dmlkit's :class:`~dmlkit.training.Trainer`, so that "far from every normal class" is
measured in a space that separates those classes.

As in scikit-learn, ``score_samples`` is higher for more normal points,
``decision_function = score_samples - offset_`` is negative for outliers and ``predict``
returns ``+1`` (inlier) / ``-1`` (outlier). ``offset_`` is the ``contamination``
quantile of *held-out* scores of the training points, each scored by a model that did
not see it, so that on new normal data about a ``contamination`` fraction is flagged
(see :mod:`dmlkit.apps.outlier_scores`): ``"knn"`` and labelled ``"prototype"`` leave
each point out exactly (its own neighbours without it; its own class mean without it, a
point alone in its class scored against the other classes), unlabelled ``"prototype"``
scores 10 seeded folds against k-means centres fitted on the other nine, and
``"mahalanobis"`` scores class-stratified folds out of fold (10 folds, class means and
covariance fitted on the other nine). A training point has only ``n - 1`` others, so
``"knn"`` averages ``min(n_neighbors, n - 1)`` neighbours for new points too
(``n_neighbors_``), with a warning when that is fewer than asked for. The model that
scores new points is always fitted on all the normal data (unlabelled ``"prototype"``:
its k-means centres of all of it).

A metric learned on the normal data (``embedder="learn"``) pulls those very points
together, so their held-out scores in it are still too good (a ``contamination`` of 0.1
flagged 13-21% of new normal digits). Its threshold is cross-fitted instead: the normal
rows are split into ``calibration_folds`` class-stratified, seeded folds; for each fold
a metric is learned on the other folds, all rows are embedded with it, the reference
(neighbours, prototypes, covariance) is fitted on them as above and the fold's rows get
their held-out scores there, as rows the metric never saw. The metric that scores new
points is then learned on all the rows, with the reference of all of them.
"""

from __future__ import annotations

import math
import numbers
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted

from dmlkit._checks import check_int_param, check_random_state_seed
from dmlkit.apps.embedding import embed_inputs, kit_embedder, learn_embedder, validate_inputs
from dmlkit.apps.outlier_scores import (
    class_means,
    kmeans_centres,
    kmeans_oof_sq,
    knn_distance,
    mahalanobis_oof_sq,
    prototype_loo_sq,
    prototype_sq,
    shrunk_precision,
    stratified_folds,
)
from dmlkit.apps.persistence import load_kit, load_module, module_arrays, save_kit
from dmlkit.apps.targets import check_targets

METHODS = ("knn", "prototype", "mahalanobis")
#: prefix of the learned embedder's weights in a saved detector
EMBEDDER = "embedder"


def check_contamination(contamination: Any) -> None:
    """Refuse a ``contamination`` that is not a real number in ``(0, 0.5]`` (the rule of
    every anomaly detector: a string, an array, a bool or NaN is a ``ValueError``)."""
    if isinstance(contamination, bool) or not isinstance(contamination, numbers.Real) or not (
            0.0 < float(contamination) <= 0.5):
        raise ValueError(f"contamination must be in (0, 0.5], got {contamination!r}")


class MetricOutlierDetector(OutlierMixin, BaseEstimator):
    """Outlier detector scoring points by their distance to normal data in a metric space.

    Parameters
    ----------
    method : {"knn", "prototype", "mahalanobis"}
        ``"knn"``: mean distance to the ``n_neighbors`` nearest normal points.
        ``"prototype"``: distance to the nearest class mean (labels given to ``fit``) or
        to the nearest of ``n_prototypes`` k-means centres. ``"mahalanobis"``: Mahalanobis
        distance to the nearest class mean (one Gaussian without labels), under a shared
        Ledoit-Wolf covariance.
    n_neighbors : int
        Neighbours averaged by ``"knn"``; at most ``n - 1`` for ``n`` normal points (the
        most a leave-one-out threshold can use), see ``n_neighbors_``.
    n_prototypes : int
        k-means centres of ``"prototype"`` when ``fit`` gets no labels.
    normalize : bool
        L2-normalize the (embedded) vectors first, so that distances are cosine-like.
    contamination : float in (0, 0.5]
        Expected fraction of outliers; sets ``offset_`` from held-out training scores
        (leave-one-out for ``"knn"`` and labelled ``"prototype"``, 10-fold out-of-fold
        for ``"mahalanobis"`` and for unlabelled ``"prototype"``, whose k-means is fitted
        again on each fold's complement; with ``embedder="learn"`` in metrics cross-fitted over
        ``calibration_folds``).
    embedder : None, "learn", torch.nn.Module, callable or path
        ``None``: score the features as they are. A module or callable maps a float32
        ``(n, ...)`` array or tensor to ``(n, dim)`` embeddings. A path is a dmlkit run
        directory whose model embeds the inputs. ``"learn"``: train a metric on the
        labelled normal classes passed to ``fit`` (at least two), see ``learn_config``.
    learn_config : dict, optional
        Overrides of the training config used by ``embedder="learn"`` (sections ``model``,
        ``loss``, ``miner``, ``sampler``, ``optimizer``, ``training``).
    calibration_folds : int
        With ``embedder="learn"``: folds of the cross-fitted threshold (at least 2; a
        metric is learned on each fold's complement, then one on all rows, so fitting
        trains ``calibration_folds + 1`` metrics). Unused otherwise, but checked by
        ``fit`` whatever the embedder (an integer >= 2), so that a bad value is refused
        before a later ``set_params(embedder="learn")`` reaches it.
    batch_size : int
        Rows embedded at a time.
    random_state : int, numpy RandomState or None
        Seed of k-means, of the folds of the out-of-fold thresholds and of metric
        learning (a RandomState or None gives one seed drawn at ``fit``).

    Attributes
    ----------
    offset_ : float
        Threshold on ``score_samples``: points below it are outliers.
    n_features_in_ : int
    n_neighbors_ : int
        Neighbours ``"knn"`` averages, for the threshold and for new points alike:
        ``min(n_neighbors, n - 1)``.
    embedder_ : object or None
        The embedder used (the trained one with ``"learn"``; a run directory's model is
        loaded once, kept as ``embedder_model_``).
    embedder_config_ : dict or None
        With ``"learn"``, the model config of the trained embedder (it is rebuilt from it
        by :meth:`load`); otherwise None.

    Examples
    --------
    >>> det = MetricOutlierDetector("mahalanobis").fit(X_normal, y_normal)  # doctest: +SKIP
    >>> det.save("detector")                                                 # doctest: +SKIP
    >>> MetricOutlierDetector.load("detector").predict(X_new)                # doctest: +SKIP
    """

    def __init__(
        self,
        method: str = "knn",
        *,
        n_neighbors: int = 5,
        n_prototypes: int = 10,
        normalize: bool = False,
        contamination: float = 0.1,
        embedder: Any = None,
        learn_config: dict[str, Any] | None = None,
        calibration_folds: int = 5,
        batch_size: int = 1024,
        random_state: Any = 0,
    ) -> None:
        self.method = method
        self.n_neighbors = n_neighbors
        self.n_prototypes = n_prototypes
        self.normalize = normalize
        self.contamination = contamination
        self.embedder = embedder
        self.learn_config = learn_config
        self.calibration_folds = calibration_folds
        self.batch_size = batch_size
        self.random_state = random_state

    # -- fitting ------------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        check_contamination(self.contamination)
        check_int_param("n_neighbors", self.n_neighbors)
        check_int_param("n_prototypes", self.n_prototypes)
        if self.learn_config is not None and not isinstance(self.learn_config, dict):
            raise ValueError(
                "learn_config must be a dict of training-config sections (model, loss, miner, "
                f"sampler, optimizer, training) or None, got {self.learn_config!r}")
        folds = self.calibration_folds
        if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
            raise ValueError(f"calibration_folds must be an integer >= 2, got {folds!r}")

    def fit(self, X: Any, y: Any = None) -> MetricOutlierDetector:
        """Fit on normal data ``X`` ``(n, ...)``; ``y`` (optional) are their class labels."""
        self._fit(X, y)
        return self

    def _fit(self, X: Any, y: Any) -> np.ndarray:
        """Fit; return the held-out training scores ``(n,)`` that set ``offset_``."""
        self._check_params()
        self._seed = check_random_state_seed(self.random_state)  # one seed for the fit
        X = self._validate(X, reset=True)
        labels = None if y is None else check_targets(y, X.shape[0])
        if _learns(self.embedder):
            if labels is None or np.unique(labels).size < 2:
                raise ValueError(
                    'embedder="learn" trains a metric on labelled normal classes: pass y '
                    "with at least two classes to fit"
                )
            if X.shape[0] < 2:
                raise ValueError(f"fit needs at least 2 normal points, got n_samples="
                                 f"{X.shape[0]}")
            held_out = self._cross_fitted_scores(X, labels)  # before the final metric
            self.embedder_, self.embedder_config_ = learn_embedder(
                X, labels, self.learn_config, self._seed
            )
        else:
            held_out = None
            self.embedder_ = self.embedder
            self.embedder_config_ = None
            kit_embedder(self, self.embedder_, reset=True)  # a run's model, loaded once
        z = self._embed(X)  # (n, d)
        if z.shape[0] < 2:
            raise ValueError(f"fit needs at least 2 normal points, got n_samples={z.shape[0]}")
        self._fit_scores(z, labels)
        if self.method == "knn" and self.n_neighbors_ < int(self.n_neighbors):
            warnings.warn(
                f"n_neighbors={self.n_neighbors} but there are only {len(z)} normal points: "
                f"the threshold scores each against the other {len(z) - 1}, so every point "
                f"is scored with its {self.n_neighbors_} nearest normal neighbours; pass "
                f"n_neighbors <= {len(z) - 1} (or more normal data) to silence this",
                UserWarning, stacklevel=2)
        train_scores = self._held_out_scores(z, labels) if held_out is None else held_out
        self.offset_ = float(np.quantile(train_scores, float(self.contamination)))
        return train_scores

    def _cross_fitted_scores(self, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``(n,)`` held-out scores of the rows ``X`` for ``embedder="learn"``: each fold's
        rows scored in a metric learned without them (on the other folds), against the
        reference of all rows embedded by that metric (leave-one-out / out-of-fold there,
        as :meth:`_held_out_scores`)."""
        _, codes = np.unique(labels, return_inverse=True)
        k = min(int(self.calibration_folds), len(X))
        folds = stratified_folds(codes.reshape(-1), k, self._seed)  # (n,)
        scores = np.empty(len(X))
        for f in range(k):
            held = folds == f
            if np.unique(codes[~held]).size < 2:
                raise ValueError(
                    f'embedder="learn" sets its threshold by learning a metric on '
                    f"{k - 1} of {k} folds of the normal rows, and one of them holds a "
                    "single class: pass more rows per class (or fewer calibration_folds)")
            self.embedder_, _ = learn_embedder(X[~held], labels[~held], self.learn_config,
                                               self._seed)
            z = self._embed(X)  # (n, d) in a metric that never saw the rows of fold f
            self._fit_scores(z, labels)
            scores[held] = self._held_out_scores(z, labels)[held]
        return scores

    @property
    def n_neighbors_(self) -> int:
        """Neighbours of the ``"knn"`` score: ``min(n_neighbors, n - 1)`` for ``n`` normal
        points, the same for the leave-one-out threshold and for new points."""
        check_is_fitted(self, "reference_")
        return max(1, min(int(self.n_neighbors), len(self.reference_) - 1))

    def _fit_scores(self, z: torch.Tensor, labels: np.ndarray | None) -> None:
        self.reference_ = z
        self.prototypes_ = None
        self.precision_ = None
        if self.method == "knn":
            return
        if labels is not None:
            classes, inverse = np.unique(labels, return_inverse=True)
            inv = torch.from_numpy(inverse.reshape(-1))
            centres = class_means(z, inv, len(classes))
        else:
            inv, centres = self._kmeans(z)
        self.prototypes_ = centres  # (C, d)
        self.assignment_ = inv  # (n,)
        if self.method == "mahalanobis":
            self.precision_ = shrunk_precision(z, centres, inv)

    def _kmeans(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.method == "mahalanobis":  # one Gaussian of all normal data
            return torch.zeros(len(z), dtype=torch.long), z.mean(0, keepdim=True)
        return kmeans_centres(z, self.n_prototypes, self._seed)

    # -- scoring ------------------------------------------------------------------------
    def _validate(self, X: Any, reset: bool) -> np.ndarray:
        return validate_inputs(self, X, reset=reset, images=self.embedder is not None)

    def _embed(self, X: np.ndarray) -> torch.Tensor:
        embedder = kit_embedder(self, self.embedder_, reset=False)
        z = embed_inputs(embedder, X, batch_size=self.batch_size)  # (n, d) float32
        if self.normalize:
            z = torch.nn.functional.normalize(z, dim=1)
        return z

    def _scores(self, z: torch.Tensor) -> np.ndarray:
        """Normality scores (negated distances) of embedded rows ``z`` against the model
        fitted on all the normal data."""
        if self.method == "knn":  # one statistic for the threshold and for new points
            dist = knn_distance(z, self.reference_, self.n_neighbors_)  # (n,)
        else:
            d2 = prototype_sq(z, self.prototypes_, self.precision_)  # (n, C)
            dist = d2.min(1).values.sqrt()  # (n,)
        return (-dist).numpy()

    def _held_out_scores(self, z: torch.Tensor, labels: np.ndarray | None) -> np.ndarray:
        """``(n,)`` scores of the training rows ``z`` (the reference; class ``labels`` or
        None), each from a model that did not see it: leave-one-out for ``"knn"`` and
        labelled ``"prototype"``, out-of-fold for ``"prototype"`` without labels (k-means
        fitted again without the fold) and class-stratified out-of-fold for
        ``"mahalanobis"``."""
        if self.method == "knn":
            dist = knn_distance(z, None, self.n_neighbors_)  # (n,) each row without itself
        elif self.method == "prototype" and labels is None:
            dist = kmeans_oof_sq(z, self.n_prototypes, seed=self._seed).sqrt()
        elif self.method == "prototype":
            dist = prototype_loo_sq(z, self.prototypes_, self.assignment_).sqrt()
        else:
            dist = mahalanobis_oof_sq(z, self.assignment_, seed=self._seed).sqrt()
        return (-dist).numpy()

    def score_samples(self, X: Any) -> np.ndarray:
        """``(n,)`` normality scores: higher is more normal (the negated distance)."""
        check_is_fitted(self, "offset_")
        z = self._embed(self._validate(X, reset=False))
        chunks = [self._scores(z[s : s + 4096]) for s in range(0, len(z), 4096)]
        return np.concatenate(chunks) if chunks else np.zeros(0)

    def decision_function(self, X: Any) -> np.ndarray:
        """``score_samples(X) - offset_``: negative for outliers."""
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """``+1`` for inliers, ``-1`` for outliers."""
        return np.where(self.decision_function(X) >= 0, 1, -1)

    def fit_predict(self, X: Any, y: Any = None) -> np.ndarray:
        """Fit on ``X`` and label its own points by their held-out scores (those that set
        ``offset_``; ``predict(X)`` scores them with the model fitted on all of them)."""
        return np.where(self._fit(X, y) >= self.offset_, 1, -1)

    # -- persistence --------------------------------------------------------------------
    def save(self, path: str | Path, *, model_sha256: str | None = None) -> Path:
        """Write the fitted detector to directory ``path`` atomically (JSON + arrays, no
        pickle; see :mod:`dmlkit.apps.persistence`).

        The normal data's embeddings, prototypes and precision are saved with the
        threshold; an embedder learned with ``embedder="learn"`` is saved as its model
        config and weights, a run directory as its absolute path. A torch module or
        callable passed as ``embedder`` cannot be saved (``TypeError``).

        ``model_sha256``: the fingerprint of the model that embedded the data it was fitted
        on (``dmlkit embed`` records it in its ``.npz``), recorded for a detector without a
        run embedder so that embeddings of another model can be refused
        (:func:`~dmlkit.apps.persistence.check_kit_model`).
        """

        check_is_fitted(self, "offset_")
        arrays = {"reference": self.reference_.numpy()}  # (n, d)
        if self.prototypes_ is not None:
            arrays["prototypes"] = self.prototypes_.numpy()  # (C, d)
            arrays["assignment"] = self.assignment_.numpy()  # (n,)
        if self.precision_ is not None:
            arrays["precision"] = self.precision_.numpy()  # (d, d)
        config = None
        if _learns(self.embedder):
            config = self.embedder_config_
            arrays.update(module_arrays(self.embedder_, EMBEDDER))  # rebuilt from config
        state = {"offset_": float(self.offset_), "embedder_config": config}
        return save_kit(path, self, arrays=arrays, state=state, count=len(self.reference_),
                        model_sha256=model_sha256)

    @classmethod
    def load(cls, path: str | Path) -> MetricOutlierDetector:
        """Load a detector saved by :meth:`save`.

        Raises :class:`~dmlkit.index.IndexFormatError` (a ``ValueError``) for a missing,
        corrupt or foreign directory, another kind of kit, or inconsistent saved state.
        """
        from dmlkit.index.io import IndexFormatError

        det, state, arrays = load_kit(path, cls)
        try:
            det._check_params()
            det.offset_ = float(state["offset_"])
            config = state["embedder_config"]
            reference = arrays["reference"]
            prototypes, precision = arrays.get("prototypes"), arrays.get("precision")
            assignment = arrays.get("assignment")
        except (KeyError, TypeError, ValueError) as err:
            raise IndexFormatError(f"{path}: incomplete outlier-detector state ({err})") from None
        n, d = reference.shape if reference.ndim == 2 else (0, 0)
        wants_prototypes = det.method != "knn"
        if (n < 2 or not math.isfinite(det.offset_)
                or (prototypes is not None) != wants_prototypes
                or (assignment is not None) != wants_prototypes
                or (precision is not None) != (det.method == "mahalanobis")
                or (prototypes is not None and (prototypes.ndim != 2 or prototypes.shape[1] != d
                                                or assignment.shape != (n,)))
                or (precision is not None and precision.shape != (d, d))
                or (det.embedder is None and d != det.n_features_in_)):
            raise IndexFormatError(f"{path}: saved arrays do not match each other or the "
                                   f"method {det.method!r}")
        det.reference_ = torch.from_numpy(reference.copy())
        det.prototypes_ = None if prototypes is None else torch.from_numpy(prototypes.copy())
        det.precision_ = None if precision is None else torch.from_numpy(precision.copy())
        if assignment is not None:
            det.assignment_ = torch.from_numpy(assignment.copy())
        det.embedder_config_ = config
        if _learns(det.embedder):
            det.embedder_ = load_module(path, config, arrays, EMBEDDER)
        else:
            det.embedder_ = det.embedder
        return det

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


def _learns(embedder: Any) -> bool:
    """Whether ``embedder`` asks for a metric to be learned (``"learn"``)."""
    return isinstance(embedder, str) and embedder == "learn"


__all__ = ["check_contamination", "MetricOutlierDetector", "METHODS"]
