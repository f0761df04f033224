"""Impostor scores of an :class:`~dmlkit.apps.identifier.Identifier`'s own gallery, for
calibrating its open-set threshold without unknown queries: each calibration item (a
seeded sample of labelled gallery items) plays an unknown person by leaving its whole
identity out, and its best score against the *other* identities is an impostor score."""

from __future__ import annotations

from typing import Any

import numpy as np

from dmlkit._checks import check_random_state_seed
from dmlkit.apps.search_breadth import widen


def gallery_impostor_scores(ident: Any, z: np.ndarray, y: np.ndarray,
                            seed: int | None = None) -> np.ndarray:
    """``(c,)`` impostor scores of up to ``ident.calibration_size`` items of ``z`` ``(n, d)``
    (embedded items of enrolled identities ``y``), each its best score against an identity
    other than its own; searched deeper (and an approximate index widened) until every
    item finds another identity, else a ``ValueError`` saying what to change."""
    own = ident._codes(y, create=False)
    rng = np.random.default_rng(
        check_random_state_seed(ident.random_state) if seed is None else seed)
    pick = rng.permutation(z.shape[0])[: int(ident.calibration_size)]
    codes, scores = ident._search(z[pick], 2)
    other = np.where(codes[:, 0] != own[pick], 0, 1)  # best identity not its own
    impostor = scores[np.arange(pick.size), other]
    # an item of an identity with more than search_depth items may see only its
    # own identity that deep: search those again, deeper, up to the whole gallery
    depth = int(ident.search_depth)
    while ident.mode == "nearest" and depth < ident.index_.ntotal:
        short = np.flatnonzero(np.isneginf(impostor))
        if not short.size:
            break
        depth = min(4 * depth, ident.index_.ntotal)
        codes, scores = ident._search(z[pick[short]], 2, depth=depth)
        other = np.where(codes[:, 0] != own[pick[short]], 0, 1)
        impostor[short] = scores[np.arange(short.size), other]
    # an approximate index may visit only the item's own identity: widen it
    short = np.flatnonzero(np.isneginf(impostor))
    while short.size and widen(ident.index_, ident._knob()):
        codes, scores = ident._search(z[pick[short]], 2, depth=ident.index_.ntotal)
        other = np.where(codes[:, 0] != own[pick[short]], 0, 1)
        impostor[short] = scores[np.arange(short.size), other]
        short = short[np.isneginf(impostor[short])]
    if short.size:
        raise ValueError(
            f"calibration: {short.size} of {pick.size} gallery items find no other "
            f"identity through the index {ident.index!r} (its search visits too little "
            "of the gallery), so no impostor score can be measured for them; raise "
            "nprobe / ef_search (or leave them unset to have them chosen), or use "
            "index='exact'")
    return impostor


__all__ = ["gallery_impostor_scores"]
