"""Weak supervision: datasets of labelled pairs or triplets of items, without class labels.

A :class:`TupleDataset` holds a table of tuples ``(T, k)`` whose entries reference items
(rows of a feature array, or image files) plus, for pairs, a ``similar`` flag. A batch
of tuples becomes ``(inputs, None, indices)``: ``inputs (u, ...)`` are the distinct items
the batch references (each loaded once) and ``indices`` a :class:`~dmlkit.functional.Pairs`
(similar pairs positive, dissimilar negative) or :class:`~dmlkit.functional.Triplets`
over them, so any tuple loss trains with ``loss(model(inputs), indices=indices)``.

CSV files have a header: ``item_a,item_b,similar`` for pairs and
``anchor,positive,negative`` for triplets. Entries are integer rows of a feature array
(``.npy``, or an ``.npz`` array) or image paths (relative to the CSV's folder).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from dmlkit.data.tuple_draws import LabelGroups, pairs_from_labels, triplets_from_labels
from dmlkit.functional.tuples import IndexTuple, Pairs, Triplets

TupleKind = Literal["pairs", "triplets"]
COLUMNS: dict[str, tuple[str, ...]] = {
    "pairs": ("item_a", "item_b", "similar"),
    "triplets": ("anchor", "positive", "negative"),
}


def tuples_to_indices(rows: Tensor, similar: Tensor | None = None) -> tuple[Tensor, IndexTuple]:
    """Deduplicate the items of a batch of tuples and index the tuples into them.

    Parameters
    ----------
    rows : Tensor (b, 2) or (b, 3), int64
        Item ids of each pair / triplet.
    similar : Tensor (b,) bool, optional
        For pairs: which are similar (positive) pairs. Required iff ``rows`` has 2 columns.

    Returns
    -------
    unique : Tensor (u,)
        Distinct item ids in ascending order (the batch's items).
    indices : Pairs or Triplets
        Positions in ``unique``: ``Pairs(a1, p, a2, n)`` (similar pairs ``(a1, p)``,
        dissimilar ``(a2, n)``) or ``Triplets(anchor, positive, negative)``.
    """
    if rows.dim() != 2 or rows.shape[1] not in (2, 3):
        raise ValueError(f"rows must have shape (b, 2) or (b, 3), got {tuple(rows.shape)}")
    unique, inverse = torch.unique(rows, return_inverse=True)  # (u,), (b, k)
    if rows.shape[1] == 3:
        if similar is not None:
            raise ValueError("similar is only meaningful for pairs")
        return unique, Triplets(inverse[:, 0], inverse[:, 1], inverse[:, 2])
    if similar is None or similar.shape != rows.shape[:1]:
        raise ValueError("pairs need a similar flag per pair, shape (b,)")
    sim = similar.bool()
    return unique, Pairs(inverse[sim, 0], inverse[sim, 1], inverse[~sim, 0], inverse[~sim, 1])


def _item_ids(tuples: Any) -> Tensor:
    """``tuples`` as int64 item ids; a NaN, infinite or fractional id is refused (a cast
    would silently make it another item)."""
    ids = np.asarray(tuples.cpu() if isinstance(tuples, Tensor) else tuples)
    if ids.dtype.kind == "f" and ids.size:
        bad = np.argwhere(~np.isfinite(ids) | (ids != np.round(ids)))  # (k, ndim)
        if len(bad):
            where = tuple(int(i) for i in bad[0])
            at = f"tuple {where[0]}, column {where[1]}" if len(where) == 2 else f"at {where}"
            raise ValueError(f"tuples must hold integer item ids, got {ids[where]} ({at}); "
                             "fix or drop that tuple")
    elif ids.dtype.kind not in "iu" and ids.size:
        raise TypeError(f"tuples must hold integer item ids, got dtype {ids.dtype}")
    return torch.as_tensor(ids.astype(np.int64, copy=False))


class TupleDataset(Dataset):
    """Pairs or triplets of items; item ``i`` is the ``i``-th tuple.

    Parameters
    ----------
    tuples : array-like (T, 2) or (T, 3) of int
        Item ids of each pair / triplet (rows of ``items``).
    items : Tensor (N, ...) or sequence of str
        The items: a feature / image array, or image file paths (loaded on demand).
    similar : array-like (T,) of {0, 1}, optional
        Required for pairs: 1 for a similar pair, 0 for a dissimilar one.
    image_size : int, optional
        Resize side for image files; ``color`` is ``"grayscale"`` or ``"rgb"``.
    lines : array-like (T,) of int, optional
        Where each tuple was read (the CSV line numbers :func:`read_tuples_csv` records),
        for messages that name tuples; ``None``: tuples are named by position.

    Attributes
    ----------
    kind : {"pairs", "triplets"}
    labels : None
        There are no class labels (the trainer then samples plain shuffled batches).
    """

    labels = None

    def __init__(
        self,
        tuples: Tensor | np.ndarray | Sequence[Sequence[int]],
        items: Tensor | np.ndarray | Sequence[str],
        similar: Tensor | np.ndarray | Sequence[int] | None = None,
        image_size: int | None = None,
        color: Literal["grayscale", "rgb"] = "grayscale",
        lines: Sequence[int] | np.ndarray | None = None,
    ) -> None:
        t = _item_ids(tuples)
        if t.dim() != 2 or t.shape[1] not in (2, 3):
            raise ValueError(f"tuples must have shape (T, 2) or (T, 3), got {tuple(t.shape)}")
        self.kind: TupleKind = "pairs" if t.shape[1] == 2 else "triplets"
        if isinstance(items, (Tensor, np.ndarray)):
            self.items: Tensor | list[str] = torch.as_tensor(np.asarray(items))
            if self.items.is_floating_point():
                self.items = self.items.float()
        else:
            self.items = [str(p) for p in items]
        n_items = len(self.items)
        outside = torch.nonzero((t < 0) | (t >= n_items))  # (k, 2) tuple, column
        if len(outside):
            row, col = outside[0].tolist()
            raise ValueError(f"tuple {row} references item {int(t[row, col])}, outside the "
                             f"{n_items} items (ids 0 to {n_items - 1}); fix or drop it")
        if self.kind == "pairs":
            if similar is None:
                raise ValueError("pairs need similar flags (1 similar, 0 dissimilar)")
            s = torch.as_tensor(np.asarray(similar)).flatten()
            if s.shape[0] != t.shape[0] or not bool(((s == 0) | (s == 1)).all()):
                raise ValueError(f"similar must be {t.shape[0]} values in {{0, 1}}")
            self.similar: Tensor | None = s.bool()
        else:
            if similar is not None:
                raise ValueError("similar flags are only for pairs")
            self.similar = None
        self.tuples = t
        self.lines = None if lines is None else np.asarray(lines, dtype=np.int64).reshape(-1)
        if self.lines is not None and len(self.lines) != len(t):
            raise ValueError(f"lines must hold one line number per tuple ({len(t)}), got "
                             f"{len(self.lines)}")
        self.image_size = image_size
        self.color = color

    def __len__(self) -> int:
        return int(self.tuples.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor | None]:
        """``(item ids (k,), similar or None)`` of one tuple; items load in :meth:`collate`."""
        return self.tuples[index], None if self.similar is None else self.similar[index]

    def load_items(self, ids: Tensor) -> Tensor:
        """The inputs ``(u, ...)`` of items ``ids (u,)``."""
        if isinstance(self.items, Tensor):
            return self.items[ids]
        from dmlkit.data.image_folder import _pillow, resize, to_array, to_mode

        image_cls = _pillow()
        arrays = []
        for i in ids.tolist():
            with image_cls.open(self.items[i]) as img:
                img = to_mode(img, self.color)
                if self.image_size is not None:
                    img = resize(img, self.image_size)
                arrays.append(to_array(img))
        return torch.from_numpy(np.stack(arrays))

    def collate(self, batch: list[tuple[Tensor, Tensor | None]]) -> tuple[Tensor, None, IndexTuple]:
        """Items of :meth:`__getitem__` -> ``(inputs (u, ...), None, Pairs | Triplets)``."""
        rows = torch.stack([b[0] for b in batch])  # (b, k)
        similar = None if self.similar is None else torch.stack([b[1] for b in batch])
        return self._batch(rows, similar)

    def get_batch(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, None, IndexTuple]:
        """The batch of the tuples at ``indices`` in one indexing call."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        similar = None if self.similar is None else self.similar[idx]
        return self._batch(self.tuples[idx], similar)

    def _batch(self, rows: Tensor, similar: Tensor | None) -> tuple[Tensor, None, IndexTuple]:
        unique, indices = tuples_to_indices(rows, similar)
        return self.load_items(unique), None, indices

    def example(self) -> Tensor:
        """One input (no batch dimension), for shape inference."""
        return self.load_items(torch.zeros(1, dtype=torch.long))[0]

    def subset(self, indices: Sequence[int] | Tensor | np.ndarray) -> TupleDataset:
        """The tuples at ``indices`` over the same items."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return TupleDataset(
            self.tuples[idx],
            self.items,
            None if self.similar is None else self.similar[idx],
            self.image_size,
            self.color,
            None if self.lines is None else self.lines[idx.numpy()],
        )

    def __repr__(self) -> str:
        return f"TupleDataset(kind={self.kind!r}, tuples={len(self)}, items={len(self.items)})"


def load_features(path: str | Path, key: str = "x") -> Tensor:
    """A feature array from ``.npy``, or array ``key`` of an ``.npz`` file.

    It gets the checks labelled inputs get (:func:`~dmlkit.data.checks.check_inputs`,
    naming the file): numbers only, a feature axis (``(n, d)`` or images, not ``(n,)``),
    no NaN or infinite rows, and a warning for values far from unit scale.
    """
    from dmlkit.data.npz import read_arrays

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    if path.suffix.lower() not in (".npy", ".npz"):
        raise ValueError(f"features must be a .npy or .npz file, got {path.name!r}")
    archive = read_arrays(path)  # (an empty, truncated or foreign file: one line naming it)
    if path.suffix.lower() == ".npz":
        if key not in archive:
            raise KeyError(f"{path} has no array {key!r}; arrays present: {list(archive)}")
        x = archive[key]
        source = f"{path} (array {key!r})"
    else:
        x = archive["x"]
        source = str(path)
    from dmlkit.data.checks import check_inputs
    from dmlkit.data.dataset import ArrayDataset
    from dmlkit.data.npz import check_real_inputs, integer_inputs

    check_real_inputs(x, source, "the features")  # the rule load_npz applies to its inputs
    x = integer_inputs(x, source)  # the one rule for integer inputs, as load_npz
    rows = x.reshape(1) if x.ndim == 0 else x
    if not len(rows):
        raise ValueError(f"{source} holds no rows (shape {tuple(x.shape)}); the tuples' "
                         "entries index its rows: write the features again")
    # the checks of labelled inputs (the labels are placeholders: tuples have none)
    check_inputs(ArrayDataset(rows, np.zeros(len(rows), dtype=np.int64)), source)
    return torch.from_numpy(np.ascontiguousarray(x))


#: an integer entry: ASCII digits with an optional sign (no "1_0", no other scripts' digits)
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)


def _is_integer(value: str) -> bool:
    return _INTEGER.fullmatch(value) is not None


def _int_entries(refs: list[list[str]], lines: list[int], path: Path) -> np.ndarray:
    """``(T, k)`` int64 rows of ``refs``; a non-integer or out-of-range entry names its line."""
    high = np.iinfo(np.int64).max
    out = np.empty((len(refs), len(refs[0]) if refs else 0), dtype=np.int64)
    for r, row in enumerate(refs):
        for c, value in enumerate(row):
            if not _is_integer(value):
                raise ValueError(f"{path}, line {lines[r]}: with features, entries must be "
                                 f"integer rows, got {value!r} (write plain digits 0-9); "
                                 "fix the entry")
            number = int(value)
            if number < 0:
                raise ValueError(f"{path}, line {lines[r]}: entry {value} is negative; "
                                 "entries are rows of the feature array, from 0: fix it")
            if number > high:
                raise ValueError(f"{path}, line {lines[r]}: entry {value} is too large to be "
                                 "a row of a feature array; fix the entry") from None
            out[r, c] = number
    return out


def _check_image_files(
    files: list[str], lines: list[int], refs: list[str], path: Path,
    image_size: int | None, color: str,
) -> str:
    """Check the image ``files`` up front (``lines`` / ``refs``: where the CSV names each).

    Every file must exist; without ``image_size`` all must share one size (only the
    headers are read). Returns ``color``, resolved when it is ``"auto"``.
    """
    for file, line, ref in zip(files, lines, refs, strict=True):
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{path}, line {line}: image {ref!r} not found ({file} is "
                                    "not a file); fix the path or drop the row")
    if image_size is not None and color != "auto":
        return color
    from dmlkit.data.image_folder import image_header

    first: tuple[tuple[int, int], str, int] | None = None
    found_color = False
    for file, line, ref in zip(files, lines, refs, strict=True):
        try:
            size, colour = image_header(file)  # (width, height), from the header only
            found_color = found_color or colour
        except (OSError, SyntaxError) as err:
            raise ValueError(f"{path}, line {line}: cannot read image {ref!r} ({err}); the "
                             "file is corrupt or not an image: replace it or drop the row"
                             ) from None
        except ValueError as err:  # (image_header's own refusals, e.g. past the pixel limit)
            raise ValueError(f"{path}, line {line}: {err}") from None
        if image_size is not None:
            continue
        if first is None:
            first = (size, ref, line)
        elif size != first[0]:
            raise ValueError(
                f"{path}, line {line}: image {ref!r} is {size[0]}x{size[1]} but {first[1]!r} "
                f"(line {first[2]}) is {first[0][0]}x{first[0][1]}; images of different sizes "
                "need a common size: set data.image_size"
            )
    if color == "auto":
        return "rgb" if found_color else "grayscale"
    return color


def _check_header(header: list[str], columns: tuple[str, ...], kind: str, path: Path) -> None:
    """Refuse a CSV ``header`` (its first row, names stripped) that lacks one of
    ``columns``; a first row of entries only (no header line) is said to be one."""
    missing = [c for c in columns if c not in header]
    if not missing:
        return
    need = f"{kind} need the header line {','.join(columns)}"
    if header and all(_is_integer(name) or Path(name).suffix for name in header[:2]):
        raise ValueError(f"{path} has no header line: its first row ({','.join(header)}) "
                         f"was read as the header, which lacks column(s) {missing}; {need} "
                         "as the first line, above the rows")
    raise ValueError(f"{path} lacks column(s) {missing} (its header: {','.join(header)}); "
                     f"{need}")


def read_tuples_csv(
    path: str | Path,
    kind: TupleKind,
    features: str | Path | None = None,
    features_key: str = "x",
    image_size: int | None = None,
    color: Literal["auto", "grayscale", "rgb"] = "grayscale",
) -> TupleDataset:
    """Read pairs (``item_a,item_b,similar``) or triplets (``anchor,positive,negative``).

    With ``features`` the entries are integer rows of that array; without, they are
    image paths (relative ones resolved against the CSV's folder; two spellings of one
    file are one item), read in ``color`` (``"auto"``: RGB when any of them is colour,
    else grayscale). Image files are checked when the CSV is read: each must exist, and
    without ``image_size`` all must share one size.
    """
    if kind not in COLUMNS:
        raise ValueError(f"kind must be 'pairs' or 'triplets', got {kind!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tuple file not found: {path}")
    columns = COLUMNS[kind]
    with open(path, newline="", encoding="utf-8-sig") as f:  # (utf-8-sig: skip a BOM)
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if not header:
            raise ValueError(f"{path} is empty; write a header {','.join(columns)} and "
                             f"one row per {kind[:-1]}")
        header = [name.strip() if name is not None else name for name in header]
        reader.fieldnames = header  # (" positive" is the column positive, as entries)
        _check_header(header, columns, kind, path)
        records, lines = [], []
        for row in reader:
            line = reader.line_num
            if row.get(None):  # more fields than the header names
                raise ValueError(
                    f"{path}, line {line}: {len(header) + len(row[None])} fields but the "
                    f"header names {len(header)} ({','.join(header)}); remove the extra "
                    "field(s), or quote an entry that holds a comma"
                )
            empty = [c for c in columns if row.get(c) is None or not str(row[c]).strip()]
            if empty:
                raise ValueError(f"{path}, line {line}: no {', '.join(empty)} (a short row "
                                 "or an empty field); fill it in or drop the row")
            records.append([row[c].strip() for c in columns])
            lines.append(line)
    if not records:
        raise ValueError(f"{path} holds no tuples (only a header, or nothing); add rows of "
                         f"{','.join(columns)}")
    refs = [r[:3] if kind == "triplets" else r[:2] for r in records]
    similar = None
    if kind == "pairs":
        flags = {"1": 1, "0": 0, "true": 1, "false": 0, "1.0": 1, "0.0": 0}
        bad = next((i for i, r in enumerate(records) if r[2].lower() not in flags), None)
        if bad is not None:
            raise ValueError(f"{path}, line {lines[bad]}: similar must be 1 or 0 (or true / "
                             f"false), got {records[bad][2]!r}")
        similar = [flags[r[2].lower()] for r in records]
    if features is not None:
        tuples = _int_entries(refs, lines, path)
        items = load_features(features, features_key)
        past = np.argwhere(tuples >= len(items))  # (k, 2) row, column
        if len(past):
            r, c = past[0]
            raise ValueError(f"{path}, line {lines[r]}: entry {tuples[r, c]} is past the end "
                             f"of {features} ({len(items)} rows, 0 to {len(items) - 1}); fix "
                             "the entry or drop the row, or set data.features to the array "
                             "the entries index")
        return TupleDataset(tuples, items, similar, lines=lines)
    if all(_is_integer(v) for row in refs for v in row):
        raise ValueError(f"{path}: the entries are integers, rows of a feature array: set "
                         "data.features to the .npy / .npz that holds them (without it they "
                         "are read as image paths)")
    ids: dict[str, int] = {}  # resolved, normalized path -> item id
    first_line: list[int] = []
    first_ref: list[str] = []
    tuples = np.empty((len(refs), len(refs[0])), dtype=np.int64)
    for r, row in enumerate(refs):  # image paths
        for c, ref in enumerate(row):
            file = os.path.realpath(path.parent / ref)  # (an absolute ref replaces the folder)
            if file not in ids:
                ids[file] = len(ids)
                first_line.append(lines[r])
                first_ref.append(ref)
            tuples[r, c] = ids[file]
    files = list(ids)
    color = _check_image_files(files, first_line, first_ref, path, image_size, color)
    return TupleDataset(tuples, files, similar, image_size, color, lines)


def write_tuples_csv(path: str | Path, tuples: Tensor | np.ndarray, similar: Any = None) -> Path:
    """Write pairs (with ``similar``) or triplets with the header :func:`read_tuples_csv` reads."""
    t = np.asarray(tuples)
    kind: TupleKind = "pairs" if t.shape[1] == 2 else "triplets"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS[kind])
        for i, row in enumerate(t.tolist()):
            writer.writerow(row + ([int(np.asarray(similar)[i])] if kind == "pairs" else []))
    return path


__all__ = [
    "TupleDataset",
    "tuples_to_indices",
    "read_tuples_csv",
    "write_tuples_csv",
    "load_features",
    "triplets_from_labels",
    "LabelGroups",
    "pairs_from_labels",
    "COLUMNS",
]
