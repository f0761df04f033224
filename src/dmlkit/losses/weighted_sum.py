"""A weighted sum of losses, each with an optional miner."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from dmlkit.functional.tuples import IndexTuple
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.registry import register_loss


@register_loss("weighted_sum")
class WeightedSumLoss(BaseMetricLoss):
    """``sum_k weights[k] * losses[k](embeddings, labels, indices=tuples_k, ...)``.

    ``tuples_k`` are mined by ``miners[k]`` when it is given (against the reference set
    when there is one), else the ``indices`` passed in (to the losses that take them).
    pytorch-metric-learning's ``MultipleLosses`` in list form.

    Parameters
    ----------
    losses : list of BaseMetricLoss
        At least one loss.
    weights : list of float, optional
        One weight per loss (default 1 each).
    miners : list of (BaseMiner or None), optional
        One entry per loss.

    Examples
    --------
    >>> from dmlkit.registry import LOSSES, build_from_config
    >>> loss = build_from_config(LOSSES, {"name": "weighted_sum",
    ...     "losses": ["multi_similarity", "contrastive"], "weights": [1.0, 0.5]})
    """

    def __init__(
        self,
        losses: list[BaseMetricLoss],
        weights: list[float] | None = None,
        miners: list[Any] | None = None,
    ) -> None:
        super().__init__(distance=None)
        losses = list(losses)
        if not losses or not all(isinstance(f, BaseMetricLoss) for f in losses):
            raise ValueError(f"losses must be a non-empty list of losses, got {losses!r}")
        k = len(losses)
        weights = [1.0] * k if weights is None else [float(w) for w in weights]
        if len(weights) != k:
            raise ValueError(f"got {len(weights)} weights for {k} losses")
        if miners is not None and len(miners) != k:
            raise ValueError(f"got {len(miners)} miners for {k} losses")
        self.loss_modules = nn.ModuleList(losses)
        self.weights = weights
        self._miners = None if miners is None else list(miners)
        self.miner_modules = nn.ModuleList([m for m in (miners or []) if m is not None])
        self.requires_labels = any(f.requires_labels for f in losses) or any(
            m is not None for m in (miners or [])
        )
        self.accepts_indices = any(f.accepts_indices for f in losses)

    @property
    def losses(self) -> list[BaseMetricLoss]:
        return list(self.loss_modules)

    @property
    def miners(self) -> list[Any] | None:
        return None if self._miners is None else list(self._miners)

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        total = self.zero_loss(embeddings)
        for k, (loss_fn, weight) in enumerate(zip(self.loss_modules, self.weights, strict=True)):
            miner = None if self._miners is None else self._miners[k]
            tuples = indices if loss_fn.accepts_indices else None
            if miner is not None:
                tuples = miner(embeddings, labels, ref_embeddings, ref_labels)
            value = loss_fn(
                embeddings,
                labels,
                indices=tuples,
                ref_embeddings=ref_embeddings,
                ref_labels=ref_labels,
            )
            total = total + weight * value
        return total
