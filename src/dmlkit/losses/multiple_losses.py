"""pytorch-metric-learning's ``MultipleLosses`` under its own name and argument order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from dmlkit.losses.weighted_sum import Losses, WeightedSumLoss
from dmlkit.registry import register_loss


@register_loss("multiple_losses")
class MultipleLosses(WeightedSumLoss):
    """A weighted sum of losses with one miner per loss: :class:`WeightedSumLoss`.

    ``MultipleLosses(losses, miners=None, weights=None)`` takes its arguments in
    pytorch-metric-learning's order. ``losses`` is a list, or a dict name -> loss;
    ``miners`` a list with one entry (a miner or None) per loss, or a dict naming some
    losses; ``weights`` a list, or a dict naming every loss (default 1 each). Each loss
    gets the tuples its own miner finds, else the ``indices`` passed in; passing
    ``indices`` while any miner is set raises ``ValueError``.

    Parameters
    ----------
    losses : list or dict of BaseMetricLoss
    miners : list or dict of BaseMiner, optional
    weights : list or dict of float, optional
    """

    def __init__(
        self,
        losses: Losses,
        miners: Sequence[Any] | Mapping[str, Any] | None = None,
        weights: Sequence[float] | Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(losses, weights=weights, miners=miners)


MultipleLossesWrapper = MultipleLosses

__all__ = ["MultipleLosses", "MultipleLossesWrapper"]
