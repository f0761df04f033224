"""Batch easy/hard miner (Xuan, Stylianou, Liu & Pless, "Improved Embeddings with Easy
Positive Triplet Mining", WACV 2020), generalised to easy / semi-hard / hard / all
positives and negatives."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.functional.tuples import Pairs
from dmlkit.miners._where import ChunkedWhere
from dmlkit.miners.base import BaseMiner, cat_tuples
from dmlkit.registry import register_miner

Strategy = Literal["easy", "semihard", "hard", "all"]
_STRATEGIES = ("easy", "semihard", "hard", "all")
_INF = float("inf")


@register_miner("batch_easy_hard")
class BatchEasyHardMiner(BaseMiner):
    """One positive and one negative per anchor, each chosen easy, semi-hard, hard or all.

    Writing ``e`` for "farness" (the distance, or minus the similarity):

    * positives: ``"easy"`` = closest positive, ``"hard"`` = farthest positive,
      ``"semihard"`` = farthest positive still closer than the chosen negative
      (``e_ap < e_an``), ``"all"`` = every positive pair;
    * negatives: ``"hard"`` = closest negative, ``"easy"`` = farthest negative,
      ``"semihard"`` = closest negative farther than the chosen positive
      (``e_an > e_ap``), ``"all"`` = every negative pair.

    ``allowed_pos_range`` / ``allowed_neg_range`` ``(low, high)`` restrict candidate
    pairs to raw distance (or similarity) values in ``[low, high]`` (ignored by "all").
    Unless one strategy is "all", only anchors with both a positive and a negative are
    kept and the output is ``Pairs(a, p, a, n)``. Same pairs as pytorch-metric-learning's
    ``BatchEasyHardMiner`` (up to ties). Runs in row chunks (O(chunk * m) memory besides
    the output; an "all" side also keeps O(n * m) bytes of masks, or 4 bytes per pair if
    fewer).

    Parameters
    ----------
    pos_strategy, neg_strategy : {"easy", "semihard", "hard", "all"}
        Not both "semihard"; "semihard" cannot be combined with "all".
    allowed_pos_range, allowed_neg_range : (float, float), optional
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.EuclideanDistance` on normalized embeddings.
    """

    output_kind = "pairs"

    infinite_ok = frozenset({"allowed_pos_range", "allowed_neg_range"})  # open ends

    def __init__(
        self,
        pos_strategy: Strategy = "easy",
        neg_strategy: Strategy = "semihard",
        allowed_pos_range: tuple[float, float] | None = None,
        allowed_neg_range: tuple[float, float] | None = None,
        distance: BaseDistance | None = None,
    ) -> None:
        super().__init__(distance=distance)
        for name, value in (("pos_strategy", pos_strategy), ("neg_strategy", neg_strategy)):
            if value not in _STRATEGIES:
                raise ValueError(f"{name} must be one of {_STRATEGIES}, got {value!r}")
        if pos_strategy == neg_strategy == "semihard":
            raise ValueError("pos_strategy and neg_strategy cannot both be 'semihard'")
        if {pos_strategy, neg_strategy} == {"semihard", "all"}:
            raise ValueError("'semihard' cannot be combined with 'all'")
        self.pos_strategy = pos_strategy
        self.neg_strategy = neg_strategy
        self.allowed_pos_range = _check_range(allowed_pos_range, "allowed_pos_range")
        self.allowed_neg_range = _check_range(allowed_neg_range, "allowed_neg_range")

    def mine(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor,
        ref_labels: Tensor,
        same_set: bool,
    ) -> Pairs:
        x = self.distance.maybe_normalize(embeddings)
        ref = self.distance.maybe_normalize(ref_embeddings)
        sign = -1.0 if self.distance.is_similarity else 1.0
        found_pos, found_neg = ChunkedWhere(x.device), ChunkedWhere(x.device)
        picked = [  # the blocks' temporaries end with the comprehension
            self._mine_chunk(sign * d, d, pos, neg, a, found_pos, found_neg)
            for a, d, pos, neg in self.row_blocks(x, labels, ref, ref_labels, same_set)
        ]
        a1, p, a2, nn = cat_tuples(picked, Pairs, x.device)
        if self.pos_strategy == "all":
            a1, p = found_pos.indices()  # (P,), (P,)
        if self.neg_strategy == "all":
            a2, nn = found_neg.indices()  # (N,), (N,)
        return Pairs(a1, p, a2, nn)

    def _mine_chunk(
        self,
        e: Tensor,
        d: Tensor,
        pos: Tensor,
        neg: Tensor,
        offset: int,
        found_pos: ChunkedWhere,
        found_neg: ChunkedWhere,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Pairs of one chunk; ``e`` (c, m) is farness, ``d`` the raw values.

        An "all" side's mask goes to ``found_pos`` / ``found_neg`` and its part of the
        returned tuple is empty.
        """
        rows = torch.arange(e.shape[0], device=e.device) + offset  # (c,)
        none = rows[:0]  # (0,)
        if self.pos_strategy != "all":
            pos = pos & _in_range(d, self.allowed_pos_range)
        if self.neg_strategy != "all":
            neg = neg & _in_range(d, self.allowed_neg_range)
        ps, ns = self.pos_strategy, self.neg_strategy
        if ps == "semihard":
            n_val, n_idx, n_ok = self._pick_negative(e, neg, None)
            p_val, p_idx, p_ok = self._pick_positive(e, pos, n_val)
        elif ns == "semihard":
            p_val, p_idx, p_ok = self._pick_positive(e, pos, None)
            n_val, n_idx, n_ok = self._pick_negative(e, neg, p_val)
        else:
            if ps != "all":
                p_val, p_idx, p_ok = self._pick_positive(e, pos, None)
            if ns != "all":
                n_val, n_idx, n_ok = self._pick_negative(e, neg, None)
        if ps != "all" and ns != "all":
            keep = p_ok & n_ok  # (c,)
            return rows[keep], p_idx[keep], rows[keep], n_idx[keep]
        if ps == "all":
            found_pos.add(pos, offset)
            a1, p = none, none
        else:
            a1, p = rows[p_ok], p_idx[p_ok]
        if ns == "all":
            found_neg.add(neg, offset)
            a2, nn = none, none
        else:
            a2, nn = rows[n_ok], n_idx[n_ok]
        return a1, p, a2, nn

    def _pick_positive(
        self, e: Tensor, pos: Tensor, neg_val: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        if neg_val is not None:  # semihard: e_ap < e_an
            pos = pos & (e < neg_val[:, None])
        if self.pos_strategy == "easy":
            val, idx = e.masked_fill(~pos, _INF).min(dim=1)  # (c,)
        else:
            val, idx = e.masked_fill(~pos, -_INF).max(dim=1)  # (c,)
        return val, idx, pos.any(dim=1)

    def _pick_negative(
        self, e: Tensor, neg: Tensor, pos_val: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        if pos_val is not None:  # semihard: e_an > e_ap
            neg = neg & (e > pos_val[:, None])
        if self.neg_strategy == "easy":
            val, idx = e.masked_fill(~neg, -_INF).max(dim=1)  # (c,)
        else:
            val, idx = e.masked_fill(~neg, _INF).min(dim=1)  # (c,)
        return val, idx, neg.any(dim=1)


def _check_range(value: tuple[float, float] | None, name: str) -> tuple[float, float] | None:
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be a (low, high) pair or None, got {value!r}")
    low, high = float(value[0]), float(value[1])
    if low > high:
        raise ValueError(f"{name} must have low <= high, got {value!r}")
    return (low, high)


def _in_range(d: Tensor, bounds: tuple[float, float] | None) -> Tensor | bool:
    if bounds is None:
        return True
    return (d >= bounds[0]) & (d <= bounds[1])  # (c, m)


__all__ = ["BatchEasyHardMiner"]
