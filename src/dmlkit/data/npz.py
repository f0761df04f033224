"""NumPy ``.npz`` archives holding an input array and a label array."""

from __future__ import annotations

import unicodedata
import warnings
import zipfile
import zlib
from collections.abc import Collection
from pathlib import Path

import numpy as np

from dmlkit._checks import check_real_inputs  # the one rule, re-exported here
from dmlkit.data.checks import check_inputs
from dmlkit.data.dataset import ArrayDataset


def read_arrays(path: str | Path, keys: Collection[str] | None = None
                ) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file (or the one array of an ``.npy``, under ``"x"``),
    read without pickle: every array, or only those of ``keys`` that the file holds
    (the others are not decompressed, so an unused array of Python objects is no error).

    An empty, truncated or foreign file is a ``ValueError`` naming it, never numpy's
    ``EOFError`` / ``BadZipFile``; so is a requested array of Python objects (it names
    the array; ``class_names``: convert it with ``.astype(str)``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    key = None
    try:
        if path.suffix.lower() == ".npy":
            return {"x": np.load(path, allow_pickle=False)}
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single .npy array, not an .npz archive")
        with loaded as archive:
            wanted = archive.files if keys is None else [k for k in keys if k in archive.files]
            out = {}
            for key in wanted:
                out[key] = archive[key]
            return out
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as err:
        size = path.stat().st_size
        if key is not None and "pickle" in str(err):
            fix = ("convert it to strings with .astype(str) before saving" if key ==
                   "class_names" else "store it as a plain numeric array")
            raise ValueError(f"{path}: {key!r} is an array of Python objects (reading it "
                             f"would need unpickling, which dmlkit never does); {fix}, "
                             "then write the file again with np.savez") from None
        what = ("is empty (0 bytes)" if size == 0 else
                "is not a numpy array file (reading it would need unpickling, which dmlkit "
                "never does)" if "pickle" in str(err) else f"cannot be read ({err})")
        raise ValueError(f"{path} {what}; write it again with numpy "
                         f"(np.{'save' if path.suffix.lower() == '.npy' else 'savez'})") from None


def npz_class_names(names: np.ndarray, path: str | Path) -> list[str]:
    """An ``.npz`` file's ``class_names`` array as a list of strings: bytes (``S``
    arrays, as h5py writes them) decoded as UTF-8; an array that is not 1-D (one name
    per class id) is a ``ValueError`` naming the file."""
    if names.ndim != 1:
        raise ValueError(
            f"{path}: 'class_names' has shape {names.shape}, but it must be 1-D (one name "
            "per class id, class_names[label]); write it again as a 1-D array of strings "
            "(or drop it)")
    if names.dtype.kind == "S":
        return [bytes(n).decode("utf-8", errors="replace") for n in names]
    return [str(n) for n in names]


#: integer dtypes read as image pixels, and the pixel value that becomes 1.0
PIXEL_SCALES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def integer_inputs(x: np.ndarray, source: str) -> np.ndarray:
    """Integer inputs as float32, by dmlkit's one rule for integer arrays.

    ``uint8`` arrays are pixels, scaled to ``[0, 1]`` by ``1 / 255``; ``uint16`` arrays of
    images (``ndim >= 3``) by ``1 / 65535``, while ``(n, d)`` ``uint16`` rows are features
    (counts, codes) and stay unscaled, as before this rule. Every other integer dtype
    (``int8`` ... ``int64``, ``uint32``, ``uint64``) is converted to float32 unscaled: its
    range says nothing about what its maximum means. Such an array of images
    (``ndim >= 3``) with values above 1 warns, since images are expected in ``[0, 1]``.
    Non-integer arrays are returned as they are.
    """
    if x.dtype.kind not in "iu":
        return x
    scale = PIXEL_SCALES.get(x.dtype)
    if scale is not None and (x.dtype == np.uint8 or x.ndim >= 3):
        return x.astype(np.float32) / np.float32(scale)
    out = x.astype(np.float32)
    if out.ndim >= 3 and out.size and float(out.max()) > 1.0:
        warnings.warn(
            f"{source}: x holds {x.dtype} images with values in [{x.min()}, {x.max()}], "
            "kept unscaled (dmlkit scales only uint8 images by 1/255 and uint16 by 1/65535); "
            "store 8-bit pixels as uint8 (x.astype(np.uint8)), or as floats in [0, 1]",
            UserWarning, stacklevel=3)
    return out


def check_unique_names(names: list[str], path: str | Path) -> None:
    """Refuse ``class_names`` that name two labels alike (Unicode-normalised, so ``café``
    composed and decomposed are one name): a name would select only its first label."""
    first: dict[str, str] = {}
    twice: list[str] = []
    for name in names:
        key = unicodedata.normalize("NFC", name)
        if key in first and key not in twice:
            twice.append(key)
        first.setdefault(key, name)
    if twice:
        shown = ", ".join(repr(first[k]) for k in twice[:5])
        more = f" and {len(twice) - 5} more" if len(twice) > 5 else ""
        raise ValueError(
            f"{path}: 'class_names' holds {shown}{more} more than once; each label needs "
            "its own name: write the file again with distinct class_names (or drop it)")


def load_npz(path: str | Path, x_key: str = "x", labels_key: str = "labels") -> ArrayDataset:
    """Load ``x`` and ``labels`` arrays from an ``.npz`` file, checked as every labelled
    input is (:func:`~dmlkit.data.checks.check_inputs`: 1-D inputs and rows holding NaN
    or infinite values refused, inputs beyond ``|x| > 1e4`` warned about).

    ``labels`` are ``(n,)`` integer class ids or ``(n, L)`` integer hierarchical labels
    (coarsest level first, ``L >= 2``).

    Integer ``x`` follows one rule (:func:`integer_inputs`): ``uint8`` is scaled to
    ``[0, 1]`` by ``1/255`` and ``uint16`` by ``1/65535`` (image pixels; ``(n, H, W)``
    arrays of either become ``(n, 1, H, W)``); every other integer dtype becomes float32
    unscaled, with a warning when it holds images (``ndim >= 3``) with values above 1.
    Floats are kept (as float32; finite values beyond float32's range are refused). Only
    ``x``, ``labels`` and an optional ``class_names`` array are read; other arrays of the
    file are ignored. ``class_names`` (strings, or bytes decoded as UTF-8; 1-D) is
    indexed by label (``class_names[label]``), so one shorter than the largest label + 1
    is a ``ValueError``. Complex or non-numeric ``x`` (strings) is a ``TypeError`` naming
    the file and the array; every other refusal of the arrays names the file too.
    """
    return check_inputs(read_npz(path, x_key, labels_key), str(path))


def array_names(path: str | Path) -> list[str]:
    """The names of the arrays of an ``.npz`` file (``["x"]`` for an ``.npy`` file)."""
    if Path(path).suffix.lower() == ".npy":
        return ["x"]
    with np.load(path, allow_pickle=False) as archive:
        return list(archive.files)


def read_npz(path: str | Path, x_key: str = "x", labels_key: str = "labels") -> ArrayDataset:
    """:func:`load_npz` without its input checks (:func:`~dmlkit.data.load.load_dataset`
    checks what every source gives once)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f".npz file not found: {path}")
    archive = read_arrays(path, (x_key, labels_key, "class_names"))
    for key in (x_key, labels_key):
        if key not in archive:
            raise KeyError(
                f"{path} has no array {key!r}; arrays present: {array_names(path)}. "
                "Set x_key / labels_key in the data config."
            )
    x = archive[x_key]
    check_real_inputs(x, str(path), repr(x_key),
                      hint="; name the inputs array with data.x_key in a config, --x-key "
                           "where a command has it")
    labels = archive[labels_key]
    names = npz_class_names(archive["class_names"], path) if "class_names" in archive else None
    if x.dtype in PIXEL_SCALES and x.ndim == 3:
        x = x[:, None]  # (n, 1, H, W)
    x = integer_inputs(x, str(path))
    if labels.dtype.kind not in "iu":
        hint = ""
        if labels.dtype.kind in "USO":
            hint = ("; map class names to ids before saving: names, ids = np.unique(labels, "
                    "return_inverse=True), then np.savez(..., labels=ids, class_names=names)")
        elif labels.dtype.kind == "b" and labels.ndim == 2:
            hint = ("; (n, C) bool multi-labels are trained through the Python API "
                    "(dmlkit.training.Trainer with a dataset holding them, e.g. "
                    "TensorDataset(x, y)) and evaluated by `dmlkit evaluate` on an .npz of "
                    "embeddings; a run's data section reads (n,) or (n, L) integer labels")
        raise ValueError(f"{path}: {labels_key!r} must hold integer labels, got "
                         f"{labels.dtype}{hint}")
    if x.ndim and labels.ndim and x.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{path}: {x_key!r} has {x.shape[0]} rows but {labels_key!r} has "
            f"{labels.shape[0]}; every item needs one label: write the file again with "
            "arrays of one length")
    if names is not None and labels.ndim == 2:
        warnings.warn(
            f"{path}: 'class_names' is not used: it names (n,) class ids, and {labels_key!r} "
            f"holds (n, L) hierarchical labels {labels.shape}, whose classes are label rows; "
            "drop it from the file", UserWarning, stacklevel=2)
        names = None
    if names is not None:
        check_unique_names(names, path)
    if names is not None and labels.ndim == 1 and labels.size and len(names) <= labels.max():
        raise ValueError(
            f"{path}: 'class_names' holds {len(names)} names, but labels reach "
            f"{int(labels.max())}; class_names are indexed by label (class_names[label]), "
            f"so it needs {int(labels.max()) + 1} entries (write it again, or drop it)")
    try:
        return ArrayDataset(x, labels.astype(np.int64), names)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{path}: {err}") from None


__all__ = ["PIXEL_SCALES", "array_names", "check_real_inputs", "check_unique_names",
           "integer_inputs", "load_npz", "npz_class_names", "read_arrays", "read_npz"]
