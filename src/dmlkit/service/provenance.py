"""Whether the service's index and verifier belong to the model it serves.

An index holds the embeddings of one model, and a verifier's threshold holds for the
scores of one model's embeddings: served with another model, every search and every
decision is silently wrong. The served embedder says where its weights come from
(``run_dir``, ``model_sha256``); indexes record the run they were built from in their
``info`` (``run_dir``, and ``model_sha256`` where recorded), and verifier kits the run they
embed with and its fingerprint (:mod:`dmlkit.apps.persistence`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np


def _same_path(a: str, b: str) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _fingerprint_of(run_dir: str) -> str | None:
    """The fingerprint of a run directory's weights, ``None`` when it cannot be loaded."""
    from dmlkit.apps.persistence import run_fingerprint

    try:
        return run_fingerprint(run_dir)
    except (FileNotFoundError, ValueError, OSError):
        return None


def check_index_source(info: dict[str, Any], embedder: Any, where: str = "the index") -> None:
    """Refuse to serve an index built with another model than ``embedder``'s.

    Parameters
    ----------
    info : dict
        The index's ``info`` (``run_dir`` and ``model_sha256`` when it was built from a
        run).
    embedder : object or None
        The served embedder (``run_dir`` and ``model_sha256`` attributes; ``None``: a
        service of embeddings alone, nothing to check).
    where : str
        How messages name the index.

    Raises
    ------
    ValueError
        When the index's recorded fingerprint differs from the served model's, or, with no
        fingerprint recorded, when the index names another run whose weights differ.

    Warns
    -----
    UserWarning
        When the index records no fingerprint and its run cannot be compared, or when the
        served model records none (an ONNX export from before ``dmlkit export`` recorded
        ``model_sha256``) while the index names its model.
    """
    if embedder is None:
        return
    built_dir, built_sha = info.get("run_dir"), info.get("model_sha256")
    served_dir = getattr(embedder, "run_dir", None)
    served_sha = getattr(embedder, "model_sha256", None)
    served = served_dir or "the served model"
    rebuild = (f"rebuild the index with the served run (dmlkit index build {served} ...), or "
               f"serve the run it was built with{f' ({built_dir})' if built_dir else ''}")
    if built_sha is not None and served_sha is not None:
        if built_sha != served_sha:
            raise ValueError(
                f"{where} holds embeddings of another model than the one served: it was "
                f"built with the weights of {built_dir or 'another run'}, and {served} has "
                f"other weights (retrained, or another run); {rebuild}")
        return
    if built_dir is None and built_sha is None:
        return  # built from an embeddings file: nothing records its model
    if served_sha is None:
        origin = f" (exported from {served_dir})" if served_dir else ""
        warnings.warn(
            f"the served model{origin} records no fingerprint of its weights (an ONNX export "
            "written before dmlkit export recorded model_sha256 in FILE.onnx.json), so it "
            f"cannot be checked that {where} holds its embeddings; export the run again "
            "(dmlkit export RUN_DIR --out FILE.onnx --force) to have the service check it",
            UserWarning, stacklevel=2)
        return
    if not _same_path(str(built_dir), str(served_dir or "")):
        other = _fingerprint_of(str(built_dir))
        if other is not None and other != served_sha:
            raise ValueError(f"{where} was built with the run {built_dir}, whose model is not "
                             f"the served {served}; {rebuild}")
        if other is None:
            warnings.warn(f"{where} was built with the run {built_dir}, which cannot be loaded "
                          f"now, and records no fingerprint of its weights: it cannot be "
                          f"checked that it holds embeddings of the served {served}",
                          UserWarning, stacklevel=2)
        return
    warnings.warn(f"{where} records no fingerprint of the weights of {built_dir}: if the run "
                  "was trained further after the index was built, its embeddings are stale "
                  f"and searches are wrong; {rebuild.split(', or')[0]}", UserWarning,
                  stacklevel=2)


class VerifierScorer:
    """Scores and decisions of a fitted :class:`~dmlkit.apps.Verifier` on the embeddings
    the service computed (they are never embedded again).

    Parameters
    ----------
    verifier : Verifier
        Fitted on the embeddings of the served model: either with that run as its
        embedder (checked by fingerprint), or with no embedder, on embeddings of the
        index's dimension.
    embedder : object or None
        The served embedder.
    dim : int
        The index's dimension.

    Raises
    ------
    ValueError
        When the verifier embeds with another model than the served one, or needs a model
        and the service has none, or was fitted on embeddings of another dimension.
    """

    def __init__(self, verifier: Any, embedder: Any, dim: int) -> None:
        from dmlkit.apps.persistence import run_embedder

        self.verifier = verifier
        self.metric = str(verifier.metric)
        self.threshold = float(verifier.threshold_)
        kit_run = run_embedder(verifier)
        refit = ("fit and save a verifier with the served run (dmlkit verify RUN --data ... "
                 "--save KIT)")
        if kit_run is None:
            if verifier.embedder is not None:
                raise ValueError("the verifier embeds with a module or callable; serve a "
                                 f"verifier fitted with a run directory, or {refit}")
            fitted = int(getattr(verifier, "n_features_in_", dim))
            if fitted != int(dim):
                raise ValueError(f"the verifier was fitted on {fitted}-dimensional rows, but "
                                 f"the service's embeddings have {dim} dimensions; {refit}")
            return
        if embedder is None:
            raise ValueError(f"the verifier scores embeddings of the run {kit_run}, but this "
                             f"service has no model: start it with --run {kit_run}")
        served_sha = getattr(embedder, "model_sha256", None)
        if served_sha is None:
            warnings.warn(f"the verifier was fitted with the run {kit_run}; the served model's "
                          "weights are unknown (an ONNX export whose FILE.onnx.json records no "
                          "model_sha256), so it cannot be checked that they are the same; "
                          "export the run again (dmlkit export RUN_DIR --out FILE.onnx "
                          "--force)", UserWarning, stacklevel=2)
            return
        kit_sha = _fingerprint_of(kit_run)
        if kit_sha != served_sha:
            raise ValueError(
                f"the verifier was fitted on embeddings of the run {kit_run}, but the service "
                f"embeds with {getattr(embedder, 'run_dir', None) or 'another model'}, whose "
                f"weights differ: its threshold does not hold for them; {refit}")

    def scores(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``(m,)`` float64 verifier scores of pairs of embeddings ``(m, dim)``."""
        return np.asarray(self.verifier.score_embeddings(a, b), dtype=np.float64)

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """``(m,)`` bool: pairs accepted as the same identity."""
        return scores >= self.threshold


__all__ = ["VerifierScorer", "check_index_source"]
