"""Whether the service's index and verifier belong to the model it serves.

An index holds the embeddings of one model, and a verifier's threshold holds for the
scores of one model's embeddings: served with another model, every search and every
decision is silently wrong. The served embedder says where its weights come from
(``run_dir``, ``model_sha256``); indexes record the run they were built from in their
``info`` (``run_dir``, and ``model_sha256`` where recorded), and verifier kits the run they
embed with and its fingerprint, or, fitted on embeddings, the fingerprint those recorded
(:mod:`dmlkit.apps.persistence`). The index rule,
:func:`check_index_source`, lives in :mod:`dmlkit.index.provenance` (``dmlkit search``
applies it too, without the service's dependencies).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from dmlkit.index.provenance import _fingerprint_of, check_index_source


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
    index_sha : str or None
        The fingerprint of the model whose embeddings the index holds (its ``info``'s
        ``model_sha256``), the served space when the service has no model.

    Raises
    ------
    ValueError
        When the verifier embeds with another model than the served one, or needs a model
        and the service has none, or was fitted on embeddings of another dimension, or
        (fitted on embeddings) records a model other than the served one (or, with no
        model served, than the index's).

    Warns
    -----
    UserWarning
        When the verifier was fitted on embeddings that record no model fingerprint: its
        threshold is served against any model, unchecked.
    """

    def __init__(self, verifier: Any, embedder: Any, dim: int,
                 index_sha: str | None = None) -> None:
        from dmlkit.apps.persistence import check_kit_model, kit_model, run_embedder

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
            if embedder is not None:
                served = getattr(embedder, "model_sha256", None)
                source = f"those of the served {getattr(embedder, 'run_dir', None) or 'model'}"
            else:
                served, source = index_sha, "those the index holds"
            check_kit_model(verifier, served, source, "the verifier")
            if kit_model(verifier) is None:
                warnings.warn(
                    "the verifier records no model fingerprint (it was fitted on embeddings "
                    "from a file that records no model_sha256, e.g. one re-saved with numpy), "
                    f"so it cannot be checked that its threshold holds for {source}; to have "
                    "the service check it, fit and save it again with the served run (dmlkit "
                    "verify RUN --data ... --save KIT) or on the file dmlkit embed wrote "
                    "with it", UserWarning, stacklevel=2)
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
