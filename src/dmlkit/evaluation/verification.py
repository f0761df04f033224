"""Verification: is a pair "same" or "different"? ROC, AUC, EER, TAR@FAR, k-fold accuracy
(the LFW protocol of Huang et al. 2007) and a FAR-targeted threshold calibrator."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from dmlkit._checks import is_int
from dmlkit.functional.chunking import chunk_size_for, row_chunks
from dmlkit.functional.distances import check_dim
from dmlkit.functional.retrieval import canonical_metric
from dmlkit.functional.verification import (
    OneKindSplitError,
    auc,
    check_scored_pairs,
    equal_error_rate,
    kfold_accuracy,
    min_dcf,
    roc_curve,
    tar_at_far,
    threshold_between,
)

DEFAULT_FARS = (1e-1, 1e-2, 1e-3, 1e-4)


def resolvable(far: float, num_negatives: int) -> bool:
    """Whether ``num_negatives`` different pairs can measure a false-accept rate of
    ``far``: their FARs are multiples of ``1 / num_negatives``, so one below that is
    measured as 0."""
    return far * num_negatives >= 1.0 - 1e-9


def pairs_needed(far: float) -> int:
    """The fewest negative pairs that resolve a false-accept rate of ``far``."""
    return max(1, math.ceil(1.0 / far - 1e-9))


def _warn_unresolvable(head: str, n_neg: int, far: float, subject: str,
                       consequence: str = "") -> None:
    """One ``UserWarning`` for a FAR that ``n_neg`` negative pairs cannot resolve
    (:func:`resolvable`), attributed to the caller of the public function: ``head``,
    what those pairs resolve, ``consequence``, and how many pairs ``subject`` (the FAR
    ``far``) needs."""
    warnings.warn(
        f"{head} {n_neg} different (negative) pairs resolve no FAR between 0 and "
        f"1/{n_neg} = {1.0 / n_neg:.3g}{consequence}; {subject} needs at least "
        f"{pairs_needed(far)} negative pairs", UserWarning, stacklevel=3)


def _check_setting(name: str, value, low: int) -> None:
    """A ``ValueError`` unless ``value`` (``seed``, ``n_folds``) is an integer ``>= low``;
    checked once where a public function takes it, trusted below."""
    if not is_int(value) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


#: bytes one chunk of pair scoring may hold: its gathered rows and float64 intermediates
PAIR_CHUNK_BYTES = 64 << 20
#: bytes per embedding coordinate of one scored pair, at most: both rows gathered (up to
#: float64, 8 + 8) and one float64 working copy (8); see :func:`_rowwise_scores`
PAIR_BYTES_PER_DIM = 24


def pair_chunk_size(n_pairs: int, dim: int, budget_bytes: int = PAIR_CHUNK_BYTES) -> int:
    """Pairs per chunk when scoring ``n_pairs`` pairs of ``dim``-d embeddings: as many as
    keep one chunk's working set (:data:`PAIR_BYTES_PER_DIM` bytes per pair and
    coordinate) under ``budget_bytes``, at least one, at most ``n_pairs``."""
    if budget_bytes < 1:
        raise ValueError(f"budget_bytes must be >= 1, got {budget_bytes}")
    return chunk_size_for(n_pairs, PAIR_BYTES_PER_DIM * max(1, dim), budget_bytes)


def _rowwise_scores(a: torch.Tensor, b: torch.Tensor, metric: str) -> np.ndarray:
    """Row-wise similarity ``(n,)`` of matched rows ``(n, d)``, in float64, with one
    float64 ``(n, d)`` working copy (``b`` is read, never written)."""
    work = a.to(torch.float64, copy=True)  # (n, d)
    if metric == "euclidean":
        return work.sub_(b).square_().sum(dim=1).sqrt_().neg_().numpy()
    norms = work.norm(dim=1) * b.double().norm(dim=1) if metric == "cosine" else None  # (n,)
    val = work.mul_(b).sum(dim=1)  # (n,)
    if norms is not None:
        val = val / norms.clamp_min(1e-12)
    return val.numpy()


def _as_cpu_tensor(v) -> torch.Tensor:
    return v.detach().cpu() if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))


def pair_scores(x_a, x_b, metric: str = "cosine", chunk: int | None = None) -> np.ndarray:
    """Row-wise similarity ``(n,)`` of paired embeddings ``(n, d)``: cosine similarity,
    inner product (``"dot"``) or negated Euclidean distance (``"euclidean"``), computed in
    float64, ``chunk`` pairs at a time (default :func:`pair_chunk_size`: a bounded number
    of bytes whatever ``d``; no float64 copy of the whole input)."""
    a, b = _as_cpu_tensor(x_a), _as_cpu_tensor(x_b)
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(
            f"paired embeddings must both be (n, d), got {tuple(a.shape)}, {tuple(b.shape)}")
    check_dim(a, "the paired embeddings")
    metric = canonical_metric(metric)
    step = pair_chunk_size(a.shape[0], a.shape[1]) if chunk is None else chunk
    out = np.empty(a.shape[0], dtype=np.float64)
    for s, e in row_chunks(a.shape[0], step):
        out[s:e] = _rowwise_scores(a[s:e], b[s:e], metric)
    return out


def indexed_pair_scores(
    embeddings, i, j, metric: str = "cosine", *, budget_bytes: int = PAIR_CHUNK_BYTES
) -> np.ndarray:
    """Row-wise similarity ``(p,)`` of the pairs ``(embeddings[i[k]], embeddings[j[k]])``.

    The scores of :func:`pair_scores` on the gathered rows, without gathering them all:
    the pairs are taken :func:`pair_chunk_size` at a time, so memory stays near
    ``budget_bytes`` however many pairs there are and however wide the embeddings.

    Parameters
    ----------
    embeddings : Tensor or ndarray
        ``(n, d)`` embeddings.
    i, j : Tensor or ndarray
        ``(p,)`` integer row indices of each pair's two members.
    metric : str
        ``"cosine"``, ``"dot"`` or ``"euclidean"`` (negated distance).
    """
    x = _as_cpu_tensor(embeddings)
    ii, jj = _as_cpu_tensor(i).long(), _as_cpu_tensor(j).long()
    if x.dim() != 2:
        raise ValueError(f"embeddings must be (n, d), got shape {tuple(x.shape)}")
    check_dim(x, "the embeddings")
    if ii.shape != jj.shape or ii.dim() != 1:
        raise ValueError(
            f"pair indices must both be (p,), got {tuple(ii.shape)}, {tuple(jj.shape)}")
    metric = canonical_metric(metric)
    out = np.empty(ii.shape[0], dtype=np.float64)
    for s, e in row_chunks(ii.shape[0], pair_chunk_size(ii.shape[0], x.shape[1], budget_bytes)):
        a, b = x.index_select(0, ii[s:e]), x.index_select(0, jj[s:e])  # (chunk, d) each
        out[s:e] = _rowwise_scores(a, b, metric)
    return out


def check_max_pairs(max_pairs: int | None) -> None:
    """A ``ValueError`` unless ``max_pairs`` is None (every pair) or an integer ``>= 1``."""
    if max_pairs is not None and not (is_int(max_pairs) and max_pairs >= 1):
        raise ValueError(f"max_pairs must be an integer >= 1 (pairs sampled when the set "
                         f"has more) or None (every pair), got {max_pairs!r}")


def pairs_from_labels(
    labels, *, max_pairs: int | None = 1_000_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ``(i, j, is_same)`` of one labelled set: all ``i < j`` pairs, or, when there
    are more than ``max_pairs`` (an integer ``>= 1``; None: no limit), that many distinct
    pairs drawn uniformly (seeded)."""
    check_max_pairs(max_pairs)
    arr = np.asarray(labels)
    if arr.dtype.kind in "USO":  # names (strings, objects): compared as codes
        arr = np.unique(arr.astype(str), return_inverse=True)[1].reshape(arr.shape)
    y = torch.as_tensor(arr)
    n = y.shape[0]
    total = n * (n - 1) // 2
    if n < 2:
        raise ValueError(f"need at least 2 items to form pairs, got {n}")
    if max_pairs is None or total <= max_pairs:
        i, j = torch.triu_indices(n, n, offset=1)
    else:
        rng = np.random.default_rng(seed)
        flat = np.sort(rng.choice(total, size=int(max_pairs), replace=False))
        # invert the row-major enumeration of the strict upper triangle
        i_np = (n - 0.5 - np.sqrt((n - 0.5) ** 2 - 2.0 * flat)).astype(np.int64)
        start = i_np * (2 * n - i_np - 1) // 2
        i_np = np.where(flat < start, i_np - 1, i_np)
        start = i_np * (2 * n - i_np - 1) // 2
        i_np = np.where(flat >= start + (n - 1 - i_np), i_np + 1, i_np)
        start = i_np * (2 * n - i_np - 1) // 2
        i, j = torch.from_numpy(i_np), torch.from_numpy(flat - start + i_np + 1)
    same = _rowwise_same(y[i], y[j])
    return i.numpy(), j.numpy(), same.numpy()


def _rowwise_same(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise form of ``same_label`` for matched rows ``(n, ...)`` -> ``(n,)`` bool
    (equal class; equal at every hierarchy level; multi-labels sharing any label)."""
    if a.dim() == 1:
        return a == b
    if a.dtype == torch.bool:
        return (a & b).any(dim=1)
    return (a == b).all(dim=1)


def verification_metrics(
    scores, is_same, *, fars: Sequence[float] = DEFAULT_FARS, n_folds: int = 10, seed: int = 0,
    p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0,
) -> dict:
    """AUC, EER, minDCF, TAR at each FAR and k-fold accuracy of scored pairs.

    ``min_dcf`` is the minimum normalized detection cost
    (:func:`dmlkit.functional.verification.min_dcf`) with prior ``p_target`` and costs
    ``c_miss`` / ``c_fa``; the defaults (0.01, 1, 1) are those of NIST SRE and VoxCeleb.

    ``tar_at_far_{far:g}`` is NaN (with one warning) for a FAR below
    ``1 / num_negative_pairs``: the only false-accept rate such a set can measure at or
    below it is 0, so the TAR there would be reported as if it were measured at ``far``.

    Returns
    -------
    dict
        ``auc``, ``eer``, ``eer_threshold``, ``min_dcf``, ``min_dcf_threshold``,
        ``tar_at_far_{far:g}`` per FAR, ``accuracy_mean``, ``accuracy_std``,
        ``accuracy_folds`` (``n_folds``, fewer when one kind of pair is too rare for
        every training split to hold it; 0 and NaN accuracy when two folds cannot),
        ``num_pairs``, ``num_same``.

    Raises
    ------
    ValueError
        ``scores`` or ``is_same`` not 1-d ``(p,)`` arrays of one length, ``n_folds`` not
        an integer ``>= 2``, ``seed`` not an integer ``>= 0``, a FAR outside ``(0, 1)``,
        or pairs of one kind only.
    """
    _check_setting("n_folds", n_folds, 2)
    _check_setting("seed", seed, 0)
    s, y = check_scored_pairs(scores, is_same)  # (1-d, one entry per pair)
    fpr, tpr, thr = roc_curve(s, y)
    eer, eer_t = equal_error_rate(fpr, tpr, thr)
    dcf, dcf_t = min_dcf(fpr, tpr, thr, p_target=p_target, c_miss=c_miss, c_fa=c_fa)
    if not np.isfinite(dcf_t):  # rejecting every pair is cheapest: a finite such threshold
        dcf_t = threshold_between(thr, 0)
    out = {"auc": auc(fpr, tpr), "eer": eer, "eer_threshold": eer_t,
           "min_dcf": dcf, "min_dcf_threshold": dcf_t}
    n_neg = int((~y).sum())
    unresolved = []
    for far in fars:
        value = tar_at_far(fpr, tpr, far)  # (checks far)
        if not resolvable(far, n_neg):
            value = float("nan")
            unresolved.append(float(far))
        out[f"tar_at_far_{far:g}"] = value
    if unresolved:
        lowest = min(unresolved)
        _warn_unresolvable(f"TAR at FAR {', '.join(f'{f:g}' for f in unresolved)} is NaN:",
                           n_neg, lowest, f"FAR {lowest:g}")
    # k-fold accuracy needs both kinds of pair in every training split: with few pairs of
    # one kind, fewer folds; NaN (and 0 folds) when even two folds cannot have that
    out["accuracy_mean"], out["accuracy_std"], out["accuracy_folds"] = np.nan, np.nan, 0
    for folds in range(min(n_folds, s.size), 1, -1):
        try:
            cv = kfold_accuracy(s, y, n_folds=folds, seed=seed)
        except OneKindSplitError:  # (bad arguments were refused above)
            continue
        out["accuracy_mean"], out["accuracy_std"] = cv["accuracy_mean"], cv["accuracy_std"]
        out["accuracy_folds"] = folds
        break
    out["num_pairs"], out["num_same"] = int(s.size), int(y.sum())
    return out


class ThresholdCalibrator:
    """Pick the score threshold whose false-accept rate meets a target (scikit-learn API).

    ``fit(scores, is_same)`` chooses the lowest threshold (highest TAR) whose FAR on the
    fitting pairs is ``<= target_far``; ``predict(scores)`` is ``scores >= threshold_``.
    Fitting pairs with fewer than ``1 / target_far`` different pairs cannot resolve the
    target (their FARs are multiples of ``1 / n_different_``): ``fit`` warns, and the
    threshold accepts none of their different pairs.

    Parameters
    ----------
    target_far : float
        Largest acceptable false-accept rate, in ``(0, 1)``.

    Attributes
    ----------
    threshold_ : float
    far_, tar_ : float
        False- and true-accept rates at ``threshold_`` on the fitting pairs.
    n_same_, n_different_ : int
    """

    def __init__(self, target_far: float = 1e-3) -> None:
        self.target_far = target_far

    def get_params(self, deep: bool = True) -> dict[str, float]:
        """Constructor parameters (scikit-learn API)."""
        return {"target_far": self.target_far}

    def set_params(self, **params: float) -> ThresholdCalibrator:
        """Set constructor parameters (scikit-learn API)."""
        for name, value in params.items():
            if name not in self.get_params():
                raise ValueError(f"unknown parameter {name!r} of ThresholdCalibrator")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        return f"ThresholdCalibrator(target_far={self.target_far!r})"

    def fit(self, scores, is_same) -> ThresholdCalibrator:
        if not 0.0 < float(self.target_far) < 1.0:
            raise ValueError(f"target_far must be in (0, 1), got {self.target_far!r}")
        s, y = check_scored_pairs(scores, is_same)
        fpr, tpr, thr = roc_curve(s, y)
        n_neg = int((~y).sum())
        far = float(self.target_far)
        if not resolvable(far, n_neg):
            _warn_unresolvable(
                f"the calibration set cannot resolve target_far={far:g}: its", n_neg, far,
                "that FAR", f", so the threshold accepts none of them (FAR 0 here, "
                f"unmeasured below {1.0 / n_neg:.3g})")
        i = int(np.flatnonzero(fpr <= self.target_far)[-1])
        self.threshold_ = threshold_between(thr, i)
        self.far_, self.tar_ = float(fpr[i]), float(tpr[i])
        self.n_same_, self.n_different_ = int(y.sum()), int((~y).sum())
        return self

    def decision_function(self, scores) -> np.ndarray:
        """Signed margin ``scores - threshold_`` (positive = accepted as same)."""
        if not hasattr(self, "threshold_"):
            from sklearn.exceptions import NotFittedError  # a ValueError and AttributeError

            raise NotFittedError(
                "this ThresholdCalibrator is not fitted yet; call fit(scores, is_same) first")
        return np.asarray(scores, dtype=np.float64).reshape(-1) - self.threshold_

    def predict(self, scores) -> np.ndarray:
        """``(n,)`` bool: accepted as the same identity/class."""
        return self.decision_function(scores) >= 0.0


__all__ = [
    "DEFAULT_FARS",
    "PAIR_CHUNK_BYTES",
    "check_max_pairs",
    "pair_chunk_size",
    "pair_scores",
    "indexed_pair_scores",
    "pairs_from_labels",
    "verification_metrics",
    "ThresholdCalibrator",
]
