"""An on-disk, memory-mapped embedding store, written in chunks and resumable.

A store is a directory::

    embeddings.npy   float32 (n, dim), a NumPy .npy file opened as a memory map
    labels.npy       int64 (n,), -1 where unlabelled
    manifest.json    {"format", "count", "dim", "rows_done", "chunk_size", "source"}
    items.json       {"class_names", "paths", "inputs"} (optional): the names of the
                     label ids, each row's source file, and the shape, dtype and value
                     range of the inputs (how raw queries must look)

``rows_done`` is written (atomically) only after the rows before it were flushed to disk,
so a write killed at any point resumes from the last finished chunk. ``source`` says what
the rows are embeddings of (the run, its data, and a fingerprint of the model's weights
and the settings it declares, :func:`model_fingerprint`): a store resumes only for the
same source, so a retrained model never continues the vectors of the old one. Faiss
indexes are built from a store chunk by chunk (:func:`build_index_from_store`), so the
gallery never has to fit in memory at once, with the class names, paths and input
description of ``items.json`` as a direct build keeps them (a store without it, as
older versions wrote, builds without them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "dmlkit-embedding-store/1"
MANIFEST = "manifest.json"
ITEMS = "items.json"
log = logging.getLogger(__name__)


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


class EmbeddingStore:
    """A memory-mapped ``(count, dim)`` float32 store with labels and a progress manifest.

    Use :meth:`create` (or :meth:`open_or_create` to resume) and :meth:`open`;
    ``store.embeddings`` / ``store.labels`` are read-only memory maps of the finished rows.
    """

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self._items: dict[str, Any] | None = None

    # -- construction ------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, count: int, dim: int, *, chunk_size: int = 65536,
               source: dict[str, Any] | None = None, class_names: Sequence[str] | None = None,
               paths: Sequence[str | None] | None = None,
               input_info: dict[str, Any] | None = None) -> EmbeddingStore:
        """Allocate an empty store of ``count`` rows of ``dim`` floats at ``path``.

        ``class_names`` name the label ids (``class_names[y]``), ``paths`` give each
        row's source file, ``input_info`` describes the inputs (``input_shape``,
        ``input_dtype``, ``input_range``, ``input_any_size``): an index built from the
        store keeps them (:func:`build_index_from_store`)."""
        for name, v in (("count", count), ("dim", dim), ("chunk_size", chunk_size)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        path = Path(path)
        if (path / MANIFEST).exists():
            raise ValueError(f"{path} already holds a store; open it or remove it")
        items = _items(count, class_names, paths, input_info)
        path.mkdir(parents=True, exist_ok=True)
        if items is not None:  # (before the manifest: a store is whole once that is there)
            _write_json(path / ITEMS, items)
        np.lib.format.open_memmap(path / "embeddings.npy", "w+", np.float32, (count, dim)).flush()
        np.lib.format.open_memmap(path / "labels.npy", "w+", np.int64, (count,)).flush()
        manifest = {"format": FORMAT, "count": int(count), "dim": int(dim), "rows_done": 0,
                    "chunk_size": int(chunk_size), "source": source or {}}
        _write_json(path / MANIFEST, manifest)
        return cls(path, manifest)

    @classmethod
    def open(cls, path: str | Path) -> EmbeddingStore:
        """Open an existing store (finished or not)."""
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise FileNotFoundError(f"{path} is not an embedding store (no {MANIFEST})")
        manifest = json.loads((path / MANIFEST).read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown store format {manifest.get('format')!r}")
        return cls(path, manifest)

    @classmethod
    def open_or_create(cls, path: str | Path, count: int, dim: int, *, chunk_size: int = 65536,
                       source: dict[str, Any] | None = None,
                       class_names: Sequence[str] | None = None,
                       paths: Sequence[str | None] | None = None,
                       input_info: dict[str, Any] | None = None) -> EmbeddingStore:
        """Resume the store at ``path`` if it matches ``count``/``dim``/``source``, else create
        (``class_names``, ``paths``, ``input_info``: see :meth:`create`; a resumed store
        without them, as older versions wrote, gets them)."""
        if not (Path(path) / MANIFEST).exists():
            return cls.create(path, count, dim, chunk_size=chunk_size, source=source,
                              class_names=class_names, paths=paths, input_info=input_info)
        store = cls.open(path)
        m = store.manifest
        if (m["count"], m["dim"]) != (count, dim) or (source and m["source"] != source):
            old = m.get("source") or {}
            changed = sorted(key for key in {**old, **(source or {})}
                             if old.get(key) != (source or {}).get(key))
            why = ("the model's weights differ from those that wrote it"
                   if changed == ["model_sha256"] else
                   f"count {m['count']}, dim {m['dim']}"
                   + (f", source {old}" if old or source else "")
                   + f" != requested count {count}, dim {dim}"
                   + (f", source {source}" if old or source else ""))
            raise ValueError(
                f"{path} holds a different store ({why}); resuming would mix its embeddings "
                "with new ones: remove it or write the store to a new path")
        items = _items(count, class_names, paths, input_info)
        if items is not None and not (store.path / ITEMS).is_file():
            _write_json(store.path / ITEMS, items)
        return store

    # -- state -------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def rows_done(self) -> int:
        return int(self.manifest["rows_done"])

    @property
    def complete(self) -> bool:
        return self.rows_done == self.count

    def _read_items(self) -> dict[str, Any]:
        if self._items is None:
            try:
                items = json.loads((self.path / ITEMS).read_text())
            except FileNotFoundError:  # (a store of an older version, or of bare arrays)
                items = {}
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(f"{self.path / ITEMS} is not valid JSON ({err}): remove it "
                                 "to build without class names and paths") from None
            self._items = items if isinstance(items, dict) else {}
        return self._items

    @property
    def class_names(self) -> list[str] | None:
        """The names of the label ids (``class_names[y]``), or ``None`` when not recorded."""
        names = self._read_items().get("class_names")
        return None if names is None else [str(n) for n in names]

    @property
    def paths(self) -> list[str | None] | None:
        """Each row's source file (an image folder's), or ``None`` when not recorded."""
        paths = self._read_items().get("paths")
        if paths is None or len(paths) != self.count:
            return None
        return [None if p is None else str(p) for p in paths]

    @property
    def input_info(self) -> dict[str, Any]:
        """What the inputs looked like (``input_shape``, ``input_dtype``, ``input_range``,
        ``input_any_size``), as an index's ``info`` records it; ``{}`` when not recorded."""
        info = self._read_items().get("inputs")
        return dict(info) if isinstance(info, dict) else {}

    def payloads(self, labels: np.ndarray) -> list[dict[str, Any] | None] | None:
        """Each row's ``{"class": name}`` for ``labels`` ``(b,)`` of rows of this store
        (``None`` for unlabelled rows or ids without a name), or ``None`` without names."""
        names = self.class_names
        if names is None:
            return None
        return [{"class": names[int(y)]} if 0 <= y < len(names) else None for y in labels]

    @property
    def embeddings(self) -> np.ndarray:
        """Read-only memory map ``(rows_done, dim)`` of the finished rows."""
        return np.load(self.path / "embeddings.npy", mmap_mode="r")[: self.rows_done]

    @property
    def labels(self) -> np.ndarray:
        """Read-only memory map ``(rows_done,)``; ``-1`` = unlabelled."""
        return np.load(self.path / "labels.npy", mmap_mode="r")[: self.rows_done]

    # -- writing -----------------------------------------------------------------------
    def write(self, start: int, emb: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Write ``emb`` ``(b, dim)`` at rows ``start:start+b`` (must be ``rows_done``),
        flush it, then record the new ``rows_done`` in the manifest."""
        emb = np.asarray(emb, dtype=np.float32)
        if start != self.rows_done:
            raise ValueError(f"chunks are written in order: start {start} != rows_done "
                             f"{self.rows_done}")
        if emb.ndim != 2 or emb.shape[1] != self.dim or start + emb.shape[0] > self.count:
            raise ValueError(f"chunk of shape {emb.shape} does not fit rows {start}.. of a "
                             f"({self.count}, {self.dim}) store")
        end = start + emb.shape[0]
        mm = np.load(self.path / "embeddings.npy", mmap_mode="r+")
        mm[start:end] = emb
        mm.flush()
        del mm
        lab = np.full(emb.shape[0], -1, np.int64) if labels is None else np.asarray(labels)
        lm = np.load(self.path / "labels.npy", mmap_mode="r+")
        lm[start:end] = lab.astype(np.int64)
        lm.flush()
        del lm
        self.manifest["rows_done"] = end
        _write_json(self.path / MANIFEST, self.manifest)

    def chunks(self, chunk_size: int | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Yield ``(start, emb (b, dim) float32 copy, labels (b,))`` over the finished rows."""
        size = int(chunk_size or self.manifest["chunk_size"])
        emb, lab = self.embeddings, self.labels
        for s in range(0, self.rows_done, size):
            yield s, np.ascontiguousarray(emb[s : s + size]), np.asarray(lab[s : s + size])


def _items(count: int, class_names: Sequence[str] | None,
           paths: Sequence[str | None] | None,
           input_info: dict[str, Any] | None) -> dict[str, Any] | None:
    """The content of ``items.json`` (``None`` when nothing is given), checked."""
    if class_names is None and paths is None and not input_info:
        return None
    if paths is not None and len(paths) != count:
        raise ValueError(f"paths must have {count} entries (one per row), got {len(paths)}")
    return {"class_names": None if class_names is None else [str(n) for n in class_names],
            "paths": None if paths is None else [None if p is None else str(p)
                                                 for p in paths],
            "inputs": dict(input_info or {})}


def model_fingerprint(model: Any) -> str:
    """SHA-256 (hex) of what a ``torch.nn.Module`` computes: its state dict (names,
    dtypes, shapes, bytes), then the settings its submodules declare.

    A module whose function depends on settings outside its state dict (the resolution a
    pretrained backbone resizes images to, its pooling grid, whether embeddings are
    L2-normalized) declares them with a method ``fingerprint_settings() -> dict`` of
    JSON values; each declaring module (the model itself included) adds its path and
    its settings as canonical JSON, in module order. A model none of whose modules
    declares a setting (or only empty ones) keeps the plain state-dict hash, so two such
    models give the same fingerprint exactly when their weights and buffers are
    identical, whichever file they were loaded from; models of the same weights but other
    declared settings (two untrained backbones at two resolutions) differ.

    Raises
    ------
    TypeError
        When a module's ``fingerprint_settings()`` is not a dict of JSON values.
    """
    import torch

    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        h.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        raw = value.detach().cpu().contiguous().reshape(-1)  # (numel,)
        h.update(raw.view(torch.uint8).numpy().tobytes() if raw.numel() else b"")
    for path, module in model.named_modules():
        declare = getattr(module, "fingerprint_settings", None)
        if not callable(declare):
            continue
        settings = declare()
        if not isinstance(settings, dict):
            raise TypeError(f"{type(module).__name__}.fingerprint_settings() must return a "
                            f"dict, got {type(settings).__name__}")
        if not settings:
            continue
        try:
            text = json.dumps(settings, sort_keys=True, separators=(",", ":"),
                              allow_nan=False)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{type(module).__name__}.fingerprint_settings() must hold "
                            f"JSON values (numbers, strings, lists): {err}") from None
        h.update(f"settings|{path}|{text}|".encode())
    return h.hexdigest()


def progress(total: int, initial: int, desc: str) -> Callable[[int], None]:
    """A progress callback: tqdm on a terminal, one log line per ~10% otherwise."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, initial=initial, desc=desc, unit="row")
        return lambda done: (bar.update(done - bar.n), done >= total and bar.close())
    step = max(1, total // 10)
    state = {"next": initial + step}

    def report(done: int) -> None:
        if done >= state["next"] or done >= total:
            print(f"{desc}: {done}/{total} rows", file=sys.stderr, flush=True)
            state["next"] = done + step

    return report


def embed_to_store(
    embed_chunk: Callable[[int, int], np.ndarray], count: int, dim: int, path: str | Path, *,
    labels: np.ndarray | None = None, chunk_size: int = 65536,
    source: dict[str, Any] | None = None, show_progress: bool = True,
    class_names: Sequence[str] | None = None, paths: Sequence[str | None] | None = None,
    input_info: dict[str, Any] | None = None,
) -> EmbeddingStore:
    """Fill (or resume) the store at ``path`` with ``embed_chunk(start, end)`` ``(b, dim)``.

    Rows already recorded in the manifest are skipped, so rerunning after an interruption
    continues where it stopped. ``class_names``, ``paths`` and ``input_info`` are kept
    with the rows (see :meth:`EmbeddingStore.create`).
    """
    store = EmbeddingStore.open_or_create(path, count, dim, chunk_size=chunk_size,
                                          source=source, class_names=class_names,
                                          paths=paths, input_info=input_info)
    if labels is not None and len(labels) != count:
        raise ValueError(f"labels must have {count} entries, got {len(labels)}")
    if store.rows_done:
        log.info("resuming %s at row %d of %d", path, store.rows_done, count)
    tick = progress(count, store.rows_done, f"embed -> {path}") if show_progress else None
    for start in range(store.rows_done, count, chunk_size):
        end = min(count, start + chunk_size)
        emb = np.asarray(embed_chunk(start, end), dtype=np.float32)  # (end - start, dim)
        store.write(start, emb, None if labels is None else labels[start:end])
        if tick:
            tick(end)
    return store


def build_index_from_store(
    store: EmbeddingStore | str | Path, factory: str = "Flat", metric: str = "l2", *,
    train_size: int = 100_000, chunk_size: int = 65536, nprobe: int | None = None,
    ef_search: int | None = None, k_factor: float | None = None, seed: int = 0,
    show_progress: bool = False,
    target_recall: float | None = None, recall_k: int = 10, recall_sample: int = 1000,
) -> Any:
    """Build a :class:`~dmlkit.index.FaissIndex` from a store without loading it whole.

    Quantizers are trained on ``train_size`` rows sampled uniformly (sorted reads from the
    memory map); the rows are then added ``chunk_size`` at a time under ids ``0..n-1``
    with their labels (``-1`` = unlabelled), source paths and class names (payload
    ``{"class": name}``) where the store records them, as a direct build adds them; the
    store's input description goes into ``index.info``. Peak memory is the index itself
    plus one chunk and the sample.

    With ``target_recall``, the index is calibrated as
    :func:`~dmlkit.index.calibrate.calibrate` does for in-memory vectors: recall@``recall_k``
    against exact search on ``recall_sample`` seeded rows of the store as queries (the
    exact search reads the store ``chunk_size`` rows at a time), widening ``nprobe`` /
    ``efSearch`` (and a refine stage's ``k_factor``) until it reaches ``target_recall``
    unless they were given. The result is in ``index.info["recall"]``.
    """
    from dmlkit.index.calibrate import check_target_recall
    from dmlkit.index.faiss_index import FaissIndex

    if target_recall is not None:  # before the build, not after it
        check_target_recall(target_recall, "target_recall")
    store = store if isinstance(store, EmbeddingStore) else EmbeddingStore.open(store)
    if not store.complete:
        raise ValueError(f"{store.path} is unfinished ({store.rows_done}/{store.count} rows); "
                         "rerun the embed to complete it")
    index = FaissIndex(store.dim, metric, factory, nprobe=nprobe, ef_search=ef_search,
                       k_factor=k_factor)
    if not index.is_trained and store.count:  # (an empty store: an empty index)
        rng = np.random.default_rng(seed)
        n = store.count
        rows = np.sort(rng.choice(n, size=min(train_size, n), replace=False))
        index.train(np.ascontiguousarray(store.embeddings[rows]))
    tick = progress(store.count, 0, f"index <- {store.path}") if show_progress else None
    paths = store.paths
    for start, emb, lab in store.chunks(chunk_size):
        end = start + emb.shape[0]
        ids = np.arange(start, end, dtype=np.int64)
        index.add(emb, ids, labels=lab,  # (b,) per item, -1 = unlabelled
                  paths=None if paths is None else paths[start:end],
                  payloads=store.payloads(lab))
        if tick:
            tick(end)
    index.info.update(store.input_info)
    if target_recall is not None:
        from dmlkit.index.calibrate import calibrate

        index.info["recall"] = calibrate(index, store.embeddings, k=recall_k,
                                         target=target_recall, sample=recall_sample,
                                         seed=seed, chunk=chunk_size)
    return index

__all__ = ["EmbeddingStore", "build_index_from_store", "embed_to_store",
           "model_fingerprint"]
