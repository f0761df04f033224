"""The one rule that tells a reference set apart from the batch itself.

Losses and miners take ``ref_embeddings`` / ``ref_labels`` (memory banks, other
processes' embeddings, a second view). Without them the batch is its own reference and
an item is never its own positive (self-exclusion). With them every (query, reference)
pair counts, the diagonal included: reference row ``i`` is a different item from query
row ``i``.

Passing the batch itself as the reference (``ref_embeddings=embeddings,
ref_labels=labels``, the very same tensor objects) means the batch, not a second copy
of it: it is treated as no reference, so self-pairs stay excluded. This matches
pytorch-metric-learning, which drops the diagonal positives exactly when
``ref_labels is labels``. Equal but distinct tensors (a clone, a second view, a memory
bank that happens to hold the batch) are a genuine reference set. dmlkit asks for both
objects to be the batch's: ``ref_labels=labels`` with other ``ref_embeddings`` (e.g. a
second view) keeps its diagonal pairs, where pytorch-metric-learning drops them.
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
