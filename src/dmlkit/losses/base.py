"""Base class of every metric-learning loss.

Signature (shared by every loss)::

    loss(embeddings, labels=None, *, indices=None, ref_embeddings=None, ref_labels=None)

* ``labels`` only: the loss uses every valid tuple of the batch;
* ``labels`` and ``indices`` (e.g. a miner's output): only those tuples;
* ``indices`` only: weak supervision (pairs / triplets with no class labels);
* ``ref_embeddings`` / ``ref_labels``: positives and negatives come from a reference set
  (memory bank, other processes) while anchors come from ``embeddings``; every
  (query, reference) pair counts, the diagonal included. The batch passed as its own
  reference (``ref_embeddings=embeddings, ref_labels=labels``, both the same tensor
  objects) is no reference: self-pairs stay excluded. Other ``ref_embeddings`` (a
  detached copy, a momentum encoder's keys) keep the diagonal pairs even with
  ``ref_labels=labels``, where pytorch-metric-learning drops them whenever
  ``ref_labels is labels``; for its result pass no reference set, or ``indices``
  without the pairs ``(i, i)``
  (:func:`dmlkit.functional.reference.resolve_reference`).

Inputs are validated once here (a multi-label row must hold at least one label: an
item with no label would be its own negative), and so are float hyper-parameters: a
loss refuses a NaN or infinite margin, scale or temperature when it is built.
Half-precision inputs are promoted to fp32 and the loss runs with autocast disabled, so
margins and softmaxes never run in fp16.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dmlkit._finite import check_finite
from dmlkit.distances.base import BaseDistance, check_distance
from dmlkit.distances.euclidean import EuclideanDistance
from dmlkit.functional.distances import check_embeddings
from dmlkit.functional.labels import check_labels
from dmlkit.functional.reference import resolve_reference
from dmlkit.functional.tuples import IndexTuple, as_index_tuple, check_indices


class BaseMetricLoss(nn.Module):
    """Validation, precision handling and the zero-loss convention for every loss.

    Subclasses implement :meth:`compute_loss`. Class attributes:

    ``requires_labels``
        True for losses that cannot run from ``indices`` alone (proxy / classifier losses).
    ``accepts_indices``
        False for losses that take no tuples (e.g. center loss, P2SGrad, PNP); classifier
        and proxy losses that take them use them as per-sample weights.
    ``accepts_multi_labels``
        False for losses that need integer labels (a ``TypeError`` for ``(n, C)`` bool
        multi-labels, before any other label check).
    ``infinite_ok``
        Names of float attributes that may be +-inf (a documented limit, e.g. a weight
        of inf meaning "this term only"); every other float attribute must be finite and
        none may be NaN, checked whenever one is set.
    """

    requires_labels: bool = False
    accepts_indices: bool = True
    accepts_multi_labels: bool = True
    infinite_ok: frozenset[str] = frozenset()

    def __init__(self, distance: BaseDistance | None = None) -> None:
        super().__init__()
        check_distance(type(self).__name__, distance)
        self.distance = distance if distance is not None else self.default_distance()

    def __setattr__(self, name: str, value: Any) -> None:
        # every float hyper-parameter a loss stores (margin, scale, temperature, weights)
        # is checked here, at construction, instead of in each loss
        check_finite(type(self).__name__, name, value, allow_inf=name in self.infinite_ok)
        super().__setattr__(name, value)

    @staticmethod
    def default_distance() -> BaseDistance:
        return EuclideanDistance()

    def compute_loss(
        self,
        embeddings: Tensor,
        labels: Tensor | None,
        indices: IndexTuple | None,
        ref_embeddings: Tensor | None,
        ref_labels: Tensor | None,
    ) -> Tensor:
        raise NotImplementedError

    def forward(
        self,
        embeddings: Tensor,
        labels: Tensor | None = None,
        *,
        indices: Any = None,
        ref_embeddings: Tensor | None = None,
        ref_labels: Tensor | None = None,
    ) -> Tensor:
        # the batch as its own reference is no reference (self-pairs excluded)
        ref_embeddings, ref_labels = resolve_reference(
            embeddings, labels, ref_embeddings, ref_labels
        )
        check_embeddings(embeddings)
        n = embeddings.shape[0]
        if labels is not None:
            labels = self._check_labels(labels, n, "labels")
        if ref_embeddings is not None:
            check_embeddings(ref_embeddings, "ref_embeddings")
            if ref_embeddings.shape[1] != embeddings.shape[1]:
                raise ValueError(
                    f"ref_embeddings have dim {ref_embeddings.shape[1]}, "
                    f"embeddings have dim {embeddings.shape[1]}"
                )
            if ref_labels is None and labels is not None:
                raise ValueError("ref_embeddings were given with labels but without ref_labels")
        if ref_labels is not None:
            if ref_embeddings is None:
                raise ValueError("ref_labels were given without ref_embeddings")
            ref_labels = self._check_labels(ref_labels, ref_embeddings.shape[0], "ref_labels")
        if indices is not None:
            if not self.accepts_indices:
                raise ValueError(f"{type(self).__name__} does not use tuple indices")
            indices = as_index_tuple(indices)
            m = n if ref_embeddings is None else ref_embeddings.shape[0]
            check_indices(indices, n, m)
        if labels is None and (indices is None or self.requires_labels):
            need = "labels" if self.requires_labels else "labels or indices"
            raise ValueError(f"{type(self).__name__} needs {need}")
        if n == 0:
            return self.zero_loss(embeddings)

        # margins and softmaxes in fp32, whatever the autocast state
        if embeddings.dtype in (torch.float16, torch.bfloat16):
            embeddings = embeddings.float()
        if ref_embeddings is not None and ref_embeddings.dtype in (torch.float16, torch.bfloat16):
            ref_embeddings = ref_embeddings.float()
        if ref_embeddings is not None and ref_embeddings.dtype != embeddings.dtype:
            # fp32 queries against an fp64 memory bank (or the reverse): the wider dtype
            common = torch.promote_types(embeddings.dtype, ref_embeddings.dtype)
            embeddings, ref_embeddings = embeddings.to(common), ref_embeddings.to(common)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return self.compute_loss(embeddings, labels, indices, ref_embeddings, ref_labels)

    def _check_labels(self, labels: Tensor, n: int, name: str) -> Tensor:
        """``labels`` validated for training: a label kind this loss takes, and no
        multi-label row without a label."""
        labels = check_labels(labels, n, name)
        if labels.dtype == torch.bool and not self.accepts_multi_labels:
            raise TypeError(f"{type(self).__name__} needs integer {name}, (n,) or (n, L), "
                            f"got (n, C) bool multi-labels")
        return check_labels(labels, n, name, allow_empty_rows=False)

    def zero_loss(self, embeddings: Tensor) -> Tensor:
        """A scalar 0 connected to the graph, so ``backward()`` works (with zero grads)."""
        zero = embeddings.sum() * 0.0
        for p in self.parameters():
            if p.requires_grad:
                zero = zero + p.sum() * 0.0
        return zero


def mean_nonzero(values: Tensor, like: Tensor) -> Tensor:
    """Mean of the strictly positive entries of ``values`` (0 if there are none).

    pytorch-metric-learning's ``AvgNonZeroReducer``. ``like`` keeps the graph connected
    when ``values`` is empty.
    """
    if values.numel() == 0:
        return like.sum() * 0.0
    count = (values > 0).sum()
    return values.sum() / count.clamp_min(1)


__all__ = ["BaseMetricLoss", "mean_nonzero"]
