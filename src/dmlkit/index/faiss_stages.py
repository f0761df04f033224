"""What a built faiss index is made of: its stages (IVF lists, PQ / additive codebooks,
HNSW / NSG graphs) and their sizes, read from the index itself rather than parsed from
the factory string.

Two uses: :func:`check_stages` refuses degenerate sizes that ``faiss.index_factory``
accepts but faiss then crashes on (``IVF0`` fails at search, ``PQ2x0`` / ``RQ2x0``
kill the process, ``HNSW0`` / ``HNSW1`` abort or crash, ``NSG1``..``NSG3`` never finish
building), and :func:`describe_clustering` says which stage a faiss k-means warning is
about, with advice that fits that stage.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

#: training vectors faiss's k-means wants per centroid (``min_points_per_centroid``)
POINTS_PER_CENTROID = 39
#: the smallest NSG graph degree faiss finishes building (NSG1..NSG3 loop forever)
MIN_NSG_DEGREE = 4


@dataclass(frozen=True)
class Stage:
    """One stage of a faiss index.

    ``kind`` is ``"IVF"`` (``size`` lists), ``"IMI"`` / ``"PQ"`` / ``"AQ"`` (``size``
    sub-quantizers or codebooks of ``bits`` bits each), ``"SQ"`` (scalar codes of
    ``bits`` bits per dimension; 0 when not a whole number), ``"LSH"`` (``size`` bits),
    ``"HNSW"`` (``size`` = M), ``"NSG"`` (``size`` = graph degree R) or ``"Refine"`` (a
    refine stage). ``centroids`` is how many k-means centroids one of its quantizers
    trains (0: none).
    """

    kind: str
    size: int
    bits: int = 0
    centroids: int = 0


def stages(faiss: Any, index: Any) -> list[Stage]:
    """The stages of ``index`` and of every index inside it (quantizer, storage, refine)."""
    found: list[Stage] = []
    _visit(faiss, index, found)
    return found


def _visit(faiss: Any, index: Any, found: list[Stage]) -> None:
    ix = faiss.downcast_index(index)
    if hasattr(ix, "nlist") and hasattr(ix, "quantizer"):
        found.append(Stage("IVF", int(ix.nlist), centroids=int(ix.nlist)))
    pq = getattr(ix, "pq", None)
    if pq is not None:
        kind = "IMI" if isinstance(ix, faiss.MultiIndexQuantizer) else "PQ"
        bits = int(pq.nbits)
        found.append(Stage(kind, int(pq.M), bits, 1 << bits if 0 < bits < 63 else 0))
    aq = getattr(ix, "aq", None)
    if aq is not None:
        bits = min((int(b) for b in faiss.vector_to_array(aq.nbits)), default=0)
        found.append(Stage("AQ", int(aq.M), bits, 1 << bits if 0 < bits < 63 else 0))
    hnsw = getattr(ix, "hnsw", None)
    if hnsw is not None:  # cum_nneighbor_per_level = [0, 2M, 3M, ...]; HNSW1 has only [0]
        levels = hnsw.cum_nneighbor_per_level
        found.append(Stage("HNSW", int(levels.at(1)) // 2 if levels.size() > 1 else 0))
    nsg = getattr(ix, "nsg", None)
    if nsg is not None:
        found.append(Stage("NSG", int(nsg.R)))
    sq = getattr(ix, "sq", None)
    if sq is not None:
        found.append(Stage("SQ", 0, bits=int(sq.bits)))
    if isinstance(ix, faiss.IndexLSH):
        found.append(Stage("LSH", int(ix.nbits)))
    if isinstance(ix, faiss.IndexRefine):
        found.append(Stage("Refine", 0))
    for attr in ("quantizer", "storage", "base_index", "refine_index", "index"):
        inner = getattr(ix, attr, None)
        if isinstance(inner, faiss.Index):
            _visit(faiss, inner, found)


def check_stages(found: list[Stage]) -> str | None:
    """Why an index with these stages cannot work (faiss would crash), else ``None``."""
    for s in found:
        if s.kind == "IVF" and s.size < 1:
            return f"an IVF index needs at least 1 list, got {s.size}"
        if s.kind in ("PQ", "IMI", "AQ") and s.bits < 1:
            what = "additive quantizer codebooks" if s.kind == "AQ" else f"{s.kind} codes"
            return f"{what} need at least 1 bit each, got {s.bits}"
        if s.kind == "HNSW" and s.size < 2:
            return "an HNSW graph needs M >= 2 neighbours per node (HNSW2 or more)"
        if s.kind == "NSG" and s.size < MIN_NSG_DEGREE:
            return f"an NSG graph needs degree >= {MIN_NSG_DEGREE}, got {s.size}"
    return None


_CLUSTERING = re.compile(r"clustering (\d+) points to (\d+) centroids")


def describe_clustering(found: list[Stage], warning_text: str, n: int) -> tuple[str, str]:
    """``(what, advice)`` for faiss's k-means warnings (``warning_text``) when training
    on ``n`` vectors: which stages asked for more centroids than ``n`` supports, and how
    to shrink each of them."""
    asked = {int(k) for _, k in _CLUSTERING.findall(warning_text)}
    whats, advice = [], []
    for s in found:
        if not s.centroids or (asked and s.centroids not in asked):
            continue
        if s.kind == "IVF":
            whats.append(f"{s.size} IVF lists")
            # sqrt(n) lists, capped so that each still gets its training vectors
            fewer = min(max(1, math.isqrt(n)), n // POINTS_PER_CENTROID, s.size - 1)
            advice.append(f"fewer lists (at most {fewer} for {n} vectors: no more than "
                          f"sqrt(n), nor n / {POINTS_PER_CENTROID})" if fewer >= 1
                          else "no IVF stage (too few vectors for its lists)")
        else:
            name = {"PQ": "PQ sub-quantizer", "IMI": "IMI sub-quantizer",
                    "AQ": "additive quantizer codebook"}[s.kind]
            whats.append(f"{s.centroids} centroids per {name} of {s.bits} bits")
            most = int(math.log2(n / POINTS_PER_CENTROID)) if n >= 2 * POINTS_PER_CENTROID else 0
            advice.append(f"fewer bits per {name} (at most {most} for {n} vectors)"
                          if most >= 1 else f"no {s.kind} stage (too few vectors for one)")
    if not whats:
        return "its quantizer", "a smaller quantizer"
    return "; ".join(whats), " or ".join(dict.fromkeys(advice))


__all__ = ["MIN_NSG_DEGREE", "POINTS_PER_CENTROID", "Stage", "check_stages",
           "describe_clustering", "stages"]
