"""NumPy ``.npz`` archives holding an input array and a label array."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from dmlkit.data.dataset import ArrayDataset


def read_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (or the one array of an ``.npy``, under ``"x"``),
    read without pickle.

    An empty, truncated or foreign file is a ``ValueError`` naming it, never numpy's
    ``EOFError`` / ``BadZipFile``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        if path.suffix == ".npy":
            return {"x": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as archive:
            if not hasattr(archive, "files"):
                raise ValueError("a single .npy array, not an .npz archive")
            return {key: archive[key] for key in archive.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:
        size = path.stat().st_size
        what = ("is empty (0 bytes)" if size == 0 else
                "is not a numpy array file (reading it would need unpickling, which dmlkit "
                "never does)" if "pickle" in str(err) else f"cannot be read ({err})")
        raise ValueError(f"{path} {what}; write it again with numpy "
                         f"(np.{'save' if path.suffix == '.npy' else 'savez'})") from None


def load_npz(path: str | Path, x_key: str = "x", labels_key: str = "labels") -> ArrayDataset:
    """Load ``x`` and ``labels`` arrays from an ``.npz`` file.

    ``labels`` are ``(n,)`` integer class ids or ``(n, L)`` integer hierarchical labels
    (coarsest level first, ``L >= 2``).

    Integer image arrays of ``uint8`` are scaled to ``[0, 1]``; ``(n, H, W)`` arrays of
    uint8 become ``(n, 1, H, W)``. Other arrays are kept as they are (floats as float32).
    An optional ``class_names`` array of strings is read when present.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f".npz file not found: {path}")
    archive = read_arrays(path)
    keys = list(archive)
    for key in (x_key, labels_key):
        if key not in archive:
            raise KeyError(
                f"{path} has no array {key!r}; arrays present: {keys}. "
                "Set x_key / labels_key in the data config."
            )
    x = archive[x_key]
    labels = archive[labels_key]
    names = [str(n) for n in archive["class_names"]] if "class_names" in archive else None
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
        if x.ndim == 3:
            x = x[:, None]  # (n, 1, H, W)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: {labels_key!r} must hold integer labels, got {labels.dtype}")
    return ArrayDataset(x, labels.astype(np.int64), names)


__all__ = ["load_npz", "read_arrays"]
