"""Uniform-histogram pair miner: pairs spread evenly over their distance range."""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.functional.chunking import chunk_size_for, row_chunks
from dmlkit.functional.labels import pos_neg_masks
from dmlkit.functional.tuples import Pairs
from dmlkit.miners._matrix import miner_matrix
from dmlkit.miners._seeded import SeededMiner
from dmlkit.miners.base import cat_tuples
from dmlkit.registry import register_miner


@register_miner("uniform_histogram")
class UniformHistogramMiner(SeededMiner):
    """Positive and negative pairs drawn evenly from ``num_bins`` distance bins.

    The range ``[min, max]`` of the positive pairs' distances (or similarities) is cut
    into ``num_bins`` equal bins (``torch.linspace``; each bin ``[lo, hi)``, the last
    one closed), and from every non-empty bin ``pos_per_bin`` pairs are drawn uniformly
    with replacement; the same for the negative pairs with ``neg_per_bin``. Easy and
    hard pairs thus weigh alike whatever the distance distribution. Same rule, bins and
    output layout (bins in ascending order) as pytorch-metric-learning's
    ``UniformHistogramMiner``; the draws come from this miner's own generator, seeded
    by ``seed``, instead of the global random state. Any distance.

    Parameters
    ----------
    num_bins : int
    pos_per_bin, neg_per_bin : int
        Pairs drawn from each non-empty bin.
    seed : int
        Seed of the generator behind the draws.
    distance : BaseDistance, optional
        Default :class:`~dmlkit.distances.EuclideanDistance` on normalized embeddings.
    """

    output_kind = "pairs"

    def __init__(
        self,
        num_bins: int = 100,
        pos_per_bin: int = 10,
        neg_per_bin: int = 10,
        seed: int = 0,
        distance: BaseDistance | None = None,
    ) -> None:
        super().__init__(distance=distance)
        for name, value in (("num_bins", num_bins), ("pos_per_bin", pos_per_bin),
                            ("neg_per_bin", neg_per_bin)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.num_bins = int(num_bins)
        self.pos_per_bin = int(pos_per_bin)
        self.neg_per_bin = int(neg_per_bin)
        self.seed = int(seed)

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
        n, m = x.shape[0], ref.shape[0]
        parts = []
        for a, b in row_chunks(n, chunk_size_for(n, 4 * m)):
            d = miner_matrix(self.distance, x[a:b], ref)  # (c, m)
            pos, neg = pos_neg_masks(labels[a:b], ref_labels, exclude_self=same_set, row_offset=a)
            pa, pp = torch.where(pos)
            na, nn = torch.where(neg)
            parts.append((pa + a, pp, d[pa, pp], na + a, nn, d[na, nn]))
        if not parts:  # an empty batch
            return cat_tuples([], Pairs, x.device)
        a1, p, d_pos, a2, n_, d_neg = (torch.cat(t) for t in zip(*parts, strict=True))
        gen = self._generator(x.device)
        a1, p = self._uniform(a1, p, d_pos, self.pos_per_bin, gen)
        a2, n_ = self._uniform(a2, n_, d_neg, self.neg_per_bin, gen)
        return cat_tuples([(a1, p, a2, n_)], Pairs, x.device)

    def _uniform(
        self, anchors: Tensor, others: Tensor, values: Tensor, per_bin: int, gen: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        if values.numel() == 0:
            return anchors, others
        edges = torch.linspace(
            values.min(), values.max(), steps=self.num_bins + 1,
            dtype=values.dtype, device=values.device,
        )  # (num_bins + 1,)
        picked = []
        last = self.num_bins - 1
        for i in range(self.num_bins):
            upper = values <= edges[i + 1] if i == last else values < edges[i + 1]
            members = torch.where((edges[i] <= values) & upper)[0]
            if members.numel() == 0:
                continue
            draw = torch.multinomial(
                torch.ones(members.numel(), device=values.device), per_bin,
                replacement=True, generator=gen,
            )
            picked.append(members[draw])
        idx = torch.cat(picked)
        return anchors[idx], others[idx]


__all__ = ["UniformHistogramMiner"]
