"""Few-shot classification: recognise classes from a handful of labelled examples each.

:class:`FewShotClassifier` is fitted on a support set and scores each class for a query by
the similarity to its prototype, the mean support embedding (Snell et al., NeurIPS 2017,
"Prototypical Networks"), or by the mean similarity to its ``n_neighbors`` nearest
support items (``"knn"``; 1-NN by default). ``predict_proba`` is the softmax of
``temperature * score``; with ``scale="learned"`` the temperature is fitted by minimising
the leave-one-out negative log-likelihood of the support set (classes with at least two
items). Scores follow :func:`~dmlkit.evaluation.few_shot_accuracy`: ``"cosine"`` is the
cosine similarity (to the mean direction of a class's normalized support embeddings, for
prototypes), ``"euclidean"`` the negated squared distance, ``"dot"`` the inner product.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from dmlkit._checks import check_int_param, check_real
from dmlkit.apps.embedding import embed_inputs, kit_embedder, validate_inputs
from dmlkit.apps.metric_names import app_metric
from dmlkit.apps.persistence import load_kit, save_kit
from dmlkit.apps.targets import check_targets

METHODS = ("prototype", "knn")
SCALES = ("fixed", "learned")


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class FewShotClassifier(ClassifierMixin, BaseEstimator):
    """Nearest-prototype or k-NN classifier of a support set (scikit-learn API).

    Parameters
    ----------
    method : {"prototype", "knn"}
    n_neighbors : int
        Support items averaged per class by ``"knn"`` (capped at the class size).
    metric : {"cosine", "euclidean", "dot"}
    scale : {"fixed", "learned"}
        Keep ``temperature`` or fit it on the support set (leave-one-out likelihood).
    temperature : float
        Softmax scale of ``predict_proba`` (the starting point when learned).
    embedder : None, torch.nn.Module, callable or path
        Maps inputs to embeddings (``None``: the rows as given; a path: a run directory).
    batch_size : int

    Attributes
    ----------
    classes_ : ndarray (C,)
    prototypes_ : ndarray (C, d)
        Class means of the support embeddings (normalized again for ``"cosine"``).
    support_ : ndarray (n, d)
        Support embeddings (normalized for ``"cosine"``); ``support_codes_`` their class.
    temperature_ : float
    n_features_in_ : int

    Examples
    --------
    >>> FewShotClassifier().fit(X, y).predict(Q)   # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        method: str = "prototype",
        n_neighbors: int = 1,
        metric: str = "cosine",
        scale: str = "fixed",
        temperature: float = 10.0,
        embedder: Any = None,
        batch_size: int = 1024,
    ) -> None:
        self.method = method
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.scale = scale
        self.temperature = temperature
        self.embedder = embedder
        self.batch_size = batch_size

    def _embed(self, X: Any, *, reset: bool) -> np.ndarray:
        X = validate_inputs(self, X, reset=reset, images=self.embedder is not None)
        z = embed_inputs(kit_embedder(self, self.embedder, reset=reset), X,
                         batch_size=self.batch_size).numpy().astype(np.float64)
        if app_metric(self.metric) == "cosine":
            z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        return z

    def fit(self, X: Any, y: Any) -> FewShotClassifier:
        """Store the support set ``X`` ``(n, ...)`` with classes ``y`` ``(n,)``."""
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if app_metric(self.metric) not in ("cosine", "euclidean", "dot"):
            raise ValueError(f"metric must be cosine, euclidean or dot, got {self.metric!r}")
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {self.scale!r}")
        check_int_param("n_neighbors", self.n_neighbors, 1)
        # a finite scale: an infinite one makes every probability NaN
        check_real("temperature", self.temperature, 0.0, np.inf, low_open=True, high_open=True)
        z = self._embed(X, reset=True)
        y = check_targets(y, z.shape[0])
        self.classes_, codes = np.unique(y, return_inverse=True)
        if self.classes_.size < 2:
            raise ValueError(f"a support set needs at least two classes to choose between; y "
                             f"has one class, {self.classes_.tolist()!r}")
        self.support_, self.support_codes_ = z, codes.astype(np.int64)
        counts = np.bincount(codes, minlength=self.classes_.size)
        sums = np.zeros((self.classes_.size, z.shape[1]))
        np.add.at(sums, codes, z)
        self.prototypes_ = self._unit(sums / counts[:, None])
        self.temperature_ = float(self.temperature)
        if self.scale == "learned":
            self.temperature_ = self._learn_temperature(z, codes, counts, sums)
        return self

    def _unit(self, v: np.ndarray) -> np.ndarray:
        """Rows of ``v`` L2-normalized under ``"cosine"`` (as they are otherwise)."""
        if app_metric(self.metric) != "cosine":
            return v
        return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)

    def _sim(self, q: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """``(nq, nr)`` similarity: inner product, or negated squared distance."""
        s = q @ ref.T
        if app_metric(self.metric) == "euclidean":
            s = 2.0 * s - (q * q).sum(1)[:, None] - (ref * ref).sum(1)[None, :]
        return s

    def _class_scores(self, z: np.ndarray, exclude_self: bool = False) -> np.ndarray:
        """``(n, C)`` class scores of embedded queries (support rows left out on request)."""
        if self.method == "prototype":
            return self._sim(z, self.prototypes_)
        sim = self._sim(z, self.support_)  # (n, s)
        if exclude_self:
            np.fill_diagonal(sim, -np.inf)
        out = np.full((z.shape[0], self.classes_.size), -np.inf)
        for c in range(self.classes_.size):
            cols = sim[:, self.support_codes_ == c]  # (n, s_c)
            k = min(int(self.n_neighbors), cols.shape[1] - int(exclude_self))
            if k < 1:
                continue
            top = -np.sort(-cols, axis=1)[:, :k]
            out[:, c] = top.mean(axis=1)
        return out

    def _learn_temperature(self, z, codes, counts, sums) -> float:
        from scipy.optimize import minimize_scalar

        usable = counts[codes] >= 2
        if self.classes_.size < 2:  # (one class: its probability is 1 at any temperature)
            return float(self.temperature)
        if not usable.any():
            warnings.warn(
                f"scale='learned' cannot learn the temperature: every one of the "
                f"{self.classes_.size} support classes has one item, and it is learned from "
                "items scored against their own class without themselves (a class of 2 or "
                f"more items); the fixed temperature={self.temperature!r} is used",
                UserWarning, stacklevel=3)
            return float(self.temperature)
        if self.method == "prototype":  # own prototype without the item itself
            scores = self._sim(z, self.prototypes_)
            own = self._unit((sums[codes] - z) / np.maximum(counts[codes] - 1, 1)[:, None])
            own_sim = (z * own).sum(1)
            if app_metric(self.metric) == "euclidean":
                own_sim = -((z - own) ** 2).sum(1)
            scores[np.arange(z.shape[0]), codes] = own_sim
        else:
            scores = self._class_scores(z, exclude_self=True)
        scores, target = scores[usable], codes[usable]
        finite = np.isfinite(scores)

        def nll(log_t: float) -> float:
            logits = np.where(finite, np.exp(log_t) * scores, -np.inf)
            m = logits.max(1, keepdims=True)
            lse = m[:, 0] + np.log(np.exp(logits - m).sum(1))
            return float((lse - logits[np.arange(target.size), target]).mean())

        res = minimize_scalar(nll, bounds=(np.log(1e-3), np.log(1e4)), method="bounded")
        return float(np.exp(res.x))

    def predict_proba(self, X: Any) -> np.ndarray:
        """``(n, C)`` softmax of ``temperature_ * score`` over ``classes_``."""
        check_is_fitted(self, "prototypes_")
        scores = self._class_scores(self._embed(X, reset=False))
        return _softmax(self.temperature_ * scores)

    def predict(self, X: Any) -> np.ndarray:
        """``(n,)`` class of the best score (ties: the first class)."""
        check_is_fitted(self, "prototypes_")
        scores = self._class_scores(self._embed(X, reset=False))
        return self.classes_[scores.argmax(axis=1)]

    def evaluate_episodes(
        self, X: Any, y: Any, *, n_way: int = 5, k_shot: int = 1, n_query: int = 15,
        episodes: int = 600, seed: int = 0,
    ) -> dict[str, Any]:
        """Mean accuracy and 95% interval of seeded N-way K-shot episodes drawn from the
        labelled set ``X, y`` (:func:`~dmlkit.evaluation.few_shot_accuracy`; needs
        ``method="prototype"`` or ``n_neighbors=1``). Does not change the fitted state."""
        from dmlkit.evaluation import few_shot_accuracy
        from dmlkit.evaluation.few_shot import ONE_WAY_REASON

        if isinstance(n_way, bool) or int(n_way) < 2:
            why = ONE_WAY_REASON if int(n_way) == 1 else f"a {n_way}-way episode draws no class"
            raise ValueError(f"n_way must be 2 or more, got {n_way!r}: {why}")
        if self.method == "knn" and int(self.n_neighbors) != 1:
            raise ValueError("episodic evaluation supports method='prototype' or "
                             f"n_neighbors=1, got n_neighbors={self.n_neighbors}")
        if hasattr(self, "n_features_in_"):  # fitted: the inputs it was fitted on
            z = self._embed(X, reset=False)
        else:  # unfitted: embedded as given, and left unfitted (nothing learned kept)
            before = set(vars(self))
            try:
                z = self._embed(X, reset=True)
            finally:
                for name in set(vars(self)) - before:
                    delattr(self, name)
        classifier = "prototype" if self.method == "prototype" else "nearest_neighbor"
        metric = app_metric(self.metric)
        out = few_shot_accuracy(z, np.asarray(y), n_way=n_way, k_shot=k_shot, n_query=n_query,
                                episodes=episodes, classifier=classifier, metric=metric,
                                seed=seed)
        out["metric"] = metric
        return out

    # -- persistence --------------------------------------------------------------------
    def save(self, path: str | Path, *, model_sha256: str | None = None) -> Path:
        """Write the fitted classifier to directory ``path`` (JSON + arrays, no pickle).

        ``model_sha256``: the fingerprint of the model that embedded the data it was fitted
        on (``dmlkit embed`` records it in its ``.npz``), recorded for a kit without a run
        embedder so that embeddings of another model can be refused
        (:func:`~dmlkit.apps.persistence.check_kit_model`)."""
        check_is_fitted(self, "prototypes_")
        if self.classes_.dtype.hasobject:
            raise TypeError("classes must be numbers or strings to be saved")
        arrays = {"classes": self.classes_, "prototypes": self.prototypes_,
                  "support": self.support_, "support_codes": self.support_codes_}
        return save_kit(path, self, arrays=arrays, state={"temperature_": self.temperature_},
                        count=self.support_.shape[0], model_sha256=model_sha256)

    @classmethod
    def load(cls, path: str | Path) -> FewShotClassifier:
        """Load a classifier saved by :meth:`save` (checked; no pickle)."""
        from dmlkit.index.io import IndexFormatError

        clf, state, arrays = load_kit(path, cls)
        try:
            clf.temperature_ = float(state["temperature_"])
            clf.classes_, clf.prototypes_ = arrays["classes"], arrays["prototypes"]
            clf.support_, clf.support_codes_ = arrays["support"], arrays["support_codes"]
        except (KeyError, TypeError, ValueError) as err:
            raise IndexFormatError(f"{path}: incomplete classifier state ({err})") from None
        c, n = clf.classes_.shape[0], clf.support_.shape[0]
        if (clf.prototypes_.shape[0] != c or clf.support_codes_.shape != (n,)
                or (n and not 0 <= clf.support_codes_.min() <= clf.support_codes_.max() < c)):
            raise IndexFormatError(f"{path}: support arrays do not match each other")
        return clf

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


__all__ = ["FewShotClassifier", "METHODS", "SCALES"]
