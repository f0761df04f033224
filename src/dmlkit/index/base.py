"""Shared surface of every nearest-neighbour index: ids, per-item metadata, I/O checks.

An index stores vectors under int64 ids (given, or assigned 0, 1, 2, ... past every id
the index has ever held, so an id is never handed out again after its item was removed)
and optional metadata per item: an integer ``label`` (``-1`` = none),
a source ``path`` and a JSON ``payload``. ``search`` returns ids, never storage rows.
Scores are squared L2 distances for ``metric="l2"`` (smaller = closer) and similarities
for ``"ip"`` / ``"cosine"`` (larger = closer), as in faiss.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dmlkit._checks import FLOAT32_MAX, check_real_inputs, first_few
from dmlkit._checks import check_float32_range as check_range
from dmlkit.index.checks import per_item
from dmlkit.index.io import (
    IndexFormatError,
    load_array,
    load_json,
    read_consistent,
    read_manifest,
    require_files,
    restore_state,
    with_article,
    write_index_dir,
)

METRICS = ("l2", "ip", "cosine")


def _is_tensor(x: Any) -> bool:
    """A torch tensor, told without importing torch (indexes also serve without it)."""
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")


def to_numpy_2d(x: Any, dim: int, name: str = "x") -> np.ndarray:
    """``x`` as a C-contiguous float32 ``(n, dim)`` array (torch or numpy in)."""
    if _is_tensor(x):
        x = x.detach().cpu()
        if x.is_floating_point():  # bfloat16 / float16 have no (or a lossy) numpy twin
            x = x.float()
        x = x.numpy()
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or torch.Tensor, got {type(x).__name__}")
    if x.ndim == 1 and x.shape[0] == dim:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{name} must have shape (n, {dim}), got {x.shape}")
    check_real_inputs(x, "", name)
    check_float32_range(x, name)
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))  # rows holding a NaN or an infinity
    if bad.size:
        raise ValueError(f"{name} contains NaN or infinite values in {bad.size} of "
                         f"{x.shape[0]} rows ({'row' if bad.size == 1 else 'rows'} "
                         f"{first_few(int(i) for i in bad)})")
    check_norms(x, name)
    return x


#: the largest row norm at which every distance and dot product of two rows stays within
#: float32: a squared L2 distance reaches ``(|x| + |y|)^2``, four times a squared norm
MAX_ROW_NORM = float(np.sqrt(np.float64(FLOAT32_MAX))) / 2


def check_norms(x: np.ndarray, name: str = "x") -> None:
    """Refuse float32 rows ``x`` ``(n, dim)`` whose squared L2 norm overflows float32:
    faiss and the exact index compute distances in float32, which then turn into
    infinities and NaNs that silently empty or scramble a search."""
    if not x.size or max(float(x.max()), -float(x.min())) * np.sqrt(x.shape[1]) < MAX_ROW_NORM:
        return  # (no row can reach the limit)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))  # (n,)
    if norms.max() >= MAX_ROW_NORM:
        raise ValueError(
            f"{name} has a row of L2 norm {norms.max():.3g} (row {int(norms.argmax())}): "
            f"distances overflow float32 from norm {MAX_ROW_NORM:.2g} on; rescale the "
            "vectors (e.g. L2-normalize them) first")


#: the largest finite float32, the storage type of every index
def check_float32_range(x: Any, source: str) -> None:
    """:func:`dmlkit._checks.check_float32_range` for vectors an index stores."""
    check_range(x, source, fix="indexes store float32: rescale them (e.g. L2-normalize) first")


class InconsistentIndexError(RuntimeError):
    """An index holds a different number of vector rows (``rows``) than ids (``ids``):
    :meth:`BaseIndex.save` refuses to persist it, and writes nothing."""

    def __init__(self, message: str, rows: int, ids: int) -> None:
        super().__init__(message)
        self.rows, self.ids = rows, ids


#: most entries of a search result padded past the index's size (k > ntotal)
MAX_PADDED = 1 << 27


def _as_ids(ids: Any, n: int) -> np.ndarray:
    ids = np.asarray(_plain_ints(ids))
    if ids.ndim != 1 or ids.shape[0] != n:
        raise ValueError(f"ids must have shape ({n},), got {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
    if ids.size and ids.dtype.kind == "u" and int(ids.max()) >= 1 << 63:
        _too_large(int(ids.max()))
    return ids.astype(np.int64)


def _plain_ints(values: Any) -> Any:
    """A tensor as an ndarray, a list / tuple of integers as int64 (each checked to fit:
    numpy would turn a larger one into a float or an object); anything else as it is."""
    if _is_tensor(values):
        return values.detach().cpu().numpy()
    if isinstance(values, (list, tuple)) and values and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        big = next((int(v) for v in values if not -(1 << 63) <= int(v) < 1 << 63), None)
        if big is not None:
            _too_large(big)
        return np.asarray([int(v) for v in values], dtype=np.int64)
    return values


def _too_large(value: Any) -> int:
    raise ValueError(f"ids and labels must fit a signed 64-bit integer, got {value}")


def _as_labels(labels: Any, n: int) -> np.ndarray:
    """``(n,)`` int64 class ids (``>= 0``, or ``-1`` = no label) from integers, bools or
    integer-valued floats; anything else is refused naming the labels."""
    labels = np.asarray(_plain_ints(labels))
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) (one class id per item), got "
                         f"{labels.shape}")
    kind = labels.dtype.kind
    if kind == "f" and labels.size and not (np.isfinite(labels).all()
                                            and np.array_equal(labels, np.round(labels))):
        bad = labels[~(np.isfinite(labels) & (labels == np.round(labels)))][0]
        raise ValueError(f"labels must be integer class ids (-1 = no label), got the "
                         f"non-integer value {bad} (dtype {labels.dtype})")
    if labels.size and kind not in "iubf":
        hint = (": map class names to ids, e.g. np.unique(names, return_inverse=True), "
                "and keep the names in payloads" if kind in "USO" else "")
        raise TypeError(f"labels must be integer class ids (-1 = no label), got dtype "
                        f"{labels.dtype}{hint}")
    if kind == "f" and labels.size and np.abs(labels).max() >= 2.0**63:
        _too_large(labels[np.abs(labels).argmax()])
    if kind == "u" and labels.size and int(labels.max()) >= 1 << 63:
        _too_large(int(labels.max()))
    labels = labels.astype(np.int64)
    if labels.size and int(labels.min()) < -1:
        raise ValueError("labels must be non-negative integers or -1 (no label), got "
                         f"{int(labels.min())}")
    return labels


class BaseIndex:
    """Ids, metadata and argument checks shared by :class:`ExactIndex` and ``FaissIndex``.

    Parameters
    ----------
    dim : int
        Vector dimension.
    metric : str
        ``"l2"``, ``"ip"`` (inner product) or ``"cosine"``.
    """

    kind = "base"

    def __init__(self, dim: int, metric: str = "l2") -> None:
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.dim = int(dim)
        self.metric = metric
        self._ids = np.zeros(0, dtype=np.int64)
        self._labels = np.zeros(0, dtype=np.int64)
        self._paths: list[str | None] = []
        self._payloads: list[Any] = []
        self._row_of: dict[int, int] | None = None
        #: the next auto-assigned id: past every id ever added (removed ones included)
        self._next_id = 0
        #: free-form JSON saved with the index (e.g. the run and data it was built from)
        self.info: dict[str, Any] = {}

    # -- to implement ------------------------------------------------------------------
    def _add_vectors(self, x: np.ndarray, ids: np.ndarray) -> None:
        raise NotImplementedError

    def _remove_rows(self, keep: np.ndarray, ids: np.ndarray) -> None:
        raise NotImplementedError

    def _search_ids(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (n, k), ids (n, k))`` of float32 queries ``q``, ids ``-1`` padded."""
        raise NotImplementedError

    def _params(self) -> dict[str, Any]:
        """Constructor arguments (besides dim and metric) saved in the manifest."""
        return {}

    def _stored_rows(self) -> int | None:
        """How many vectors the kind stores, checked against the ids before a save
        (None: it cannot tell)."""
        return None

    def _state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Kind-specific ``(arrays, file writers)`` to save."""
        raise NotImplementedError

    def _restore(self, path: Path, manifest: dict[str, Any],
                 blobs: dict[str, bytearray]) -> None:
        """Load kind-specific state from a checked index directory: from ``blobs``, the
        checked bytes of its files (:func:`dmlkit.index.io.read_manifest`)."""
        raise NotImplementedError

    # -- public API --------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        """Number of stored items."""
        return int(self._ids.shape[0])

    @property
    def ids(self) -> np.ndarray:
        """``(ntotal,)`` int64 ids in storage order (a copy)."""
        return self._ids.copy()

    @property
    def next_id(self) -> int:
        """The id the next item added without ids gets (past every id ever added)."""
        return self._next_id

    @property
    def score_unit(self) -> str:
        """What :meth:`search` scores are: ``"sq_l2"`` (squared L2, lower is closer) or
        ``"similarity"`` (higher is closer); an LSH index without refinement: ``"hamming"``."""
        return "sq_l2" if self.metric == "l2" else "similarity"

    @property
    def num_labelled(self) -> int:
        """How many stored items have a label."""
        return int((self._labels >= 0).sum())

    def __len__(self) -> int:
        return self.ntotal

    def add(
        self,
        x: Any,
        ids: Any = None,
        *,
        labels: Any = None,
        paths: Sequence[str | None] | None = None,
        payloads: Sequence[Any] | None = None,
    ) -> np.ndarray:
        """Add ``(n, dim)`` vectors; returns their ``(n,)`` int64 ids.

        ``labels`` (``(n,)`` integer class ids, ``-1`` = no label, as :meth:`labels_of`
        returns and embedding stores write; bools and integer-valued floats are taken
        as ids), ``paths`` (n strings) and ``payloads`` (n
        JSON-serialisable values) are optional per-item metadata. Without ``ids`` the
        items get the next ids past every id this index has held, removed ones included.
        """
        x = to_numpy_2d(x, self.dim)
        n = x.shape[0]
        if ids is None:
            ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        ids = _as_ids(ids, n)
        if (ids < 0).any():
            raise ValueError("ids must be non-negative integers (-1 marks 'no result' in a "
                             f"search), got {int(ids.min())}")
        if np.unique(ids).size != n or np.isin(ids, self._ids).any():
            raise ValueError("ids must be unique and not already in the index")
        lab = np.full(n, -1, dtype=np.int64) if labels is None else _as_labels(labels, n)
        paths = [None] * n if paths is None else [None if p is None else str(p)
                                                  for p in per_item(paths, "paths")]
        payloads = [None] * n if payloads is None else list(per_item(payloads, "payloads"))
        if len(paths) != n or len(payloads) != n:
            raise ValueError(f"paths and payloads must have {n} entries")
        # stored as a copy, as saving and loading would give them: the caller's later edits
        # never reach the index (and a non-JSON payload is a TypeError here, not at save;
        # NaN or an infinity a ValueError: metadata.json is always valid JSON)
        try:
            payloads = json.loads(json.dumps(payloads, allow_nan=False))
        except ValueError as err:
            raise ValueError(f"payloads must be plain JSON with finite numbers (use null or "
                             f"a string for NaN or infinity): {err}") from None
        self._add_vectors(x, ids)
        self._ids = np.concatenate([self._ids, ids])
        self._labels = np.concatenate([self._labels, lab])
        self._paths += paths
        self._payloads += payloads
        self._row_of = None
        if n:
            self._next_id = max(self._next_id, int(ids.max()) + 1)
        return ids

    def remove(self, ids: Any) -> int:
        """Remove the items with these ids (unknown ids are ignored); returns the count.

        ``ids`` are integers of any shape, numpy or torch: a search's ``(n, k)`` ids too
        (its ``-1`` padding is no id, so it is ignored).
        """
        ids = np.asarray(_plain_ints(ids))  # a tensor as numpy, as add(ids=...) takes it
        ids = _as_ids(ids.reshape(-1), ids.size)
        drop = np.isin(self._ids, ids)
        if not drop.any():
            return 0
        keep = ~drop
        self._remove_rows(keep, self._ids[drop])
        self._ids, self._labels = self._ids[keep], self._labels[keep]
        rows = np.flatnonzero(keep)
        self._paths = [self._paths[i] for i in rows]
        self._payloads = [self._payloads[i] for i in rows]
        self._row_of = None
        return int(drop.sum())

    def search(self, q: Any, k: int) -> tuple[Any, Any]:
        """``k`` nearest neighbours of each query.

        Returns
        -------
        scores : float32 ``(n, k)``
            Squared L2 distances (``"l2"``) or similarities (:attr:`score_unit`);
            ``inf`` / ``-inf`` where padded.
        ids : int64 ``(n, k)``
            Neighbour ids in ranking order, ``-1`` where fewer than ``k`` items exist.

        Torch tensors in give torch tensors out; anything else gives numpy arrays.
        """
        is_torch = _is_tensor(q)
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        qa = to_numpy_2d(q, self.dim, "q")
        k = int(k)
        found = min(k, self.ntotal)  # searched for; the rest is padding
        if k > found and qa.shape[0] * k > MAX_PADDED:
            raise ValueError(f"k={k} asks for more neighbours than the index's {self.ntotal} "
                             f"items, and padding {qa.shape[0]} rows to k would take "
                             f"{qa.shape[0] * k * 12 / 1e9:.1f} GB; ask for k <= {self.ntotal}")
        if found:
            scores, ids = self._search_ids(qa, found)
            scores, ids = scores.astype(np.float32), ids.astype(np.int64)
        else:  # an empty index (an untrained IVF cannot even be asked)
            scores = np.zeros((qa.shape[0], 0), np.float32)
            ids = np.zeros((qa.shape[0], 0), np.int64)
        if found < k:
            pad = np.inf if self.metric == "l2" else -np.inf
            scores = np.hstack([scores, np.full((qa.shape[0], k - found), pad, np.float32)])
            ids = np.hstack([ids, np.full((qa.shape[0], k - found), -1, np.int64)])
        if is_torch:
            import torch

            return torch.from_numpy(scores), torch.from_numpy(ids)
        return scores, ids

    def metadata(self, ids: Any) -> list[dict[str, Any] | None]:
        """Per-id metadata dicts (``id``, ``label``, ``path``, ``payload``); None if unknown.

        The payloads are copies: editing them leaves the index's own unchanged."""
        if self._row_of is None:
            self._row_of = {int(i): r for r, i in enumerate(self._ids)}
        out: list[dict[str, Any] | None] = []
        ids = np.asarray(_plain_ints(ids))  # integers, as add(ids=) and remove take them
        for i in _as_ids(ids.reshape(-1), ids.size).tolist():
            r = self._row_of.get(int(i))
            if r is None:
                out.append(None)
                continue
            lab = int(self._labels[r])
            out.append({"id": int(i), "label": None if lab < 0 else lab,
                        "path": self._paths[r], "payload": copy.deepcopy(self._payloads[r])})
        return out

    def labels_of(self, ids: Any) -> np.ndarray:
        """Labels of ``ids`` (any shape), ``-1`` for unknown ids or unlabelled items."""
        ids = np.asarray(ids)
        order = np.argsort(self._ids, kind="stable")
        sorted_ids = self._ids[order]
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, max(self.ntotal - 1, 0))
        found = (self.ntotal > 0) & (sorted_ids[pos] == ids) if self.ntotal else np.zeros(
            ids.shape, dtype=bool)
        labels = self._labels[order][pos] if self.ntotal else np.zeros(ids.shape, np.int64)
        return np.where(found, labels, -1).astype(np.int64)

    # -- persistence -------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the index to directory ``path`` atomically (see :mod:`dmlkit.index.io`).

        Raises :class:`InconsistentIndexError`, writing nothing, when the index stores
        more or fewer vectors than it has ids.
        """
        rows = self._stored_rows()
        if rows is not None and rows != self.ntotal:  # never persist rows ids do not describe
            raise InconsistentIndexError(
                f"refusing to save an inconsistent {self.kind} index: {rows} stored vector "
                f"rows for {self.ntotal} ids", rows, self.ntotal)
        arrays, writers = self._state()
        header = {"kind": self.kind, "dim": self.dim, "metric": self.metric,
                  "count": self.ntotal, "next_id": self._next_id, "params": self._params(),
                  "info": self.info}
        arrays = {"ids": self._ids, "labels": self._labels, **arrays}
        meta = {"paths": self._paths, "payloads": self._payloads}
        return write_index_dir(path, header, arrays, {"metadata.json": meta}, writers)

    @classmethod
    def load(cls, path: str | Path) -> BaseIndex:
        """Load an index directory, refusing corrupt, truncated or mismatched files.

        ``BaseIndex.load`` returns whichever kind was saved; a subclass only its kind.
        A load during a save of ``path`` returns the old or the new save, whole
        (:func:`dmlkit.index.io.read_consistent`).
        """
        path = Path(path)
        return read_consistent(path, lambda manifest, blobs: cls._parse(path, manifest, blobs))

    @classmethod
    def _parse(cls, path: Path, manifest: dict[str, Any], blobs: dict[str, bytearray],
               on_disk: bool = True) -> BaseIndex:
        kinds = {sub.kind: sub for sub in _subclasses(BaseIndex)}
        target = kinds.get(manifest["kind"])
        if target is None and manifest["kind"] == "exact":
            raise ImportError(
                f"{path} is an exact index, which needs torch (pip install torch); without "
                "torch, build a faiss index instead (dmlkit index build --factory Flat is exact)"
            )
        if target is None:
            raise IndexFormatError(f"{path}: unknown index kind {manifest['kind']!r}")
        if cls is not BaseIndex and target is not cls:
            raise IndexFormatError(f"{path} holds {with_article(manifest['kind'])} index, not "
                                   f"{with_article(cls.kind)} index")
        params = manifest.get("params", {})
        if not isinstance(params, dict):
            raise IndexFormatError(f"{path}: manifest params must be an object")
        try:
            index = target(manifest["dim"], manifest["metric"], **params)
        except (TypeError, ValueError) as err:
            raise IndexFormatError(f"{path}: bad manifest parameters: {err}") from None
        n = manifest["count"]
        require_files(path, manifest, ["ids.npy", "labels.npy", "metadata.json"])
        index._ids = load_array(path, "ids", (n,), np.dtype(np.int64), blobs=blobs)
        index._labels = load_array(path, "labels", (n,), np.dtype(np.int64),
                                    blobs=blobs)
        if np.unique(index._ids).size != n:
            raise IndexFormatError(f"{path}: duplicate ids")
        past = int(index._ids.max()) + 1 if n else 0  # files without next_id: past the ids
        next_id = manifest.get("next_id", past)
        if isinstance(next_id, bool) or not isinstance(next_id, int) or next_id < past:
            raise IndexFormatError(f"{path}: next_id {next_id!r} is not an integer past "
                                   f"every stored id ({past - 1})")
        index._next_id = next_id
        meta = load_json(path, "metadata.json", blobs=blobs)
        if (not isinstance(meta, dict) or not isinstance(meta.get("paths"), list)
                or not isinstance(meta.get("payloads"), list)
                or len(meta["paths"]) != n or len(meta["payloads"]) != n):
            raise IndexFormatError(f"{path}: metadata.json does not describe {n} items")
        index._paths, index._payloads = meta["paths"], meta["payloads"]
        index.info = manifest.get("info") if isinstance(manifest.get("info"), dict) else {}
        restore_state(index, path, manifest, blobs, on_disk)
        return index

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(dim={self.dim}, metric={self.metric!r}, ntotal={self.ntotal})"


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


def load_index(path: str | Path, files: dict[str, bytearray] | None = None) -> BaseIndex:
    """Load any saved index directory (exact or faiss); ``files``: its files' bytes
    already in memory, by name (checked as the directory's would be; ``path`` names them)."""
    import dmlkit.index  # noqa: F401  (registers every kind)

    if files is None:
        return BaseIndex.load(path)
    blobs: dict[str, bytearray] = {}
    manifest = read_manifest(Path(path), blobs=blobs, files=files)
    return BaseIndex._parse(Path(path), manifest, blobs, on_disk=False)


__all__ = ["FLOAT32_MAX", "MAX_ROW_NORM", "METRICS", "BaseIndex", "InconsistentIndexError",
           "check_float32_range", "check_norms", "load_index", "to_numpy_2d"]
