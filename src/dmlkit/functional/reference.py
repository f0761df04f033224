"""The one rule that tells a reference set apart from the batch itself.

Losses and miners take ``ref_embeddings`` / ``ref_labels`` (memory banks, other
processes' embeddings, a second view). Without them the batch is its own reference and
an item is never its own positive (self-exclusion). With them every (query, reference)
pair counts, the diagonal included: reference row ``i`` is a different item from query
row ``i``.

Passing the batch itself as the reference (``ref_embeddings=embeddings,
ref_labels=labels``, the very same tensor objects) means the batch, not a second copy
of it: it is treated as no reference, so self-pairs stay excluded. Equal but distinct
tensors (a clone, a second view, a memory bank that happens to hold the batch) are a
genuine reference set, and so is the batch's own ``labels`` object with other
``ref_embeddings``: its diagonal pairs ``(i, i)`` count. That is the right rule for a
momentum encoder's keys of the same batch or a second view, where reference row ``i``
is query ``i``'s intended positive.

pytorch-metric-learning's rule differs: it drops the diagonal positive pairs whenever
``ref_labels is labels``, whatever ``ref_embeddings`` holds. So
``loss(x, y, ref_embeddings=x.detach().clone(), ref_labels=y)`` keeps the pairs
``(i, i)`` here and drops them there. To get pytorch-metric-learning's result, pass no
reference set (``loss(x, y)``: the same value, though gradients then reach both sides
of each pair), or leave the diagonal out yourself: give ``indices`` without the pairs
``(i, i)``, or drop a miner's tuples whose positive equals their anchor.
"""

from __future__ import annotations

from torch import Tensor


def resolve_reference(
    embeddings: Tensor,
    labels: Tensor | None,
    ref_embeddings: Tensor | None,
    ref_labels: Tensor | None,
) -> tuple[Tensor | None, Tensor | None]:
    """``(ref_embeddings, ref_labels)`` as given, or ``(None, None)`` when they are the
    batch itself (``ref_embeddings is embeddings and ref_labels is labels``).

    Called once on the raw arguments by :class:`~dmlkit.losses.BaseMetricLoss` and
    :class:`~dmlkit.miners.BaseMiner`, before any validation or dtype conversion makes
    new tensor objects.
    """
    if ref_embeddings is not None and ref_embeddings is embeddings and ref_labels is labels:
        return None, None
    return ref_embeddings, ref_labels


__all__ = ["resolve_reference"]
