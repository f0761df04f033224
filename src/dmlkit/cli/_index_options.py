"""Options of ``dmlkit index build`` and ``dmlkit search`` checked before any work, each
refusal naming the option as typed."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


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


#: the options of the faiss search parameters, by the name the library's messages use
_OPTIONS = {"nprobe": "--nprobe", "efSearch": "--ef-search", "ef_search": "--ef-search",
            "k_factor": "--k-factor"}


@contextlib.contextmanager
def search_options_named() -> Iterator[None]:
    """Raise the refusal of a faiss search parameter given to an index without it
    (``nprobe`` / ``efSearch`` / ``k_factor applies to ...`` or ``must be ...``, as
    :class:`~dmlkit.index.FaissIndex` names them) naming the option as typed
    (``--nprobe`` / ``--ef-search`` / ``--k-factor``)."""
    try:
        yield
    except ValueError as err:
        text = str(err)
        name = text.split(" ", 1)[0]
        if name not in _OPTIONS or not text.startswith((f"{name} applies to ",
                                                         f"{name} must be ")):
            raise
        raise ValueError(_OPTIONS[name] + text[len(name):]) from None


def check_query_kind(kind: str) -> None:
    """Refuse an ``--as`` that is not ``auto``, ``embeddings`` or ``inputs``."""
    from dmlkit.runs.queries import QUERY_KINDS

    if kind not in QUERY_KINDS:
        raise ValueError(f"--as must be one of {', '.join(QUERY_KINDS)}, got {kind!r}")


__all__ = ["check_query_kind", "check_search_options", "index_metric",
           "search_options_named"]
