"""The report's 2-D map of embeddings: UMAP, t-SNE or PCA, whichever the items allow.

Each method needs enough items (and features) to run: UMAP its neighbourhood of
:data:`UMAP_NEIGHBOURS` items, t-SNE :data:`TSNE_MIN_ITEMS`, PCA two items of two or
more features. With fewer, :func:`project_2d` falls back to the next method that can
run, and one-dimensional embeddings are drawn as they are (each value against a small
seeded jitter); each fallback leaves a note saying why the map is not the one asked for.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

PROJECTIONS = ("auto", "umap", "tsne", "pca")

#: UMAP's neighbourhood size; UMAP maps only more items than this
UMAP_NEIGHBOURS = 15
#: fewest items t-SNE maps (its perplexity must stay below the number of items)
TSNE_MIN_ITEMS = 6

_NAMES = {"umap": "UMAP", "tsne": "t-SNE", "pca": "PCA"}
#: the map's name when the embeddings have one dimension (drawn as they are)
VALUES_1D = "1-D values (vertical jitter)"


def check_projection(method: str) -> None:
    """Raise a ``ValueError`` unless ``method`` is one of :data:`PROJECTIONS`, and an
    ``ImportError`` when ``"umap"`` is asked for without umap-learn installed."""
    if method not in PROJECTIONS:
        raise ValueError(f"projection must be auto, umap, tsne or pca, got {method!r}")
    if method == "umap" and importlib.util.find_spec("umap") is None:
        raise ImportError("UMAP needs umap-learn: pip install 'dmlkit[report]'")


def choose_projection(n_items: int, n_features: int, method: str = "auto"
                      ) -> tuple[str, str | None]:
    """``(kind, note)``: the map :func:`project_2d` makes of ``n_items`` points of
    ``n_features`` values when ``method`` is asked for, and why it is another one
    (``None`` when it is the one asked for; ``"auto"`` asks for UMAP when umap-learn is
    installed, else t-SNE). ``kind`` is ``"umap"``, ``"tsne"``, ``"pca"``, ``"values"``
    (one feature: the values as they are) or ``"point"`` (one item)."""
    check_projection(method)
    wanted = method
    if method == "auto":
        wanted = "umap" if importlib.util.find_spec("umap") is not None else "tsne"
    if n_features == 1:
        return "values", ("the embeddings have one dimension: the map draws each item's "
                          "value (across) against a small random jitter (up and down)")
    if n_items < 2:
        return "point", f"the map of {n_items} item is one point"
    kind = wanted
    if kind == "umap" and n_items <= UMAP_NEIGHBOURS:
        kind = "tsne"
    if kind == "tsne" and n_items < TSNE_MIN_ITEMS:
        kind = "pca"
    if kind == wanted:
        return kind, None
    need = (f"more than {UMAP_NEIGHBOURS}" if wanted == "umap" else f"at least {TSNE_MIN_ITEMS}")
    return kind, (f"{_NAMES[wanted]} needs {need} items and there are {n_items}: the map "
                  f"is {_NAMES[kind]}")


def project_2d(z: np.ndarray, method: str = "auto", seed: int = 0,
               notes: list[str] | None = None) -> tuple[np.ndarray, str]:
    """``(n, 2)`` map of ``z`` (``(n, d)``) and the method's name: UMAP (umap-learn) when
    installed, else t-SNE, else PCA, as :func:`choose_projection` picks for the number
    of items and features; ``notes``, when given, receives each reason the map is not
    the one asked for (too few items, one feature, a method that failed on the items)."""
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 2:
        raise ValueError(f"need (n, d) embeddings to map, got shape {z.shape}")
    kind, note = choose_projection(len(z), z.shape[1], method)
    say = notes.append if notes is not None else (lambda _n: None)
    if note is not None:
        say(note)
    if kind == "values":
        jitter = np.random.default_rng(seed).uniform(-1.0, 1.0, len(z))
        spread = float(np.ptp(z[:, 0])) if len(z) else 0.0
        return np.stack([z[:, 0], jitter * 0.05 * (spread or 1.0)], axis=1), VALUES_1D
    if kind == "point":
        return np.zeros((len(z), 2), dtype=np.float32), "PCA"
    if kind in ("umap", "tsne"):
        try:
            return _fit(kind, z, seed), _NAMES[kind]
        except (ValueError, TypeError) as err:  # a degenerate set of items: PCA draws it
            say(f"{_NAMES[kind]} failed on these items ({' '.join(str(err).split())}): "
                "the map is PCA")
    from sklearn.decomposition import PCA

    return PCA(2, random_state=seed).fit_transform(z), "PCA"


def _fit(kind: str, z: np.ndarray, seed: int) -> Any:
    """UMAP's or t-SNE's ``(n, 2)`` map of ``z`` (enough items: :func:`choose_projection`)."""
    if kind == "umap":
        import umap

        # one job: a fixed random_state makes UMAP run single-threaded anyway, and says
        # so in a warning unless n_jobs already is 1
        reducer = umap.UMAP(n_components=2, random_state=seed, n_neighbors=UMAP_NEIGHBOURS,
                            n_jobs=1)
        return reducer.fit_transform(z)
    from sklearn.manifold import TSNE

    perplexity = float(min(30, (len(z) - 1) / 3))
    return TSNE(2, perplexity=perplexity, random_state=seed, init="pca").fit_transform(z)


__all__ = ["PROJECTIONS", "VALUES_1D", "check_projection", "choose_projection", "project_2d"]
