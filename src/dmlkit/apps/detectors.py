"""Anomaly detectors by name: fit one of the methods on normal rows, load a saved one, and
check the rows one is asked to score.

The methods are :class:`~dmlkit.apps.outliers.MetricOutlierDetector`'s (``"knn"``,
``"prototype"``, ``"mahalanobis"``) and ``"deep_svdd"``
(:class:`~dmlkit.apps.deep_svdd.DeepSVDD`, which trains its own network). A saved
detector keeps the method, contamination and neighbours it was fitted with
(:data:`SETTINGS`); :data:`DEFAULTS` fills in those a new one is not given. ``dmlkit
detect-anomalies`` is thin over this module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dmlkit.apps.outliers import METHODS
from dmlkit.index.io import with_article

#: every method a detector is fitted with
DETECTOR_METHODS = (*METHODS, "deep_svdd")
#: the settings a fitted detector fixes, and their values when none is given
SETTINGS = ("method", "contamination", "n_neighbors")
DEFAULTS: dict[str, Any] = {"method": "knn", "contamination": 0.1, "n_neighbors": 5}
#: the command that fits and saves a detector, named where a saved one is refused
REFIT = "dmlkit detect-anomalies --normal EMBEDDINGS.npz ... --save KIT"
#: the class each method's detector is
_KINDS = {"deep_svdd": "DeepSVDD"}


def check_method(method: str, option: str = "--method") -> None:
    """Raise a ``ValueError`` naming every method (given as ``option``) unless ``method``
    is one."""
    if method not in DETECTOR_METHODS:
        raise ValueError(f"{option} must be one of {list(DETECTOR_METHODS)}, got {method!r}")


def detector_settings(method: str | None = None, contamination: float | None = None,
                      n_neighbors: int | None = None, *,
                      run_dir: Path | None = None) -> tuple[str, float, int]:
    """``(method, contamination, n_neighbors)`` of a detector to fit, :data:`DEFAULTS`
    for those given as ``None``; the method checked, and ``"deep_svdd"`` refused with a
    run (``run_dir``) to embed its inputs: it trains its own network on them. Neighbours
    given for a method that has none (all but ``"knn"``) are refused, not ignored."""
    given = {"method": method, "contamination": contamination, "n_neighbors": n_neighbors}
    method, contamination, n_neighbors = (
        DEFAULTS[name] if given[name] is None else given[name] for name in SETTINGS)
    check_method(method)
    if given["n_neighbors"] is not None and method != "knn":
        raise ValueError(f"--k {n_neighbors} sets the neighbours of the knn score, and "
                         f"--method {method} uses none: omit --k (or use --method knn)")
    if method == "deep_svdd" and run_dir is not None:
        raise ValueError("deep_svdd trains its own network: omit RUN_DIR")
    return method, contamination, n_neighbors


def detector_kind(method: str) -> str:
    """The class name of the detector ``method`` fits (what its saved manifest names)."""
    return _KINDS.get(method, "MetricOutlierDetector")


def fit_detector(x: Any, y: Any, method: str, contamination: float, n_neighbors: int,
                 run_dir: Path | None = None, *,
                 log: Callable[[str], None] | None = None) -> Any:
    """A detector of ``method`` fitted on the normal rows ``x`` (class labels ``y``, used
    by ``"prototype"`` and ``"mahalanobis"``; ``None``: none), embedded by the run in
    ``run_dir`` (``None``: rows of features). ``log`` gets the progress lines of a
    method that trains a network (one per epoch of ``"deep_svdd"``)."""
    from dmlkit.apps.deep_svdd import DeepSVDD
    from dmlkit.apps.outliers import MetricOutlierDetector

    if method == "deep_svdd":
        return DeepSVDD(contamination=contamination).fit(x, log=log)
    det = MetricOutlierDetector(method, n_neighbors=n_neighbors,
                                contamination=contamination, embedder=run_dir)
    return det.fit(x, y if method != "knn" else None)


def load_detector(path: Path) -> Any:
    """The detector saved in directory ``path`` (a MetricOutlierDetector or DeepSVDD)."""
    from dmlkit.apps.deep_svdd import DeepSVDD
    from dmlkit.apps.outliers import MetricOutlierDetector
    from dmlkit.apps.persistence import kit_kind

    kinds = {cls.__name__: cls for cls in (MetricOutlierDetector, DeepSVDD)}
    kind = kit_kind(path)
    if kind not in kinds:
        raise ValueError(f"{path} holds {with_article(kind)}, not an anomaly detector")
    return kinds[kind].load(path)


def check_features(x: Any, source: str, detector: Path | None = None) -> None:
    """Refuse inputs ``x`` (from ``source``) that are not rows of features (images ``(n,
    C, H, W)``, ...) where nothing embeds them: no run, or a saved ``detector`` fitted on
    features."""
    if x.ndim <= 2:
        return
    shape, flat = tuple(x.shape[1:]), int(np.prod(x.shape[1:]))
    if detector is not None:
        raise ValueError(f"{source} holds arrays of shape {shape} per row, but the "
                         f"detector {detector} scores rows of features: flatten them to "
                         f"{flat} values per row, as its normal data was")
    raise ValueError(f"{source} holds arrays of shape {shape} per row, not rows of "
                     "features, and no RUN_DIR embeds them: give RUN_DIR (a run whose model "
                     "takes these inputs), use --method deep_svdd (it trains a network on "
                     f"them) or flatten them to {flat} values per row")


def check_labels(y: Any, source: str) -> None:
    """Refuse class labels ``y`` (from ``source``) with NaN among them: the classes of
    ``"prototype"`` and ``"mahalanobis"`` would include a class of unlabelled rows."""
    if y is None:
        return
    y = np.asarray(y)
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        bad = int((~np.isfinite(y)).sum())
        raise ValueError(f"{source}: its labels hold NaN or infinity in {bad} of {len(y)} "
                         "rows; give every row a class label, or drop the labels array "
                         "(the method then finds its own prototypes)")


def check_raw_inputs(path: Path, option: str, embedder: str) -> None:
    """Refuse the file ``path`` (given as ``option``) when it is an embeddings file (it
    records the fingerprint of the model that embedded it, as ``dmlkit embed`` writes
    it) where ``embedder`` (a run, or a detector embedding with one) takes raw inputs:
    they would be embedded a second time."""
    from dmlkit.index.provenance import EMBEDDINGS_MODEL_KEY, embeddings_fingerprint

    if not Path(path).is_file() or embeddings_fingerprint(path) is None:
        return
    raise ValueError(f"{option} {path} holds embeddings (it records the model that embedded "
                     f"it, {EMBEDDINGS_MODEL_KEY}), but {embedder} embeds raw inputs, so they "
                     "would be embedded again: pass the raw inputs, or fit the detector on "
                     "the embeddings (omit RUN_DIR: --normal EMBEDDINGS.npz)")


def check_detector_model(det: Any, detector: Path, data: Path) -> None:
    """Refuse to score the embeddings file ``data`` with the saved detector ``det`` (from
    directory ``detector``) when ``data`` records the fingerprint of another model than
    the one whose embeddings the detector was fitted on (either unknown: nothing to
    compare)."""
    from dmlkit.apps.persistence import check_kit_model
    from dmlkit.index.provenance import embeddings_fingerprint

    check_kit_model(det, embeddings_fingerprint(data), f"those of --data {data}",
                    f"the detector {detector}", refit=REFIT)


def fitted_model(det: Any, embedded_by: str | None = None) -> str | None:
    """The fingerprint to save detector ``det`` with (``save(path, model_sha256=...)``):
    ``None`` for one with a run embedder (it records its run's); else ``embedded_by``,
    the fingerprint of the model that embedded the normal rows it was fitted on, when
    known, or else the one a loaded ``det`` records (``None``: unknown)."""
    from dmlkit.apps.persistence import kit_model, run_embedder

    if run_embedder(det) is not None:
        return None
    return embedded_by if embedded_by is not None else kit_model(det)


__all__ = ["DEFAULTS", "DETECTOR_METHODS", "REFIT", "SETTINGS", "check_detector_model",
           "check_features", "check_labels", "check_method", "check_raw_inputs",
           "detector_kind", "detector_settings", "fit_detector", "fitted_model",
           "load_detector"]
