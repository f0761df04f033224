"""One entry point for every metric over embeddings, and for a trained run directory."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmlkit._checks import check_finite_rows, is_int
from dmlkit._files import publish_mode
from dmlkit.evaluation.clustering import clustering_metrics
from dmlkit.evaluation.embedding_checks import check_magnitude
from dmlkit.evaluation.few_shot import NotEnoughClassesError, few_shot_accuracy
from dmlkit.evaluation.hierarchical import hierarchical_retrieval_metrics
from dmlkit.evaluation.retrieval import _as_tensor, label_codes, parse_k, retrieval_metrics
from dmlkit.evaluation.verification import (
    check_max_pairs,
    indexed_pair_scores,
    pairs_from_labels,
    verification_metrics,
)
from dmlkit.functional.distances import check_dim, peak_scaled
from dmlkit.functional.labels import check_labels
from dmlkit.functional.retrieval import canonical_metric

SECTIONS = ("retrieval", "clustering", "verification", "few_shot")


def evaluate_embeddings(
    embeddings,
    labels,
    ref_embeddings=None,
    ref_labels=None,
    *,
    ref_includes_query: bool = False,
    metric: str = "euclidean",
    k: Sequence[int] = (1, 2, 4, 8),
    sections: Sequence[str] = SECTIONS,
    seed: int = 0,
    max_pairs: int | None = 1_000_000,
    n_folds: int = 10,
    few_shot: Sequence[tuple[int, int]] = ((5, 1), (5, 5)),
    episodes: int = 600,
    per_class: bool = False,
    full_ranking: bool = False,
    out: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Retrieval, clustering, verification and few-shot metrics of labelled embeddings.

    Parameters
    ----------
    embeddings, labels : Tensor or ndarray
        ``(n, d)`` query embeddings (integer ones are read as float32, for every
        section) and their labels: ``(n,)`` class ids, ``(n, L)``
        hierarchical labels (coarsest level first) or ``(n, C)`` bool multi-labels.
        Retrieval and verification treat an item's full label row as its class (the
        leaf, for hierarchical labels); clustering and few-shot need ``(n,)`` labels.
    ref_embeddings, ref_labels : optional
        A separate gallery for retrieval (default: leave-one-out on ``embeddings``).
        Queries that appear verbatim in it (each would retrieve itself first) are warned
        about, unless ``ref_includes_query``.
    ref_includes_query : bool
        The gallery's first ``n`` rows are the ``n`` query embeddings, with their labels
        (e.g. ``evaluate_embeddings(x[:50], y[:50], x, y, ref_includes_query=True)``):
        each query skips its own row, as in leave-one-out
        (:func:`~dmlkit.evaluation.retrieval_metrics`; a ``ValueError`` when the first
        rows are not the queries).
    metric : str
        ``"euclidean"``, ``"cosine"`` or ``"dot"`` (or an alias, in any case: the result
        names the canonical one); verification scores are the matching similarity
        (negated distance for euclidean). Cosine holds at any scale of the embeddings
        (rows of any norm, tiny or huge, are normalized in every section).
    sections : sequence of str
        Subset of ``("retrieval", "clustering", "verification", "few_shot")``.
    seed : int
        Seeds k-means, pair sampling, cross-validation folds and episodes (``>= 0``).
    max_pairs : int or None
        Verification uses all pairs of the set, or, when it has more, this many sampled
        ones (an integer ``>= 1``; None: always every pair).
    few_shot : sequence of (n_way, k_shot)
        Episode settings (``n_way >= 2``, ``k_shot >= 1``); settings the data cannot
        support (too few classes with enough items) are skipped with a note.
    full_ranking : bool
        Also compute retrieval's ``mean_average_precision`` and ``mean_reciprocal_rank``
        (a pass over every query's whole ranking: several times slower on large sets),
        and, with hierarchical labels, both at every level of ``"hierarchical"``.
    out : path, optional
        Also write the result as JSON (atomically).
    log : callable, optional
        Receives a line as each section starts and ends, with its time (progress on
        large sets).

    Returns
    -------
    dict
        ``{"retrieval": {...}, "clustering": {...}, "verification": {...},
        "few_shot": {"5way_1shot": {...}, ...}, "num_embeddings": n, "metric": metric}``;
        with ``(n, L)`` hierarchical labels and the retrieval section, also
        ``"hierarchical"``: :func:`~dmlkit.evaluation.hierarchical_retrieval_metrics`
        (per-level metrics ``{name}_level_{l}``, hierarchical precision and nDCG).

    Raises
    ------
    ValueError
        Before any section runs: embeddings that are not a non-empty ``(n, d >= 1)``
        matrix of finite values (for ``"euclidean"`` and ``"dot"``, small enough that
        squared distances do not overflow), labels that are not one row per embedding (the same for
        the gallery, of the embeddings' width, given with its labels), an unknown section
        or metric, a bad ``k``, a negative ``seed``, ``n_folds < 2``, ``episodes < 1``,
        ``max_pairs < 1`` or a bad few-shot setting; ``ref_includes_query`` with a
        gallery whose first rows are not the queries. Labels that make a
        section trivial (one class; every item its own class) are warned about.
    """
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    metric = canonical_metric(metric)  # ("COSINE" normalizes for clustering as "cosine")
    _check_settings(seed, n_folds, episodes, few_shot, max_pairs)
    k = parse_k(k)
    # class names as integer codes (per-class results are keyed by the names again)
    labels, ref_labels, label_names = label_codes(labels, ref_labels, return_names=True)
    x, y, ref_embeddings, ref_labels = _check_inputs(embeddings, labels, ref_embeddings,
                                                     ref_labels, metric)
    # cosine: each row scaled by a power of two (exact; direction kept bit for bit), so
    # the float64 norms of verification and few-shot neither underflow nor overflow
    scored = peak_scaled(x) if metric == "cosine" else x
    result: dict[str, Any] = {"num_embeddings": int(x.shape[0]), "metric": metric,
                              "seed": seed}
    if "retrieval" in sections:
        gallery = ("leave-one-out" if ref_embeddings is None else
                   f"{len(ref_embeddings)} references"
                   + (", the queries first" if ref_includes_query else ""))
        queries = query_count(y, ref_labels, ref_includes_query=ref_includes_query)
        with _section(log, f"retrieval ({queries} queries, {gallery})",
                      left_out_queries(x.shape[0], queries,
                                       ref_labels is None or ref_includes_query)):
            result["retrieval"] = retrieval_metrics(
                x, y, ref_embeddings, ref_labels, k=k, metric=metric, per_class=per_class,
                ref_includes_query=ref_includes_query, average_precision=full_ranking,
                reciprocal_rank=full_ranking)
            if per_class and label_names is not None:  # keyed by names (leaf rows: tuples)
                result["retrieval"]["per_class"] = {
                    _named(code, label_names): v
                    for code, v in result["retrieval"]["per_class"].items()}
        if y.dim() == 2 and y.dtype != torch.bool:  # hierarchical: every level, graded
            with _section(log, f"hierarchical retrieval ({y.shape[1]} levels)"):
                result["hierarchical"] = hierarchical_retrieval_metrics(
                    x, y, ref_embeddings, ref_labels, k=k, metric=metric,
                    ref_includes_query=ref_includes_query, full_ranking=full_ranking)
    flat_labels = y.dim() == 1
    if "clustering" in sections:
        with _section(log, "clustering (k-means)"):
            result["clustering"] = (
                clustering_metrics(x, y, seed=seed, normalize=metric == "cosine")
                if flat_labels else {"skipped": "clustering needs (n,) class labels"})
    if "verification" in sections:
        with _section(log, "verification"):
            result["verification"] = _verification(scored, y, metric, max_pairs, n_folds,
                                                   seed)
    if "few_shot" in sections:
        with _section(log, f"few-shot ({episodes} episodes per setting)"):
            result["few_shot"] = _few_shot(scored, y, flat_labels, few_shot, episodes, metric,
                                           seed)
    if out is not None:
        write_json(result, out)
    return result


def query_count(labels: torch.Tensor, ref_labels: torch.Tensor | None = None, *,
                ref_includes_query: bool = False) -> int:
    """How many items of ``labels`` are retrieval queries, as ``num_queries`` counts them:
    those with a relevant reference (``same_label``): another item of their class in
    leave-one-out (``ref_labels`` None), else a reference of their class (another one
    than the query's own row, with ``ref_includes_query``). Labels are
    ``(n,)``, ``(n, L)`` (a class is a whole row) or ``(n, C)`` bool (sharing any label);
    counted per class, in ``O(n)`` memory. Labels of two kinds or widths: every item (the
    metrics refuse them)."""
    if ref_labels is not None and (ref_labels.shape[1:] != labels.shape[1:]
                                   or (ref_labels.dtype == torch.bool)
                                   != (labels.dtype == torch.bool)):
        return int(labels.shape[0])
    need = 2 if ref_labels is None or ref_includes_query else 1  # (the query's own row)
    if labels.dtype == torch.bool:  # multi-label: some label of the row held by another
        counts = (labels if ref_labels is None else ref_labels).sum(0)  # (C,)
        held = counts >= need  # (C,)
        return int((labels & held[None, :]).any(1).sum())
    if ref_labels is None:
        _, group, counts = torch.unique(labels, dim=0, return_inverse=True, return_counts=True)
        return int((counts[group.reshape(-1)] >= 2).sum())
    both = torch.cat([labels, ref_labels.to(labels.dtype)])  # (n + m, ...)
    group = torch.unique(both, dim=0, return_inverse=True)[1].reshape(-1)  # (n + m,)
    n = labels.shape[0]
    in_ref = torch.bincount(group[n:], minlength=int(group.max()) + 1)  # (classes,)
    return int((in_ref[group[:n]] >= need).sum())


def left_out_queries(n: int, queries: int, leave_one_out: bool = True) -> str:
    """``"; 1 of the 61 items is not a query: ..."`` (how many of ``n`` items are not among
    the ``queries`` and why), or ``""`` when every item is a query."""
    left = n - queries
    if left <= 0:
        return ""
    one = left == 1
    why = ((f"{'its class has' if one else 'their classes have'} no other item, so "
            f"{'it has' if one else 'they have'} no positive to retrieve") if leave_one_out
           else f"no reference is of {'its class' if one else 'their classes'}")
    return f"; {left} of the {n} items {'is not a query' if one else 'are not queries'}: {why}"


def _named(code: int | tuple[int, ...], names: list[str]) -> str | tuple[str, ...]:
    """A per-class key of codes as names: a class's name, or a leaf row's tuple of names."""
    return tuple(names[c] for c in code) if isinstance(code, tuple) else names[code]


def _check_settings(seed: int, n_folds: int, episodes: int,
                    few_shot: Sequence[tuple[int, int]], max_pairs: int | None) -> None:
    """Refuse bad settings before any section runs (a ``ValueError`` naming each)."""
    for name, value, low in (("seed", seed, 0), ("n_folds", n_folds, 2),
                             ("episodes", episodes, 1)):
        if not is_int(value) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    check_max_pairs(max_pairs)
    for setting in few_shot:
        ok = isinstance(setting, (tuple, list)) and len(setting) == 2
        if not (ok and is_int(setting[0]) and setting[0] >= 2 and is_int(setting[1])
                and setting[1] >= 1):
            raise ValueError(f"few_shot settings are (n_way >= 2, k_shot >= 1) pairs of "
                             f"integers, got {setting!r}")


def _label_tensor(labels, n: int, name: str, of: str) -> torch.Tensor:
    """``labels`` (tensor, array or list) checked as one label row per row of ``of``."""
    if not isinstance(labels, (torch.Tensor, np.ndarray)):
        labels = np.asarray(labels)
    if labels.ndim >= 1 and labels.shape[0] != n:
        raise ValueError(f"{name} has {labels.shape[0]} rows but {of} has {n}: give one "
                         f"label per row of {of}")
    return check_labels(_as_tensor(labels, name, labels=True), n, name)


def _check_inputs(embeddings, labels, ref_embeddings, ref_labels,
                  metric: str = "euclidean") -> tuple:
    """``(embeddings, labels, ref_embeddings, ref_labels)`` as tensors (the gallery None
    when not given), checked once for every section: embeddings
    (:func:`_check_embeddings` under ``metric``), one label row per embedding
    (:func:`check_labels`), and
    a gallery of embeddings and labels given together, of one width and one label row
    each. Any of these is a one-line ``ValueError`` (``TypeError`` for a wrong dtype)."""
    x = _as_float(torch.as_tensor(embeddings))
    _check_embeddings(x, "embeddings", metric)
    y = _label_tensor(labels, x.shape[0], "labels", "embeddings")
    if (ref_embeddings is None) != (ref_labels is None):
        raise ValueError("pass ref_embeddings and ref_labels together, or neither")
    if ref_embeddings is None:
        return x, y, None, None
    ref = _as_float(torch.as_tensor(ref_embeddings))
    _check_embeddings(ref, "ref_embeddings", metric)
    if ref.shape[1] != x.shape[1]:
        raise ValueError(f"embeddings have dim {x.shape[1]} but ref_embeddings have dim "
                         f"{ref.shape[1]}")
    return x, y, ref, _label_tensor(ref_labels, ref.shape[0], "ref_labels", "ref_embeddings")


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """Integer (or bool) embeddings as float32, as ``dmlkit evaluate`` reads them from a
    ``.npz``: every section then computes on the same values (float tensors, and complex
    ones, which :func:`_check_embeddings` refuses, are returned as they are)."""
    return x if x.is_floating_point() or x.is_complex() else x.float()


def _check_embeddings(x: torch.Tensor, name: str, metric: str = "euclidean") -> None:
    """A one-line ``ValueError`` unless ``x`` is a non-empty ``(n, d >= 1)`` matrix of
    finite values (NaN would otherwise reach k-means and sklearn's own message), checked
    in their own precision (float64 values beyond float32's range are finite), whose
    squared distances do not overflow (:func:`check_magnitude`; not for ``"cosine"``,
    which every section computes on rows scaled to a safe range)."""
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (n, d) array, got shape "
                         f"{tuple(x.shape)}")
    check_dim(x, name)
    if x.is_floating_point():
        values = x.detach().cpu()
        if values.dtype not in (torch.float32, torch.float64):  # (numpy has no bfloat16)
            values = values.float()
        check_finite_rows(values.numpy(), name)
        if metric != "cosine":
            check_magnitude(values, name)


@contextmanager
def _section(log: Callable[[str], None] | None, name: str, note: str = "",
             ) -> Iterator[None]:
    """Report the start (with ``note``, e.g. ``"; ..."``, inside the closing parenthesis
    of ``name``) and the duration of one section to ``log``."""
    start = time.perf_counter()
    if log is not None:
        log(f"{name[:-1]}{note}) ..." if note and name.endswith(")") else f"{name}{note} ...")
    yield
    if log is not None:
        log(f"{name}: {time.perf_counter() - start:.1f} s")


def _verification(x, y, metric, max_pairs, n_folds, seed) -> dict[str, Any]:
    if x.shape[0] < 2:
        return {"skipped": f"need at least 2 embeddings to form pairs, got {x.shape[0]}"}
    i, j, same = pairs_from_labels(y, max_pairs=max_pairs, seed=seed)
    if same.all() or not same.any():
        return {"skipped": "need both same and different pairs"}
    scores = indexed_pair_scores(x, i, j, metric)  # chunked by bytes, not by pairs
    return verification_metrics(scores, same, n_folds=n_folds, seed=seed)


def _few_shot(x, y, flat_labels, settings, episodes, metric, seed) -> dict[str, Any]:
    shots: dict[str, Any] = {}
    for n_way, k_shot in settings:
        name = f"{n_way}way_{k_shot}shot"
        if not flat_labels:
            shots[name] = {"skipped": "few-shot episodes need (n,) class labels"}
            continue
        try:
            shots[name] = few_shot_accuracy(x, y, n_way=n_way, k_shot=k_shot,
                                            episodes=episodes, metric=metric, seed=seed)
        except NotEnoughClassesError as err:  # the data, not the arguments
            shots[name] = {"skipped": str(err)}
    return shots


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, tuple) else "/".join(map(str, k)): _plain(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_text(text: str, path: str | Path) -> Path:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    """Write ``result`` as JSON atomically (temp file, then rename); NaN becomes null."""
    return write_text(json.dumps(_plain(result), indent=2, allow_nan=False), path)


__all__ = ["SECTIONS", "evaluate_embeddings", "left_out_queries", "query_count", "write_json",
           "write_text"]
