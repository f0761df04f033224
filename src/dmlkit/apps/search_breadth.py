"""The search breadth of an approximate gallery index: chosen for the gallery, and widened
when a calibration needs to see further.

An IVF index visits ``nprobe`` of its lists per query and an HNSW graph keeps
``efSearch`` candidates; faiss's defaults (1 and 16) can leave a query with its own
identity's items only, when the lists follow the identities, which breaks the impostor
scores an open-set threshold is calibrated on. Kits that hold a gallery choose the
breadth (when the user did not) with :func:`dmlkit.index.calibrate.calibrate` and widen it
further with :func:`widen`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: faiss's own defaults, the breadth of an index with none set
DEFAULT_NPROBE = 1
DEFAULT_EF_SEARCH = 16


def free_knob(index: Any, nprobe: int | None, ef_search: int | None) -> str | None:
    """``"nprobe"`` (inverted lists: IVF, IMI) or ``"ef_search"`` (HNSW) when the built
    ``index`` has a breadth that was not given (so it may be chosen), else ``None``."""
    from dmlkit.index.calibrate import breadth_knob

    knob = breadth_knob(index)
    given = {"nprobe": nprobe, "ef_search": ef_search}
    return knob if knob is not None and given[knob] is None else None


def tune(index: Any, vectors: np.ndarray, knob: str | None, seed: int) -> None:
    """Widen ``index`` (holding ``vectors`` ``(n, dim)`` in its storage order) until its
    recall@10 against exact search reaches 0.95; nothing when ``knob`` is ``None``."""
    from dmlkit.index.calibrate import calibrate

    if knob is not None:
        calibrate(index, vectors, target=0.95, seed=seed)


def widen(index: Any, knob: str | None) -> bool:
    """Double the ``knob`` breadth of a :class:`~dmlkit.index.FaissIndex` (up to every
    list, or every item); False when there is no knob or it cannot grow."""
    if knob == "nprobe":
        import faiss

        limit = int(faiss.extract_index_ivf(index.index).nlist)
        current = int(index.nprobe or DEFAULT_NPROBE)
    elif knob == "ef_search":
        limit = max(int(index.ntotal), DEFAULT_EF_SEARCH)
        current = int(index.ef_search or DEFAULT_EF_SEARCH)
    else:
        return False
    if current >= limit:
        return False
    setattr(index, knob, min(2 * current, limit))
    index._apply_search_params()  # as calibrate() sets a breadth
    return True


__all__ = ["free_knob", "tune", "widen"]
