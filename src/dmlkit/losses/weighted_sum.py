"""A weighted sum of losses, each with an optional miner."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from dmlkit.functional.tuples import IndexTuple
from dmlkit.losses.base import BaseMetricLoss
from dmlkit.registry import register_loss

Losses = Sequence[BaseMetricLoss] | Mapping[str, BaseMetricLoss]


@register_loss("weighted_sum")
class WeightedSumLoss(BaseMetricLoss):
    """``sum_k weights[k] * losses[k](embeddings, labels, indices=tuples_k, ...)``.

    ``tuples_k`` are mined by ``miners[k]`` when it is given (against the reference set
    when there is one), else the ``indices`` passed in (to the losses that take them).
    When any miner is given, passing ``indices`` as well is an error (the miners decide).
    This is pytorch-metric-learning's ``MultipleLosses`` (see :class:`MultipleLosses` for
    its argument order), in list or dict form.

    Parameters
    ----------
    losses : list of BaseMetricLoss, or dict name -> BaseMetricLoss
        At least one loss.
    weights : list of float, or dict name -> float, optional
        One weight per loss (default 1 each); a dict must name every loss.
    miners : list of (BaseMiner or None), or dict name -> BaseMiner, optional
        A list has one entry per loss; a dict names some of the losses.

    Examples
    --------
    >>> from dmlkit.registry import LOSSES, build_from_config
    >>> loss = build_from_config(LOSSES, {"name": "weighted_sum",
    ...     "losses": ["multi_similarity", "contrastive"], "weights": [1.0, 0.5]})
    """

    def __init__(
        self,
        losses: Losses,
        weights: Sequence[float] | Mapping[str, float] | None = None,
        miners: Sequence[Any] | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(distance=None)
        keys = list(losses) if isinstance(losses, Mapping) else None
        loss_list = [losses[k] for k in keys] if keys is not None else list(losses)
        if not loss_list or not all(isinstance(f, BaseMetricLoss) for f in loss_list):
            raise ValueError(f"losses must be a non-empty list or dict of losses, got {losses!r}")
        k = len(loss_list)
        self._keys = keys
        weight_list = self._per_loss("weights", weights, keys, k, complete=True)
        miner_list = self._per_loss("miners", miners, keys, k, complete=False)
        self.loss_modules = loss_list  # (in order; registered below, under "losses")
        self._weights = [1.0 if w is None else float(w) for w in weight_list]
        self._miners = None if miners is None else miner_list
        # registered as pytorch-metric-learning's MultipleLosses registers them, so state
        # dicts name the same keys: losses.<i> / losses.<name>, miners.<i> / miners.<name>
        # (straight into _modules: add_module refuses the names of the properties below,
        # which give the losses and miners back as they were given)
        self._modules["losses"] = nn.ModuleList(loss_list) if keys is None else nn.ModuleDict(
            dict(zip(keys, loss_list, strict=True)))
        if miners is not None:
            self._modules["miners"] = nn.ModuleList(miner_list) if keys is None else \
                nn.ModuleDict({key: m for key, m in zip(keys, miner_list, strict=True)
                               if m is not None})
        self._register_load_state_dict_pre_hook(self._rename_old_keys)
        self.requires_labels = any(f.requires_labels for f in loss_list) or any(
            m is not None for m in miner_list
        )
        self.accepts_indices = any(f.accepts_indices for f in loss_list)

    @staticmethod
    def _per_loss(
        what: str, values: Any, keys: list[str] | None, k: int, *, complete: bool
    ) -> list[Any]:
        """``values`` as one entry per loss (None where absent)."""
        if values is None:
            return [None] * k
        if keys is None:
            if isinstance(values, Mapping):
                raise ValueError(f"{what} must be a list when losses are a list")
            values = list(values)
            if len(values) != k:
                raise ValueError(f"got {len(values)} {what} for {k} losses")
            return values
        if not isinstance(values, Mapping):
            raise ValueError(f"{what} must be a dict when losses are a dict")
        unknown = sorted(set(values) - set(keys))
        if unknown:
            raise ValueError(f"{what} name(s) {unknown} are not losses; losses: {keys}")
        if complete and set(values) != set(keys):
            raise ValueError(f"{what} must name every loss {keys}, got {sorted(values)}")
        return [values.get(key) for key in keys]

    def _rename_old_keys(self, state_dict: dict, prefix: str, *args: Any) -> None:
        """Read state saved under the keys of older dmlkit versions: ``loss_modules.<i>``
        (the ``i``-th loss) and ``miner_modules.<j>`` (the ``j``-th loss that has a miner)."""
        slots = list(range(len(self.loss_modules))) if self._keys is None else self._keys
        mined = [slot for slot, m in zip(slots, self._miners or [], strict=False)
                 if m is not None]
        for old, new, targets in (("loss_modules.", "losses.", slots),
                                  ("miner_modules.", "miners.", mined)):
            head = prefix + old
            for key in [k for k in state_dict if k.startswith(head)]:
                index, _, rest = key[len(head):].partition(".")
                if index.isdigit() and int(index) < len(targets):
                    state_dict[f"{prefix}{new}{targets[int(index)]}.{rest}"] = state_dict.pop(key)

    def _as_given(self, values: list[Any]) -> Any:
        if self._keys is None:
            return values
        return {key: v for key, v in zip(self._keys, values, strict=True) if v is not None}

    @property
    def losses(self) -> Any:
        """The losses as given: a list, or a dict name -> loss."""
        return self._as_given(list(self.loss_modules))

    @property
    def weights(self) -> Any:
        return self._as_given(list(self._weights))

    @property
    def miners(self) -> Any:
        """The miners as given (a list with None entries, or a dict), or None."""
        return None if self._miners is None else self._as_given(list(self._miners))

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        if indices is not None and self._miners is not None and any(
            m is not None for m in self._miners
        ):
            raise ValueError(f"{type(self).__name__} has miners: do not pass indices too")
        total = self.zero_loss(embeddings)
        for k, (loss_fn, weight) in enumerate(zip(self.loss_modules, self._weights, strict=True)):
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


__all__ = ["WeightedSumLoss"]
