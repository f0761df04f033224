"""Options of ``dmlkit index build`` and ``dmlkit search`` checked before any work, each
refusal naming the option as typed."""

from __future__ import annotations


def index_metric(metric: str) -> str:
    """The index metric (``l2``, ``ip`` or ``cosine``) named by ``--metric``: those, or
    the names and aliases every dmlkit metric option takes (``euclidean`` = ``l2``,
    ``dot`` = ``ip``; :func:`dmlkit.functional.retrieval.canonical_metric`), in any
    case."""
    from dmlkit.apps.metric_names import INDEX_METRIC  # (lazily: --help stays instant)
    from dmlkit.functional.retrieval import canonical_metric

    try:
        return INDEX_METRIC[canonical_metric(metric)]
    except ValueError:
        raise ValueError(f"--metric must be l2 (or euclidean), ip (or dot) or cosine, got "
                         f"{metric!r}") from None


def check_search_options(k: int | None = None, nprobe: int | None = None,
                         ef_search: int | None = None) -> None:
    """Refuse ``-k``, ``--nprobe`` and ``--ef-search`` below 1, naming the option; ``None``
    (not given) passes."""
    for option, value in (("-k", k), ("--nprobe", nprobe), ("--ef-search", ef_search)):
        if value is not None and value < 1:
            raise ValueError(f"{option} must be an integer >= 1, got {value}")


__all__ = ["check_search_options", "index_metric"]
