"""The distance names the application kits take: those of ``dmlkit evaluate`` and the
command line (``cosine``, ``euclidean`` or ``l2``, ``dot`` or ``ip``; any case)."""

from __future__ import annotations

from typing import Any

#: the nearest-neighbour index metric (:data:`dmlkit.index.METRICS`) of each distance name
INDEX_METRIC = {"cosine": "cosine", "euclidean": "l2", "dot": "ip"}


def app_metric(metric: Any) -> Any:
    """``"cosine"``, ``"euclidean"`` or ``"dot"`` for any of their names and aliases
    (:func:`~dmlkit.functional.retrieval.canonical_metric`); an unknown value is given
    back as it is, for the kit's own check to name."""
    from dmlkit.functional.retrieval import canonical_metric

    try:
        return canonical_metric(metric)
    except ValueError:
        return metric


__all__ = ["INDEX_METRIC", "app_metric"]
