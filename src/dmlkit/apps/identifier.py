"""Open-set identification: who is this, among the enrolled identities, or nobody known?

:class:`Identifier` enrolls a gallery (many items per identity) in a
:mod:`dmlkit.index` index (exact, or any faiss factory string, so a million-item gallery
works), ranks identities for each query by their best-matching item (``"nearest"``) or by
their prototype, the mean embedding (``"prototype"``), and rejects queries whose top
score is below a threshold calibrated for a target false-alarm rate. Identities can be
enrolled and removed one at a time without rebuilding the gallery.

Calibration without unknown queries: each calibration item (a seeded sample of the
gallery) plays an unknown person by leaving its whole identity out; its best score
against the *other* identities is an impostor score, and the threshold admits at most a
``target_far`` fraction of them. ``calibrate(X_unknown)`` re-fits it on real unknowns.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from dmlkit._checks import check_int_param, check_random_state_seed, check_target_far
from dmlkit.apps.embedding import embed_inputs, kit_embedder, validate_inputs
from dmlkit.apps.identification_metrics import calibration_threshold, check_fars, open_set_metrics
from dmlkit.apps.impostor_scores import gallery_impostor_scores
from dmlkit.apps.metric_names import INDEX_METRIC, app_metric
from dmlkit.apps.persistence import load_kit, load_kit_index, save_kit
from dmlkit.apps.search_breadth import free_knob, tune
from dmlkit.apps.targets import check_targets

MODES = ("nearest", "prototype")
QUERY_CHUNK = 1024
#: query-by-gallery-item cells one whole-gallery search of :meth:`Identifier.evaluate` holds
FULL_RANKING_CELLS = 1 << 21


class Identifier(ClassifierMixin, BaseEstimator):
    """Open-set identification over an enrolled gallery (scikit-learn classifier API).

    Parameters
    ----------
    mode : {"nearest", "prototype"}
        Score an identity by its best gallery item, or by its mean embedding.
    metric : {"cosine", "euclidean", "dot"}
        Scores are cosine similarity, negated Euclidean distance or inner product.
    index : str
        ``"exact"`` (:class:`~dmlkit.index.ExactIndex`) or a faiss factory string
        (``"Flat"``, ``"HNSW32"``, ``"IVF1024,Flat"``; HNSW cannot ``remove``).
    nprobe, ef_search : int, optional
        Search breadth of an IVF index (lists visited per query) or an HNSW graph.
        ``None``: chosen on :meth:`fit` for the gallery, widened from faiss's default
        until recall@10 against exact search reaches 0.95
        (:func:`dmlkit.index.calibrate.calibrate`), and further while calibration
        items find no other identity; the value used is kept on the index. Given values
        are used as they are (calibration then fails with a message when they are too
        narrow to find other identities).
    target_far : float in (0, 1), optional
        False-alarm rate of the rejection threshold. ``None``: closed set (never reject).
    unknown_label : object
        What :meth:`predict` returns for rejected queries (no enrolled identity may
        equal it).
    calibration_size : int
        Gallery items used to calibrate the threshold (a seeded sample).
    search_depth : int
        Most gallery items searched per query in ``"nearest"`` mode to rank identities
        (fewer when ``k`` times the largest identity's item count is smaller). Top-1 is
        always exact; a top-``k`` list may come back short when identities have more
        than ``search_depth / k`` items.
    embedder : None, torch.nn.Module, callable or path
        Maps inputs to embeddings (``None``: the rows as given; a path: a run directory).
    batch_size : int
    random_state : int, numpy RandomState or None
        Seed of the calibration sample and of tuning a faiss index (a RandomState or
        None gives a seed drawn at each use).

    Attributes
    ----------
    classes_ : ndarray
        Enrolled identities, sorted.
    threshold_ : float
        Queries with top score below it are unknown (``-inf`` in closed-set use).
    calibration_far_ : float or None
        The fraction of the calibration impostor scores at or above ``threshold_`` (the
        false-alarm rate reached where it was calibrated; ``None`` in closed-set use).
    index_ : BaseIndex
        Gallery items (``"nearest"``, id per item, label = identity code) or prototypes
        (``"prototype"``, id = identity code).
    identities_ : ndarray
        Identity of each code (codes are never reused); ``counts_`` items per code;
        ``item_codes_`` the code of each gallery item id (``-1``: removed).
    n_features_in_ : int
    """

    def __init__(
        self,
        *,
        mode: str = "nearest",
        metric: str = "cosine",
        index: str = "exact",
        nprobe: int | None = None,
        ef_search: int | None = None,
        target_far: float | None = 1e-2,
        unknown_label: Any = -1,
        calibration_size: int = 5000,
        search_depth: int = 4096,
        embedder: Any = None,
        batch_size: int = 1024,
        random_state: Any = 0,
    ) -> None:
        self.mode = mode
        self.metric = metric
        self.index = index
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.target_far = target_far
        self.unknown_label = unknown_label
        self.calibration_size = calibration_size
        self.search_depth = search_depth
        self.embedder = embedder
        self.batch_size = batch_size
        self.random_state = random_state

    # -- enrolment ----------------------------------------------------------------------
    def _embed(self, X: Any, *, reset: bool) -> np.ndarray:
        X = validate_inputs(self, X, reset=reset, images=self.embedder is not None)
        return embed_inputs(kit_embedder(self, self.embedder, reset=reset), X,
                         batch_size=self.batch_size).numpy()

    def _new_index(self, dim: int) -> Any:
        from dmlkit.index import ExactIndex, FaissIndex

        metric = INDEX_METRIC[app_metric(self.metric)]
        if self.index == "exact":
            if self.nprobe is not None or self.ef_search is not None:
                raise ValueError("nprobe / ef_search apply to faiss indexes (index='IVF...', "
                                 "'HNSW...'), not to index='exact'")
            return ExactIndex(dim, metric)
        return FaissIndex(dim, metric, self.index, nprobe=self.nprobe, ef_search=self.ef_search)

    def _knob(self) -> str | None:
        return free_knob(self.index_, self.nprobe, self.ef_search)

    def fit(self, X: Any, y: Any) -> Identifier:
        """Enroll gallery ``X`` ``(n, ...)`` with identities ``y`` ``(n,)`` (replacing any
        earlier gallery) and calibrate the rejection threshold."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if app_metric(self.metric) not in INDEX_METRIC:  # (aliases: l2, ip, any case)
            raise ValueError(f"metric must be one of {tuple(INDEX_METRIC)}, got {self.metric!r}")
        check_target_far(self.target_far)
        seed = check_random_state_seed(self.random_state)
        check_int_param("search_depth", self.search_depth)
        check_int_param("calibration_size", self.calibration_size)
        z = self._embed(X, reset=True)
        y = self._check_y(y, z.shape[0])
        self.index_ = self._new_index(z.shape[1])
        self.identities_ = y[:0].copy()
        self.counts_ = np.zeros(0, dtype=np.int64)
        self.item_codes_ = np.zeros(0, dtype=np.int64)
        self.sums_ = np.zeros((0, z.shape[1]))
        self._add(z, y)
        ids = self.index_.ids
        tune(self.index_, self.sums_[ids] / self.counts_[ids, None]
             if self.mode == "prototype" else z, self._knob(), seed)
        self._calibrate(z, y, seed)
        return self

    @staticmethod
    def _check_y(y: Any, n: int) -> np.ndarray:
        return check_targets(y, n)

    def enroll(self, X: Any, y: Any) -> Identifier:
        """Add gallery items ``X`` of identities ``y`` (new or enrolled) without rebuilding.

        The threshold is kept; :meth:`calibrate` re-fits it to the new gallery.
        """
        check_is_fitted(self, "index_")
        z = self._embed(X, reset=False)
        self._add(z, self._check_y(y, z.shape[0]))
        return self

    def _codes(self, y: np.ndarray, create: bool) -> np.ndarray:
        known = {v: c for c, v in enumerate(self.identities_.tolist())}
        if y.size and self.identities_.size and _is_text(y) != _is_text(self.identities_):
            kinds = ("strings", "numbers")
            raise TypeError(
                f"identities must share one type: the gallery's are "
                f"{kinds[not _is_text(self.identities_)]}, these are {kinds[not _is_text(y)]} "
                f"(e.g. {y.tolist()[0]!r})")
        new = [v for v in dict.fromkeys(y.tolist()) if v not in known]
        if new and create:
            self.identities_ = np.concatenate([self.identities_, np.asarray(new)])
            self.counts_ = np.r_[self.counts_, np.zeros(len(new), np.int64)]
            self.sums_ = np.vstack([self.sums_, np.zeros((len(new), self.sums_.shape[1]))])
            known.update({v: len(known) + i for i, v in enumerate(new)})
        return np.array([known.get(v, -1) for v in y.tolist()], dtype=np.int64)

    def _add(self, z: np.ndarray, y: np.ndarray) -> None:
        label = self.unknown_label
        if np.ndim(label) == 0:
            text = _is_text(np.asarray(label))
            if any(_is_text(np.asarray(v)) == text and bool(v == label)
                   for v in dict.fromkeys(y.tolist())):
                raise ValueError(
                    f"identity {label!r} equals unknown_label, what predict returns for a "
                    "rejected query, so a match with it could not be told from a rejection: "
                    "give that identity another label, or pass another unknown_label")
        codes = self._codes(y, create=True)
        # the index changes first: if it refuses, counts and sums are as they were
        if self.mode == "nearest":
            ids = self.index_.add(z, labels=codes)
            grown = np.full(max(int(ids.max()) + 1, self.item_codes_.size), -1, np.int64)
            grown[: self.item_codes_.size] = self.item_codes_
            grown[ids] = codes
            self.item_codes_ = grown
            np.add.at(self.counts_, codes, 1)
        else:
            touched = np.unique(codes)
            counts, sums = self.counts_.copy(), self.sums_.copy()
            np.add.at(counts, codes, 1)
            np.add.at(sums, codes, z.astype(np.float64))
            enrolled = touched[self.counts_[touched] > 0]
            try:  # updating a prototype replaces it
                self.index_.remove(enrolled)
            except NotImplementedError:
                raise ValueError(
                    f"cannot add items to enrolled identities "
                    f"{self.identities_[enrolled][:5].tolist()} in prototype mode with index "
                    f"{self.index!r}: updating a prototype replaces it, and this index cannot "
                    "remove vectors. Use index='exact' or 'Flat', mode='nearest', or enroll "
                    "new identities only") from None
            self.index_.add(sums[touched] / counts[touched, None], touched, labels=touched)
            self.counts_, self.sums_ = counts, sums
        self._refresh()

    def _refresh(self) -> None:
        self.classes_ = np.sort(self.identities_[self.counts_ > 0])

    def remove(self, identities: Any) -> Identifier:
        """Remove every gallery item of these enrolled identities."""
        check_is_fitted(self, "index_")
        ids = np.atleast_1d(np.asarray(identities))
        codes = self._codes(ids, create=False)
        unknown = [v for v, c in zip(ids.tolist(), codes.tolist(), strict=True)
                   if c < 0 or self.counts_[c] == 0]
        if unknown:
            raise ValueError(f"cannot remove identities that are not enrolled: {unknown[:10]}")
        if self.mode == "nearest":
            items = np.flatnonzero(np.isin(self.item_codes_, codes))
            self.index_.remove(items)
            self.item_codes_[items] = -1
        else:
            self.index_.remove(codes)
            self.sums_[codes] = 0.0
        self.counts_[codes] = 0
        self._refresh()
        return self

    def embed(self, X: Any) -> np.ndarray:
        """``(n, dim)`` float32 embeddings of ``X`` as the gallery sees them."""
        check_is_fitted(self, "index_")
        return self._embed(X, reset=False)

    # -- ranking ------------------------------------------------------------------------
    def _search(self, z: np.ndarray, k: int,
                depth: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Identity codes ``(n, k)`` (``-1`` padded) and scores ``(n, k)`` of ``z``
        (``depth``: gallery items searched in ``"nearest"`` mode instead of
        ``search_depth``)."""
        if self.index_.ntotal == 0:
            raise ValueError("the gallery is empty: enroll identities first")
        # an identity's best item comes before its others, so the first k * (largest
        # identity) items hold the top k identities; deeper than search_depth items, the
        # list may come back shorter than k (padded), never in a wrong order
        depth = k if self.mode == "prototype" else min(
            k * int(self.counts_.max()), max(k, int(depth or self.search_depth)))
        depth = min(depth, self.index_.ntotal)
        out_c = np.full((z.shape[0], k), -1, dtype=np.int64)
        out_s = np.full((z.shape[0], k), -np.inf)
        for start in range(0, z.shape[0], QUERY_CHUNK):
            part = slice(start, start + QUERY_CHUNK)
            scores, ids = self.index_.search(z[part], depth)  # (c, depth)
            scores = scores.astype(np.float64)
            if app_metric(self.metric) == "euclidean":
                scores = -np.sqrt(np.maximum(scores, 0.0))
            codes = ids if self.mode == "prototype" else np.where(
                ids >= 0, self.item_codes_[np.clip(ids, 0, None)], -1)
            # first occurrence of each identity along each row
            order = np.argsort(codes, axis=1, kind="stable")
            ranked = np.take_along_axis(codes, order, 1)
            first_sorted = np.ones_like(ranked, dtype=bool)
            first_sorted[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
            first = np.zeros_like(first_sorted)
            np.put_along_axis(first, order, first_sorted, 1)
            first &= codes >= 0
            rank = np.cumsum(first, axis=1)  # (c, depth) 1-based identity rank
            rows, cols = np.nonzero(first & (rank <= k))
            out_c[part][rows, rank[rows, cols] - 1] = codes[rows, cols]
            out_s[part][rows, rank[rows, cols] - 1] = scores[rows, cols]
        return out_c, out_s

    def identify(self, X: Any, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` identities ``(n, k)`` and their scores ``(n, k)`` for each query.

        Identities are ranked by score (no rejection); rows hold fewer than ``k`` when
        fewer are enrolled, padded with ``unknown_label`` and ``-inf``.
        """
        check_is_fitted(self, "index_")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        codes, scores = self._search(self._embed(X, reset=False), int(k))
        return self._names(codes), scores

    def _names(self, codes: np.ndarray) -> np.ndarray:
        """Identities of codes, ``unknown_label`` for ``-1`` (kept in the identities'
        dtype when it fits there, else an object array)."""
        names = self.identities_[np.clip(codes, 0, None)]
        if (codes < 0).any():
            label = np.asarray(self.unknown_label)
            if label.ndim == 0 and not label.dtype.hasobject and (
                    _is_text(label) == _is_text(names)):
                dtype = np.result_type(names.dtype, label.dtype)
            else:  # e.g. -1 among string identities: kept as -1, not as the string '-1'
                dtype = np.dtype(object)
            names = names.astype(dtype)
            names[codes < 0] = self.unknown_label
        return names

    def predict(self, X: Any) -> np.ndarray:
        """``(n,)`` best identity of each query, ``unknown_label`` where rejected."""
        check_is_fitted(self, "index_")
        codes, scores = self._search(self._embed(X, reset=False), 1)
        codes = np.where(scores[:, 0] >= self.threshold_, codes[:, 0], -1)
        return self._names(codes)

    # -- calibration --------------------------------------------------------------------
    def calibrate(self, X: Any, y: Any = None) -> Identifier:
        """Re-fit ``threshold_`` for ``target_far`` on the current gallery.

        Without ``y``, ``X`` are queries of identities *not* enrolled: their top scores
        are the impostor scores. With ``y``, ``X`` are labelled items of enrolled
        identities, each scored against the other identities (its own left out).
        """
        check_is_fitted(self, "index_")
        z = self._embed(X, reset=False)
        self._calibrate(z, None if y is None else self._check_y(y, z.shape[0]))
        return self

    def _calibrate(self, z: np.ndarray, y: np.ndarray | None, seed: int | None = None) -> None:
        far = check_target_far(self.target_far)
        if far is None:
            self.threshold_, self.calibration_far_ = -np.inf, None
            return
        if y is None:
            impostor = self._search(z, 1)[1][:, 0]
        else:
            if (enrolled := int((self.counts_ > 0).sum())) < 2:
                raise ValueError(
                    "open-set calibration needs at least two enrolled identities, got "
                    f"{('zero', 'one class')[enrolled]}; pass target_far=None for a closed set (on "
                    "the command line: dmlkit identify --closed-set), or enroll more")
            impostor = gallery_impostor_scores(self, z, y, seed)
        self.threshold_ = calibration_threshold(impostor, far)
        self.calibration_far_ = float((impostor >= self.threshold_).mean())

    # -- evaluation ---------------------------------------------------------------------
    def evaluate(self, X: Any, y: Any, *, fars: float | tuple[float, ...] = (1e-2,),
                 max_rank: int = 20, curves: bool = False) -> dict[str, Any]:
        """Open-set metrics of queries ``X`` with true identities ``y``.

        Queries of enrolled identities give the CMC curve (``rank1``, ``rank5``) and
        ``mrr``, the mean reciprocal rank of the true identity among all enrolled ones
        (whatever ``max_rank``); those of other identities are the unknowns of
        ``dir_at_far_*`` (NaN, with a warning, for a FAR below 1 / their number) and of
        the false-alarm rate at ``threshold_``. ``fars`` is one FAR or a sequence of them,
        each in (0, 1). ``curves`` adds the open-set ROC. Queries of unknown identities
        only give ``far_at_threshold`` (and the counts).
        """
        check_is_fitted(self, "index_")
        fars = check_fars(fars)
        if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) \
                or max_rank < 1:
            raise ValueError(f"max_rank must be a positive integer, got {max_rank!r}")
        z = self._embed(X, reset=False)
        y = self._check_y(y, z.shape[0])
        codes, scores = self._search(z, max(int(max_rank), 5))  # rank5 at any max_rank
        truth = self._codes(y, create=False)
        known = (truth >= 0) & (self.counts_[np.clip(truth, 0, None)] > 0)
        hit = codes[known] == truth[known][:, None]  # (nk, max(max_rank, 5))
        rank = self._true_ranks(z[known], truth[known], hit) if known.any() else None
        return open_set_metrics(scores[:, 0], hit, rank, known, self.threshold_, fars=fars,
                                max_rank=int(max_rank), curves=curves)

    def _true_ranks(self, z: np.ndarray, truth: np.ndarray, hit: np.ndarray) -> np.ndarray:
        """``(n,)`` 0-based rank of identity code ``truth`` among all enrolled identities
        for each query ``z``: from ``hit`` (the top identities searched) where found there,
        else from a search of the whole gallery (``-1`` where it does not reach one)."""
        rank = np.where(hit.any(1), hit.argmax(1), -1)
        miss = np.flatnonzero(rank < 0)
        enrolled, total = int((self.counts_ > 0).sum()), self.index_.ntotal
        step = max(1, FULL_RANKING_CELLS // total)  # queries per whole-gallery search
        for start in range(0, miss.size, step):
            part = miss[start : start + step]
            codes, _ = self._search(z[part], enrolled, depth=total)  # (p, enrolled)
            found = codes == truth[part][:, None]
            rank[part] = np.where(found.any(1), found.argmax(1), -1)
        if lost := int((rank < 0).sum()):
            warnings.warn(
                f"mrr: a search of index {self.index!r} reaches no item of the true identity "
                f"of {lost} of {rank.size} known queries, which count as reciprocal rank 0; "
                "index='exact' ranks every identity", UserWarning, stacklevel=3)
        return rank

    # -- persistence --------------------------------------------------------------------
    def save(self, path: str | Path, *, model_sha256: str | None = None) -> Path:
        """Write the gallery and threshold to directory ``path`` (no pickle).

        ``model_sha256``: the fingerprint of the model that embedded the data it was fitted
        on (``dmlkit embed`` records it in its ``.npz``), recorded for a kit without a run
        embedder so that embeddings of another model can be refused
        (:func:`~dmlkit.apps.persistence.check_kit_model`)."""
        check_is_fitted(self, "index_")
        if self.identities_.dtype.hasobject:
            raise TypeError("identities must be numbers or strings to be saved")
        return save_kit(path, self, arrays={"identities": self.identities_,
                                            "counts": self.counts_, "sums": self.sums_,
                                            "item_codes": self.item_codes_},
                        state={"threshold_": float(self.threshold_),
                               "calibration_far_": getattr(self, "calibration_far_", None)},
                        count=self.index_.ntotal, index=self.index_,
                        model_sha256=model_sha256)

    @classmethod
    def load(cls, path: str | Path) -> Identifier:
        """Load an identifier saved by :meth:`save` (checked; no pickle)."""
        from dmlkit.index.io import IndexFormatError

        index_files: dict[str, bytearray] = {}
        ident, state, arrays = load_kit(path, cls, index_files=index_files)
        try:
            ident.threshold_ = float(state["threshold_"])
            far = state.get("calibration_far_")  # (None: closed set, or saved without it)
            ident.calibration_far_ = None if far is None else float(far)
            ident.identities_, ident.counts_ = arrays["identities"], arrays["counts"]
            ident.sums_, ident.item_codes_ = arrays["sums"], arrays["item_codes"]
        except (KeyError, TypeError, ValueError) as err:
            raise IndexFormatError(f"{path}: incomplete identifier state ({err})") from None
        ident.index_ = load_kit_index(path, index_files)
        ids = ident.index_.ids
        if (ident.counts_.shape != ident.identities_.shape
                or ident.sums_.shape != (ident.counts_.size, ident.index_.dim)
                or (ident.mode == "nearest" and ids.size and (
                    ids.max() >= ident.item_codes_.size
                    or (ident.item_codes_[ids] < 0).any()))):
            raise IndexFormatError(f"{path}: gallery arrays do not match each other")
        ident._refresh()
        return ident

    def __sklearn_tags__(self):  # noqa: D105
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags


def _is_text(a: np.ndarray) -> bool:
    """Whether identities ``a`` are strings (else numbers)."""
    return a.dtype.kind in "USO"


__all__ = ["Identifier", "MODES"]
