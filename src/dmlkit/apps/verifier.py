"""Verification: decide whether two items show the same identity, with a fitted threshold.

:class:`Verifier` scores a pair by the similarity of its embeddings (cosine by default),
fits a decision threshold on labelled pairs (or on pairs drawn from a labelled set) for a
target false-accept rate or for the best accuracy, and maps scores to a calibrated
probability of "same" (Platt scaling or isotonic regression). It reports AUC, EER and
TAR@FAR with 95% bootstrap intervals, and ROC / DET curves as data. Inputs are raw
features (no embedder), or anything :func:`~dmlkit.apps.embedding.embed_inputs` accepts:
a torch module, a callable or a dmlkit run directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from dmlkit._checks import (
    check_int_param,
    check_random_state_param,
    check_random_state_seed,
    check_target_far,
)
from dmlkit.apps.embedding import embed_inputs, kit_embedder, validate_inputs
from dmlkit.apps.metric_names import app_metric
from dmlkit.apps.persistence import load_kit, save_kit
from dmlkit.apps.targets import check_targets, label_text
from dmlkit.apps.verification_stats import bootstrap_intervals, verification_curves
from dmlkit.evaluation.verification import (
    ThresholdCalibrator,
    indexed_pair_scores,
    pair_scores,
    pairs_from_labels,
    verification_metrics,
)
from dmlkit.functional.verification import (
    best_accuracy_threshold,
    check_far,
    check_scored_pairs,
)

CALIBRATIONS = ("platt", "isotonic", None)
METRICS = ("cosine", "euclidean", "dot")


def check_pairs(pairs: Any, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(i, j, is_same or None)`` of a pair list naming rows of an ``n``-row set.

    ``pairs`` is a tuple ``(i, j)`` or ``(i, j, is_same)`` of equal-length arrays, or an
    ``(m, 2)`` / ``(m, 3)`` integer array.
    """
    if isinstance(pairs, np.ndarray) and pairs.ndim == 2 and pairs.shape[1] in (2, 3):
        pairs = tuple(pairs.T)
    if not isinstance(pairs, (tuple, list)) or len(pairs) not in (2, 3):
        raise TypeError("pairs must be (i, j) or (i, j, is_same) arrays, or an (m, 2|3) array")
    cols = [np.asarray(p).reshape(-1) for p in pairs]
    if len({c.shape[0] for c in cols}) != 1:
        raise ValueError(f"pair columns have different lengths: {[c.shape[0] for c in cols]}")
    if cols[0].size == 0:
        raise ValueError("pairs is empty")
    i, j = cols[0], cols[1]
    for name, c in (("i", i), ("j", j)):
        if not np.issubdtype(c.dtype, np.integer):
            raise TypeError(f"pair rows {name} must be integers, got dtype {c.dtype}")
        bad = np.flatnonzero((c < 0) | (c >= n))
        if bad.size:
            raise ValueError(
                f"pair {int(bad[0])} names row {int(c[bad[0]])}, which does not exist "
                f"(the data has {n} rows)")
    same = None
    if len(cols) == 3:
        same = cols[2]
        if same.dtype != np.bool_ and not np.isin(same, (0, 1)).all():
            raise ValueError("is_same of pairs must be boolean or 0/1")
        same = same.astype(bool)
    return i.astype(np.int64), j.astype(np.int64), same


class Verifier(BaseEstimator):
    """Same-or-different decisions on pairs, with a threshold fitted on labelled pairs.

    Parameters
    ----------
    metric : {"cosine", "euclidean", "dot"}
        Pair score: cosine similarity, negated Euclidean distance or inner product.
    target_far : float in (0, 1), optional
        Fit the lowest threshold whose false-accept rate on the fitting pairs is at most
        this. ``None``: the threshold of best accuracy.
    calibration : {"platt", "isotonic", None}
        How ``predict_proba`` maps scores to P(same), fitted on the same pairs.
    max_pairs : int
        When fitting on a labelled set, at most this many of its pairs (seeded draw).
    n_bootstrap : int
        Bootstrap replicates of the 95% intervals reported by :meth:`evaluate`.
    fars : sequence of float
        FARs at which :meth:`evaluate` reports TAR, each in ``(0, 1)`` (checked by
        :meth:`fit` and :meth:`evaluate`).
    embedder : None, torch.nn.Module, callable or path
        Maps inputs to embeddings (``None``: use the rows as given; a path: a run
        directory whose model embeds raw inputs).
    batch_size : int
        Rows embedded at a time.
    random_state : int, numpy RandomState or None
        Seed of pair drawing and of the bootstrap (a RandomState or None gives a seed
        drawn at each use).

    Attributes
    ----------
    threshold_ : float
        Pairs with score ``>= threshold_`` are accepted as "same".
    far_, tar_ : float
        False- and true-accept rates at ``threshold_`` on the fitting pairs.
    n_pairs_, n_same_ : int
    calibration_ : str or None
        The calibration fitted, the one :meth:`predict_proba` uses (``calibration`` as
        it was at ``fit``).
    n_features_in_ : int

    Examples
    --------
    >>> v = Verifier(target_far=1e-2).fit(X, y)       # doctest: +SKIP
    >>> v.predict(X[:5], X[5:10])                      # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        metric: str = "cosine",
        target_far: float | None = None,
        calibration: str | None = "platt",
        max_pairs: int = 200_000,
        n_bootstrap: int = 1000,
        fars: Sequence[float] = (1e-3, 1e-2, 1e-1),
        embedder: Any = None,
        batch_size: int = 1024,
        random_state: Any = 0,
    ) -> None:
        self.metric = metric
        self.target_far = target_far
        self.calibration = calibration
        self.max_pairs = max_pairs
        self.n_bootstrap = n_bootstrap
        self.fars = fars
        self.embedder = embedder
        self.batch_size = batch_size
        self.random_state = random_state

    # -- inputs -------------------------------------------------------------------------
    def _embed(self, X: Any, *, reset: bool) -> np.ndarray:
        X = validate_inputs(self, X, reset=reset, images=self.embedder is not None)
        return embed_inputs(kit_embedder(self, self.embedder, reset=reset), X,
                         batch_size=self.batch_size).numpy()

    def _labelled_pair_scores(self, X: Any, y: Any, pairs: Any, *, reset: bool):
        """``(scores, is_same)`` of the pairs of a set, drawn from its labels or given:
        scored a bounded number of bytes at a time, never all members gathered at once."""
        z = self._embed(X, reset=reset)
        labels = None if y is None else check_targets(y, z.shape[0])
        if pairs is None:
            if labels is None:
                raise ValueError("pass labels y (pairs are drawn from them) or pairs")
            if np.unique(labels).size < 2:
                use = ("fit draws the pairs that set the threshold" if reset else
                       "evaluate draws the pairs it measures")
                raise ValueError(
                    f"{use} from y; different-identity pairs need at least two "
                    f"identities, but y has only one identity ({label_text(labels[0])}): "
                    "pass items of two or more identities, or pairs with is_same")
            i, j, same = pairs_from_labels(labels, max_pairs=self.max_pairs,
                                           seed=check_random_state_seed(self.random_state))
            if same.all() or not same.any():
                counts = np.unique(labels, return_counts=True)[1]
                if counts.max() < 2:  # every pair was drawn, none can be "same"
                    raise ValueError(
                        f"y holds {counts.size} identities of one item each, so no pair is a "
                        "same-identity pair: identities need at least 2 items each")
                raise ValueError(
                    f"the {same.size} pairs drawn from y (max_pairs={self.max_pairs}) are all "
                    f"{'same' if same.all() else 'different'}-identity pairs; raise max_pairs")
        else:
            i, j, same = check_pairs(pairs, z.shape[0])
            if same is None:
                if labels is None:
                    raise ValueError("pairs without is_same need labels y")
                same = labels[i] == labels[j]
        return indexed_pair_scores(z, i, j, self.metric), np.asarray(same, dtype=bool)

    def _check_params(self) -> None:
        if app_metric(self.metric) not in METRICS:  # (aliases: l2, ip, any case)
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got "
                             f"{self.calibration!r}")
        check_target_far(self.target_far)
        check_random_state_param(self.random_state)
        check_int_param("max_pairs", self.max_pairs)
        check_int_param("n_bootstrap", self.n_bootstrap)
        self._fars()

    def _fars(self) -> tuple[float, ...]:
        """``fars`` as floats, each checked to lie in (0, 1)."""
        if isinstance(self.fars, (str, bytes)) or not isinstance(self.fars, (Sequence,
                                                                             np.ndarray)):
            raise TypeError(f"fars must be a sequence of FARs in (0, 1), got {self.fars!r}")
        try:
            return tuple(check_far(f) for f in self.fars)
        except ValueError as err:
            raise ValueError(f"fars: {err}") from None

    # -- fitting ------------------------------------------------------------------------
    def fit(self, X: Any, y: Any = None, *, pairs: Any = None) -> Verifier:
        """Fit the threshold on pairs of ``X`` ``(n, ...)``.

        ``pairs`` (rows of ``X``, optionally with ``is_same``) names the pairs; without it
        pairs are drawn from the labels ``y`` ``(n,)``.
        """
        self._check_params()
        scores, same = self._labelled_pair_scores(X, y, pairs, reset=True)
        return self._fit_scores(scores, same)

    def fit_pairs(self, X_a: Any, X_b: Any, is_same: Any) -> Verifier:
        """Fit on explicit pairs: rows of ``X_a`` and ``X_b`` ``(m, ...)``, ``is_same`` ``(m,)``."""
        self._check_params()
        z_a = self._embed(X_a, reset=True)
        z_b = self._embed(X_b, reset=False)
        return self._fit_scores(self._pair_scores(z_a, z_b), is_same)

    def _pair_scores(self, z_a: np.ndarray, z_b: np.ndarray) -> np.ndarray:
        if z_a.shape != z_b.shape:
            raise ValueError(f"pair members have different shapes: {z_a.shape}, {z_b.shape}")
        return pair_scores(z_a, z_b, self.metric)

    def _fit_scores(self, scores: np.ndarray, is_same: Any) -> Verifier:
        s, y = check_scored_pairs(scores, is_same)
        if self.target_far is None:
            self.threshold_, _ = best_accuracy_threshold(s, y)
        else:
            self.threshold_ = ThresholdCalibrator(float(self.target_far)).fit(s, y).threshold_
        accepted = s >= self.threshold_
        self.far_ = float(accepted[~y].mean())
        self.tar_ = float(accepted[y].mean())
        self.n_pairs_, self.n_same_ = int(s.size), int(y.sum())
        self.platt_ = np.zeros(2)
        self.isotonic_ = np.zeros((2, 0))
        self.calibration_ = self.calibration  # what predict_proba maps scores with
        if self.calibration == "platt":
            from sklearn.linear_model import LogisticRegression

            lr = LogisticRegression(C=1e6).fit(s[:, None], y)
            self.platt_ = np.array([lr.coef_[0, 0], lr.intercept_[0]])
        elif self.calibration == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(s, y)
            self.isotonic_ = np.stack([iso.X_thresholds_, iso.y_thresholds_])  # (2, t)
        return self

    # -- deciding -----------------------------------------------------------------------
    def score_pairs(self, X_a: Any, X_b: Any) -> np.ndarray:
        """``(m,)`` float64 similarity of each pair (larger = more alike)."""
        check_is_fitted(self, "threshold_")
        return self._pair_scores(self._embed(X_a, reset=False), self._embed(X_b, reset=False))

    def score_embeddings(self, z_a: Any, z_b: Any) -> np.ndarray:
        """``(m,)`` float64 score of pairs of embeddings ``(m, dim)`` already computed by
        this verifier's embedder (they are not embedded again)."""
        check_is_fitted(self, "threshold_")
        z_a = np.asarray(z_a, dtype=np.float64)
        z_b = np.asarray(z_b, dtype=np.float64)
        if z_a.ndim != 2:
            raise ValueError(f"embeddings must be (m, dim), got shape {z_a.shape}")
        return self._pair_scores(z_a, z_b)

    def decision_function(self, X_a: Any, X_b: Any) -> np.ndarray:
        """``score - threshold_``: non-negative for pairs accepted as "same"."""
        return self.score_pairs(X_a, X_b) - self.threshold_

    def predict(self, X_a: Any, X_b: Any) -> np.ndarray:
        """``(m,)`` bool: True where the pair is accepted as the same identity."""
        return self.decision_function(X_a, X_b) >= 0.0

    def predict_proba(self, X_a: Any, X_b: Any) -> np.ndarray:
        """``(m, 2)`` calibrated probabilities of [different, same]."""
        check_is_fitted(self, "threshold_")
        if self.calibration_ is None:
            raise ValueError("predict_proba needs a verifier fitted with calibration='platt' "
                             "or 'isotonic': set calibration and fit again")
        p = self.proba_from_scores(self.score_pairs(X_a, X_b))
        return np.stack([1.0 - p, p], axis=1)

    def proba_from_scores(self, scores: Any) -> np.ndarray:
        """``(m,)`` calibrated P(same) of pair scores."""
        check_is_fitted(self, "threshold_")
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        if self.calibration_ == "platt":
            return 1.0 / (1.0 + np.exp(-(self.platt_[0] * s + self.platt_[1])))
        if self.calibration_ == "isotonic":
            return np.interp(s, self.isotonic_[0], self.isotonic_[1])
        raise ValueError("this verifier was fitted without calibration: set calibration to "
                         "'platt' or 'isotonic' and fit again")

    # -- evaluating ---------------------------------------------------------------------
    def evaluate(self, X: Any, y: Any = None, *, pairs: Any = None,
                 curves: bool = False) -> dict[str, Any]:
        """Metrics on pairs of a labelled set (or the given ``pairs`` of its rows).

        Returns :func:`~dmlkit.evaluation.verification_metrics`'s keys, ``ci95`` (95%
        bootstrap intervals of ``eer`` and each ``tar_at_far_*``; ``None`` where that TAR
        is NaN, its FAR below what the pairs resolve), the accuracy, FAR and
        TAR at ``threshold_``, and with ``curves`` the ROC / DET data.
        """
        check_is_fitted(self, "threshold_")
        scores, same = self._labelled_pair_scores(X, y, pairs, reset=False)
        return self.evaluate_scores(scores, same, curves=curves)

    def evaluate_pairs(self, X_a: Any, X_b: Any, is_same: Any, *,
                       curves: bool = False) -> dict[str, Any]:
        """:meth:`evaluate` on explicit pairs."""
        return self.evaluate_scores(self.score_pairs(X_a, X_b), is_same, curves=curves)

    def evaluate_scores(self, scores: Any, is_same: Any, *, curves: bool = False) -> dict:
        """:meth:`evaluate` on pair scores already computed."""
        check_is_fitted(self, "threshold_")
        s, y = check_scored_pairs(scores, is_same)
        fars = self._fars()  # (set_params or a saved kit may bring others than fit checked)
        seed = check_random_state_seed(self.random_state)
        out: dict[str, Any] = verification_metrics(s, y, fars=fars, seed=seed)
        out["ci95"] = bootstrap_intervals(s, y, fars=fars, n_bootstrap=self.n_bootstrap,
                                          seed=seed)
        for key, value in out.items():  # no interval around a TAR these pairs cannot measure
            if key.startswith("tar_at_far_") and value != value:
                out["ci95"][key] = None
        accepted = s >= self.threshold_
        out["threshold"] = float(self.threshold_)
        out["accuracy_at_threshold"] = float((accepted == y).mean())
        out["far_at_threshold"] = float(accepted[~y].mean())
        out["tar_at_threshold"] = float(accepted[y].mean())
        if curves:
            out["curves"] = verification_curves(s, y)
        return out

    # -- persistence --------------------------------------------------------------------
    def save(self, path: str | Path, *, model_sha256: str | None = None) -> Path:
        """Write the fitted verifier to directory ``path`` (JSON + arrays, no pickle).

        ``model_sha256``: the fingerprint of the model that embedded the data it was fitted
        on (``dmlkit embed`` records it in its ``.npz``), recorded for a kit without a run
        embedder so that embeddings of another model can be refused
        (:func:`~dmlkit.apps.persistence.check_kit_model`)."""
        check_is_fitted(self, "threshold_")
        state = {"threshold_": self.threshold_, "far_": self.far_, "tar_": self.tar_,
                 "n_pairs_": self.n_pairs_, "n_same_": self.n_same_,
                 "calibration_": self.calibration_}
        return save_kit(path, self, arrays={"platt": self.platt_, "isotonic": self.isotonic_},
                        state=state, count=self.n_pairs_, model_sha256=model_sha256)

    @classmethod
    def load(cls, path: str | Path) -> Verifier:
        """Load a verifier saved by :meth:`save` (checked; see :mod:`dmlkit.apps.persistence`)."""
        from dmlkit.index.io import IndexFormatError

        v, state, arrays = load_kit(path, cls)
        try:
            v.threshold_ = float(state["threshold_"])
            v.far_, v.tar_ = float(state["far_"]), float(state["tar_"])
            v.n_pairs_, v.n_same_ = int(state["n_pairs_"]), int(state["n_same_"])
            v.platt_, v.isotonic_ = arrays["platt"], arrays["isotonic"]
            # (kits saved before it was recorded: the calibration they were saved with)
            v.calibration_ = state.get("calibration_", v.calibration)
        except (KeyError, TypeError, ValueError) as err:
            raise IndexFormatError(f"{path}: incomplete verifier state ({err})") from None
        if v.calibration_ not in CALIBRATIONS:
            raise IndexFormatError(f"{path}: unknown calibration {v.calibration_!r}")
        if v.platt_.shape != (2,) or v.isotonic_.ndim != 2 or v.isotonic_.shape[0] != 2:
            raise IndexFormatError(f"{path}: calibration arrays have the wrong shape")
        return v


__all__ = ["Verifier", "check_pairs", "CALIBRATIONS"]
