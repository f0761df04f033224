"""Distance-weighted sampling (Wu, Manmatha, Smola & Krahenbuhl, "Sampling Matters in
Deep Embedding Learning", ICCV 2017)."""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.distances.base import BaseDistance
from dmlkit.distances.euclidean import EuclideanDistance
from dmlkit.functional.tuples import Triplets
from dmlkit.miners._seeded import SeededMiner
from dmlkit.miners.base import cat_tuples
from dmlkit.registry import register_miner


@register_miner("distance_weighted")
class DistanceWeightedMiner(SeededMiner):
    """Triplets whose negatives are drawn with probability ``∝ 1 / q(d)``.

    On the unit sphere in ``R^k`` pairwise distances of uniform points have density
    ``q(d) ∝ d^(k-2) (1 - d^2/4)^((k-3)/2)``; sampling negatives with weight ``1/q(d)``
    (``d`` clipped below at ``cutoff``) spreads them over all distances instead of the
    concentrated mode. Negatives at ``d >= nonzero_loss_cutoff`` (which carry no margin
    loss) get weight 0. Each anchor gets as many triplets as its class has members in
    the reference set, with uniformly drawn positives, as in pytorch-metric-learning's
    ``DistanceWeightedMiner`` (equal in distribution, not element-wise: output is
    grouped by anchor). Anchors with no positive or no weighted negative are skipped.

    Randomness comes from the miner's own generator seeded with ``seed`` (one per
    device, advancing with every call); the global RNG is never touched. The generators'
    states are part of the miner's ``state_dict``, so a resumed run draws what an
    uninterrupted one would.

    Parameters
    ----------
    cutoff : float
        Lower clip of distances in the weight (avoids the weight's singularity at 0).
    nonzero_loss_cutoff : float
        Negatives at least this far get weight 0.
    seed : int
    distance : EuclideanDistance, optional
        Must be the plain (not squared) Euclidean distance on normalized embeddings.
    """

    output_kind = "triplets"

    def __init__(
        self,
        cutoff: float = 0.5,
        nonzero_loss_cutoff: float = 1.4,
        seed: int = 0,
        distance: BaseDistance | None = None,
    ) -> None:
        super().__init__(distance=distance)
        d = self.distance
        if not (isinstance(d, EuclideanDistance) and not d.squared and d.normalize_embeddings):
            raise ValueError(
                "DistanceWeightedMiner needs EuclideanDistance(squared=False, "
                f"normalize_embeddings=True), got {d!r}"
            )
        if not 0.0 < float(cutoff) < 2.0:
            raise ValueError(f"cutoff must be in (0, 2), got {cutoff}")
        self.cutoff = float(cutoff)
        self.nonzero_loss_cutoff = float(nonzero_loss_cutoff)
        self.seed = int(seed)

    def negative_weights(self, dist: Tensor, neg: Tensor, dim: int) -> Tensor:
        """Unnormalized weights ``(c, m)`` of negatives at ``dist (c, m)`` in ``R^dim``."""
        k = float(dim)
        d = dist.clamp_min(self.cutoff)  # (c, m)
        log_w = (2.0 - k) * torch.log(d) - ((k - 3.0) / 2.0) * torch.log(1.0 - 0.25 * d * d)
        valid = neg & torch.isfinite(log_w) & (d < self.nonzero_loss_cutoff)  # (c, m)
        log_w = log_w.masked_fill(~valid, -float("inf"))
        row_max = log_w.max(dim=1, keepdim=True).values  # (c, 1)
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
        return torch.exp(log_w - row_max)  # (c, m), 0 where invalid

    def mine(
        self,
        embeddings: Tensor,
        labels: Tensor,
        ref_embeddings: Tensor,
        ref_labels: Tensor,
        same_set: bool,
    ) -> Triplets:
        x = self.distance.maybe_normalize(embeddings)
        ref = self.distance.maybe_normalize(ref_embeddings)
        gen = self._generator(x.device)
        out: list[tuple[Tensor, Tensor, Tensor]] = []
        for a, dist, pos, neg in self.row_blocks(x, labels, ref, ref_labels, same_set, 8):
            w = self.negative_weights(dist, neg, x.shape[1])  # (c, m)
            n_pos = pos.sum(dim=1)  # (c,)
            ok = (n_pos > 0) & (w.sum(dim=1) > 0)  # (c,)
            if not bool(ok.any()):
                continue
            rows = torch.where(ok)[0]  # (r,)
            per_anchor = n_pos[rows] + int(same_set)  # (r,) triplets per anchor: class size
            draws = int(per_anchor.max())
            p = torch.multinomial(pos[rows].float(), draws, replacement=True, generator=gen)
            nn = torch.multinomial(w[rows], draws, replacement=True, generator=gen)  # (r, draws)
            take = torch.arange(draws, device=x.device)[None, :] < per_anchor[:, None]
            anchors = (rows + a)[:, None].expand(-1, draws)  # (r, draws)
            out.append((anchors[take], p[take], nn[take]))
        return cat_tuples(out, Triplets, x.device)


__all__ = ["DistanceWeightedMiner"]
