"""Approximate (or exact) faiss indexes behind the :class:`~dmlkit.index.BaseIndex` surface.

faiss is optional (``pip install faiss-cpu``, or the ``faiss`` extra) and imported only
when a :class:`FaissIndex` is built or loaded.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dmlkit._checks import check_real
from dmlkit.index.base import BaseIndex, _is_tensor, to_numpy_2d
from dmlkit.index.faiss_stages import (
    POINTS_PER_CENTROID,
    check_stages,
    describe_clustering,
    stages,
)
from dmlkit.index.io import IndexFormatError

#: candidates a refine stage (``...,RFlat`` / ``Refine(...)``) re-ranks per neighbour
#: asked for when ``k_factor`` is not given (faiss's own default, 1, re-ranks only the
#: ``k`` the base index returned, so the refine stage cannot change what is found)
REFINE_K_FACTOR = 4


def import_faiss() -> Any:
    """Import faiss, or raise an ImportError that says how to install it."""
    try:
        import faiss
    except ImportError:
        raise ImportError(
            "FaissIndex needs faiss, which is not installed: pip install faiss-cpu "
            "(or pip install 'dmlkit[faiss]'); ExactIndex needs nothing extra"
        ) from None
    return faiss


def faiss_reason(err: BaseException) -> str:
    """faiss's error message without its C++ location (``Error in void faiss::... at
    /project/faiss/...cpp:64: Error: '...' failed: REASON``)."""
    text = str(err).strip()
    return re.sub(r"^Error in .*? at \S+:\d+: (Error: )?", "", text, flags=re.S) or text


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12).astype(np.float32)


class FaissIndex(BaseIndex):
    """A faiss index built from a factory string, with dmlkit ids and metadata.

    Parameters
    ----------
    dim : int
        Vector dimension.
    metric : str
        ``"l2"`` (scores = squared distances), ``"ip"`` or ``"cosine"`` (vectors are
        L2-normalized and searched by inner product).
    factory : str
        A ``faiss.index_factory`` description: ``"Flat"``, ``"IVF1024,Flat"``,
        ``"HNSW32"``, ``"IVF256,PQ16"``, ``"PQ16"`` ...
    nprobe : int, optional
        IVF lists visited per query; more than the index's lists is warned about and
        clamped to them (every list searched).
    ef_search : int, optional
        HNSW search breadth.
    k_factor : float, optional
        Indexes with a refine stage (``"IVF256,PQ16,RFlat"``, ``"...,Refine(SQ8)"``):
        the base index returns ``k_factor * k`` candidates that the refine stage re-ranks
        with its finer codes (default :data:`REFINE_K_FACTOR`).

    Notes
    -----
    Indexes that need training (IVF, PQ) are trained on the first ``add`` unless
    :meth:`train` was called. Items are stored under their ids (``IndexIDMap2`` where
    the index has no ids of its own). HNSW graphs cannot remove items.
    """

    kind = "faiss"

    def __init__(
        self,
        dim: int,
        metric: str = "l2",
        factory: str = "Flat",
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        k_factor: float | None = None,
    ) -> None:
        super().__init__(dim, metric)
        if not isinstance(factory, str) or not factory:
            raise ValueError(f"factory must be a non-empty faiss factory string, got {factory!r}")
        self.factory = factory
        self.nprobe = nprobe
        self.ef_search = ef_search
        self.k_factor = k_factor
        faiss = import_faiss()
        faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        try:
            base = faiss.index_factory(self.dim, factory, faiss_metric)
        except RuntimeError as err:
            raise ValueError(f"faiss cannot build {factory!r}: {faiss_reason(err)}") from None
        problem = check_stages(stages(faiss, base))  # faiss accepts these, then crashes
        if problem is not None:
            raise ValueError(f"invalid faiss factory {factory!r}: {problem}")
        self.index = base if _has_own_ids(faiss, base) else faiss.IndexIDMap2(base)
        self._apply_search_params()

    # -- faiss specifics ---------------------------------------------------------------
    def _apply_search_params(self) -> None:
        faiss = import_faiss()
        space = faiss.ParameterSpace()
        for name, value, what in (("nprobe", self.nprobe, "IVF"), ("efSearch", self.ef_search,
                                                                   "HNSW")):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            try:
                space.set_index_parameter(self.index, name, int(value))
            except RuntimeError:
                raise ValueError(
                    f"{name} applies to {what} indexes; {self.factory!r} has no such "
                    f"parameter") from None
            if name == "nprobe":
                nlist = int(faiss.extract_index_ivf(self.index).nlist)
                if value > nlist:  # clamped, so it is said once and saved as searched
                    import warnings

                    warnings.warn(f"nprobe {value} is more than the {nlist} lists of "
                                  f"{self.factory!r}: every list is searched (as nprobe "
                                  f"{nlist}, an exact search of the stored codes)",
                                  stacklevel=3)
                    self.nprobe = nlist
                    space.set_index_parameter(self.index, name, nlist)
        refine = refine_stage(faiss, self.index)
        value = self.k_factor
        if value is not None and (isinstance(value, bool) or not isinstance(
                value, (int, float, np.integer, np.floating)) or not 1 <= value < float("inf")):
            raise ValueError(f"k_factor must be a number >= 1, got {value!r}")
        if refine is None and value is not None:
            raise ValueError(f"k_factor applies to indexes with a refine stage (e.g. "
                             f"'IVF256,PQ16,RFlat'); {self.factory!r} has none")
        if refine is not None:
            refine.k_factor = float(REFINE_K_FACTOR if value is None else value)

    @property
    def has_refine(self) -> bool:
        """Whether the index re-ranks its candidates with a refine stage (``k_factor``)."""
        return refine_stage(import_faiss(), self.index) is not None

    @property
    def score_unit(self) -> str:
        """As :attr:`BaseIndex.score_unit`; ``"hamming"`` (bits that differ between binary
        codes, lower is closer) for an LSH index without a refine stage."""
        faiss = import_faiss()
        if not self.has_refine and any(s.kind == "LSH" for s in stages(faiss, self.index)):
            return "hamming"
        return super().score_unit

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def train(self, x: Any) -> FaissIndex:
        """Train the quantizers (IVF centroids, PQ codebooks) on ``(n, dim)`` vectors."""
        xa = self._prep(to_numpy_2d(x, self.dim))
        self._train(xa)
        return self

    def _train(self, x: np.ndarray) -> None:
        """Train faiss with its C-level stderr captured: a clustering warning becomes one
        Python warning that says what to do, not a raw faiss line."""
        import warnings

        with _captured_stderr() as captured:
            try:
                self.index.train(x)
            except RuntimeError as err:
                raise ValueError(f"faiss cannot train {self.factory!r} on {x.shape[0]} "
                                 f"vectors: {faiss_reason(err)}") from None
        if "WARNING clustering" in captured.text:  # advice for the stages that warned
            n = x.shape[0]
            what, advice = describe_clustering(stages(import_faiss(), self.index),
                                               captured.text, n)
            asked = [line.split(": ", 1)[-1] for line in captured.text.splitlines()
                     if "WARNING clustering" in line]
            warnings.warn(
                f"{self.factory}: faiss trained its quantizer on only {n} vectors "
                f"({'; '.join(dict.fromkeys(asked))}); its k-means stages ({what}) want "
                f"about {POINTS_PER_CENTROID} training vectors per centroid: train on more "
                f"vectors, or choose {advice}", UserWarning, stacklevel=3)

    def _prep(self, x: np.ndarray) -> np.ndarray:
        return _normalize(x) if self.metric == "cosine" else x

    def _add_vectors(self, x: np.ndarray, ids: np.ndarray) -> None:
        if not x.shape[0]:  # nothing to add (nor to train an untrained index on)
            return
        x = self._prep(x)
        if not self.index.is_trained:
            self._train(x)
        self.index.add_with_ids(x, ids)

    def _remove_rows(self, keep: np.ndarray, ids: np.ndarray) -> None:
        faiss = import_faiss()
        try:
            self.index.remove_ids(faiss.IDSelectorBatch(ids.astype(np.int64)))
        except RuntimeError as err:
            if refine_stage(faiss, self.index) is not None:
                why, use = ("its refine stage (RFlat / Refine) keeps vectors by position, "
                            "which faiss cannot remove", "a Flat or IVF index without a "
                            "refine stage (e.g. 'IVF256,PQ16')")
            else:
                why, use = faiss_reason(err), "a Flat or IVF index"
            raise NotImplementedError(
                f"faiss index {self.factory!r} cannot remove items ({why}); rebuild it "
                f"without them, or use {use}") from None

    def _search_ids(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        params = _graph_breadth(import_faiss(), self.index, k)
        # (faiss.contrib.torch_utils, which other libraries import, replaces ``search`` with
        # one that takes no parameters and keeps the numpy one as ``search_numpy``)
        search = self.index.search if params is None else getattr(
            self.index, "search_numpy", self.index.search)
        try:
            scores, ids = search(self._prep(q), k) if params is None else search(
                self._prep(q), k, params=params)
        except RuntimeError as err:  # faiss's own checks: one clear error, no C++ trace
            raise ValueError(f"faiss cannot search {self.factory!r}: {faiss_reason(err)}"
                             ) from None
        pad = ids < 0
        scores[pad] = np.inf if self.metric == "l2" else -np.inf
        return scores, ids

    def range_search(self, q: Any, threshold: float) -> tuple[Any, Any, Any]:
        """faiss range search: ``(lims, scores, ids)``, closest first within each query.

        faiss's convention: squared L2 distance ``< threshold`` for ``"l2"``, similarity
        ``> threshold`` for ``"ip"`` / ``"cosine"`` (approximate for IVF/HNSW/PQ).
        ``lims`` is int64 ``(n + 1,)``, ``scores`` float32 and ``ids`` int64 ``(total,)``;
        torch tensors in give torch tensors out (as :meth:`search`), anything else numpy.
        """
        is_torch = _is_tensor(q)
        qa = self._prep(to_numpy_2d(q, self.dim, "q"))
        threshold = check_real("threshold", threshold, -math.inf, math.inf, low_open=True,
                               high_open=True)
        if not self.ntotal:  # an empty index (an untrained IVF cannot even be asked)
            empty = np.zeros(0, np.float32), np.zeros(0, np.int64)
            lims, scores, ids = np.zeros(qa.shape[0] + 1, np.int64), *empty
        else:
            lims, scores, ids = self._range_search(qa, threshold)
        out = lims.astype(np.int64), scores.astype(np.float32), ids.astype(np.int64)
        if is_torch:
            import torch

            return tuple(torch.from_numpy(a) for a in out)  # type: ignore[return-value]
        return out

    def _range_search(self, qa: np.ndarray, threshold: float) -> tuple[Any, Any, Any]:
        try:
            lims, scores, ids = self.index.range_search(qa, float(threshold))
        except RuntimeError as err:
            raise ValueError(f"faiss cannot range-search {self.factory!r}: "
                             f"{faiss_reason(err)}") from None
        for i in range(qa.shape[0]):  # order each query's hits like search does
            a, b = lims[i], lims[i + 1]
            key = scores[a:b] if self.metric == "l2" else -scores[a:b]
            order = np.lexsort((ids[a:b], key))
            scores[a:b], ids[a:b] = scores[a:b][order], ids[a:b][order]
        return lims, scores, ids

    # -- persistence -------------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        return {"factory": self.factory, "nprobe": self.nprobe, "ef_search": self.ef_search,
                "k_factor": self.k_factor}

    def _stored_rows(self) -> int:
        return int(self.index.ntotal)

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        faiss = import_faiss()
        return {}, {"faiss.index": lambda p: faiss.write_index(self.index, str(p))}

    def _restore(self, path: Path, manifest: dict[str, Any],
                 blobs: dict[str, bytearray]) -> None:
        faiss = import_faiss()
        if "faiss.index" not in manifest["files"]:
            raise IndexFormatError(f"{path}: manifest lists no faiss.index")
        try:  # the checked bytes, not the file again (a save may have replaced it)
            index = faiss.deserialize_index(np.frombuffer(blobs["faiss.index"], np.uint8))
        except RuntimeError as err:
            raise IndexFormatError(f"{path / 'faiss.index'} is not a faiss index: "
                                   f"{faiss_reason(err)}") from None
        if index.d != self.dim or index.ntotal != manifest["count"]:
            raise IndexFormatError(
                f"{path}: faiss.index has dim {index.d} and {index.ntotal} items, the "
                f"manifest says dim {self.dim} and {manifest['count']}"
            )
        want = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        if int(index.metric_type) != int(want):
            held = {int(faiss.METRIC_L2): "l2", int(faiss.METRIC_INNER_PRODUCT): "ip/cosine"}
            raise IndexFormatError(
                f"{path}: faiss.index searches by "
                f"{held.get(int(index.metric_type), f'metric type {index.metric_type}')} "
                f"but the manifest says metric {self.metric!r}; rebuild the index")
        found = stages(faiss, index)
        problem = check_stages(found)
        if problem is not None:
            raise IndexFormatError(f"{path}: faiss.index cannot be searched: {problem}")
        built = stages(faiss, self.index)  # what the manifest's factory builds
        if found != built:
            raise IndexFormatError(
                f"{path}: faiss.index is {_described(found)}, but the manifest says factory "
                f"{self.factory!r} ({_described(built)}); the manifest was edited or belongs "
                "to another index: rebuild the index")
        self.index = index
        self._apply_search_params()


def _described(found: list[Any]) -> str:
    """Stages for messages: ``"IVF4"``, ``"HNSW32"``, ``"IVF16, PQ8x4"``; ``"flat"``."""
    parts = [s.kind + (str(s.size) if s.size else "") + (f"x{s.bits}" if s.bits else "")
             for s in found]
    return ", ".join(parts) or "flat (no IVF, graph or codes)"


class _Captured:
    text = ""


@contextlib.contextmanager
def _captured_stderr() -> Iterator[_Captured]:
    """Redirect file descriptor 2 (where faiss's C++ code prints) into a buffer."""
    captured = _Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as buf:
        os.dup2(buf.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            buf.seek(0)
            captured.text = buf.read().decode(errors="replace")


def refine_stage(faiss: Any, index: Any) -> Any:
    """The ``IndexRefine`` of ``index`` (inside an ``IndexIDMap`` / ``IndexIDMap2`` too),
    else ``None``."""
    while index is not None:
        index = faiss.downcast_index(index)
        if isinstance(index, faiss.IndexRefine):
            return index
        index = index.index if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)) else None
    return None


def _graph_breadth(faiss: Any, index: Any, k: int) -> Any:
    """Search parameters that keep at least ``k`` candidates (``efSearch >= k``) where
    ``index`` is an HNSW graph (inside an ``IndexIDMap`` / ``IndexIDMap2`` too) whose own
    ``efSearch`` is smaller, else ``None``: a graph search keeping fewer candidates than
    ``k`` returns fewer than ``k`` items (padded) though the index holds them."""
    index = faiss.downcast_index(index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        index = faiss.downcast_index(index.index)
    if not isinstance(index, faiss.IndexHNSW) or index.hnsw.efSearch >= k:
        return None
    params = faiss.SearchParametersHNSW()
    params.efSearch = int(k)
    return params


def _has_own_ids(faiss: Any, index: Any) -> bool:
    """True for indexes that store explicit ids (IVF family, or a factory string that
    asks for an ``IDMap`` / ``IDMap2`` itself; not a refine wrapper)."""
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return True
    if isinstance(index, faiss.IndexRefine):
        return False
    try:
        faiss.extract_index_ivf(index)
        return True
    except RuntimeError:
        return False


__all__ = ["REFINE_K_FACTOR", "FaissIndex", "faiss_reason", "import_faiss", "refine_stage"]
