"""Per-sample weights from mined tuples, for losses that are sums over samples.

pytorch-metric-learning's ``convert_to_weights``: a sample's weight is how often it
appears in the mined tuples, divided by the largest such count; with no tuples at all
(``indices`` None, or every member empty) every sample weighs 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dmlkit.functional.tuples import IndexTuple, Pairs


def miner_weights(
    indices: IndexTuple | None, n: int, like: Tensor, *, using_ref: bool
) -> Tensor:
    """Weights ``(n,)`` in ``[0, 1]`` of the ``n`` query samples.

    With ``using_ref`` only the anchor slots index the queries (the other members index
    the reference set) and only they are counted; otherwise every member counts.
    """
    ones = torch.ones(n, dtype=like.dtype, device=like.device)  # (n,)
    if indices is None or all(t.numel() == 0 for t in indices):
        return ones
    if using_ref:
        members = [indices.a1, indices.a2] if isinstance(indices, Pairs) else [indices[0]]
    else:
        members = list(indices)
    counts = torch.bincount(torch.cat(members), minlength=n).to(like.dtype)  # (n,)
    return counts / counts.max().clamp_min(1)


__all__ = ["miner_weights"]
