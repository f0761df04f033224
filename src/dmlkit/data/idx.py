"""IDX files (the MNIST / Fashion-MNIST format), gzip-compressed or not.

An IDX file is a 4-byte magic number ``0 0 <type> <ndim>``, ``ndim`` big-endian int32
sizes, then the values in C order (LeCun et al., the MNIST database).
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from dmlkit.data.checks import check_inputs
from dmlkit.data.dataset import ArrayDataset

_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
#: file stems of the official parts of MNIST-format datasets
IDX_PARTS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw, detected from its first bytes) into an array."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:  # BadGzipFile is an OSError
            raise ValueError(
                f"{path} is a damaged or truncated gzip file ({err}); "
                "download it again or replace it with an intact copy"
            ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4]!r})")
    dtype, ndim = _IDX_TYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is cut inside its header: {ndim} dimensions need "
                         f"{header} bytes, the file holds {len(raw)}")
    shape = tuple(int(s) for s in np.frombuffer(raw[4:header], dtype=">i4"))
    count = math.prod(shape)  # (a Python int: no overflow for huge headers)
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(
            f"{path}: header says shape {shape} ({count * dtype.itemsize} bytes of data), "
            f"file holds {len(raw) - header}"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def _find(directory: Path, stem: str) -> Path | None:
    for suffix in (".gz", ""):
        candidate = directory / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def load_idx(
    images: str | Path,
    labels: str | Path,
    class_names: list[str] | None = None,
) -> ArrayDataset:
    """An image IDX file and its label IDX file as ``(n, 1, H, W)`` float32 (8-bit
    pixels scaled to ``[0, 1]``, other types as stored), checked as every labelled input
    is (:func:`~dmlkit.data.checks.check_inputs`).

    Files that do not fit together (other counts of images and labels) or labels that
    are no class ids (negative, or floats that are not whole numbers) are a
    ``ValueError`` naming the files.
    """
    return check_inputs(read_idx_pair(images, labels, class_names), f"{images}")


def read_idx_pair(
    images: str | Path,
    labels: str | Path,
    class_names: list[str] | None = None,
) -> ArrayDataset:
    """:func:`load_idx` without its input checks (:func:`~dmlkit.data.load.load_dataset`
    checks what every source gives once)."""
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim and y.ndim and x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{images} holds {x.shape[0]} images but {labels} holds {y.shape[0]} labels; "
            "the two files must be of one part: replace the wrong one")
    if x.ndim == 3:
        x = x[:, None]  # (n, 1, H, W)
    scale = 255.0 if x.dtype == np.uint8 else 1.0  # 8-bit pixels -> [0, 1]
    x = x.astype(np.float32) / scale
    try:
        return ArrayDataset(x, y, class_names)  # (float labels: whole numbers only)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{images}, {labels}: {err}") from None


def load_idx_dir(
    directory: str | Path,
    part: str = "train",
    class_names: list[str] | None = None,
    install_hint: str = "",
) -> ArrayDataset:
    """A part (``"train"``, ``"test"`` or ``"all"``) of an MNIST-format directory,
    checked as every labelled input is (:func:`~dmlkit.data.checks.check_inputs`).

    Looks for ``train-images-idx3-ubyte[.gz]`` / ``train-labels-idx1-ubyte[.gz]`` and the
    ``t10k-*`` files of the test part.
    """
    return check_inputs(read_idx_dir(directory, part, class_names, install_hint),
                        str(directory))


def read_idx_dir(
    directory: str | Path,
    part: str = "train",
    class_names: list[str] | None = None,
    install_hint: str = "",
) -> ArrayDataset:
    """:func:`load_idx_dir` without its input checks."""
    directory = Path(directory)
    if part == "all":
        parts = [read_idx_dir(directory, p, class_names, install_hint) for p in ("train", "test")]
        return ArrayDataset(
            np.concatenate([p.x.numpy() for p in parts]),
            np.concatenate([p.labels.numpy() for p in parts]),
            class_names,
        )
    if part not in IDX_PARTS:
        raise ValueError(f"part must be 'train', 'test' or 'all', got {part!r}")
    stems = IDX_PARTS[part]
    found = [_find(directory, s) for s in stems]
    if any(f is None for f in found):
        missing = [s for s, f in zip(stems, found, strict=True) if f is None]
        raise FileNotFoundError(
            f"IDX files {missing} (optionally .gz) not found in {directory}. {install_hint}".strip()
        )
    return read_idx_pair(found[0], found[1], class_names)  # type: ignore[arg-type]


def load_fashion_mnist(part: str = "train", directory: str | Path | None = None) -> ArrayDataset:
    """Fashion-MNIST (Xiao et al. 2017): 28x28 grayscale clothes, 10 classes.

    Read from Debian's ``dataset-fashion-mnist`` package by default
    (``/usr/share/datasets/fashion-mnist``) or from ``directory``, checked as every
    labelled input is (:func:`~dmlkit.data.checks.check_inputs`).
    """
    return check_inputs(read_fashion_mnist(part, directory),
                        str(directory or FASHION_MNIST_DIR))


def read_fashion_mnist(part: str = "train", directory: str | Path | None = None
                       ) -> ArrayDataset:
    """:func:`load_fashion_mnist` without its input checks."""
    hint = (
        "Install it with `apt-get update && apt-get install -y dataset-fashion-mnist` "
        f"(files go to {FASHION_MNIST_DIR}), or put the four IDX files in a directory "
        "and give its path."
    )
    return read_idx_dir(directory or FASHION_MNIST_DIR, part, FASHION_MNIST_NAMES, hint)


__all__ = [
    "read_idx",
    "load_idx",
    "load_idx_dir",
    "load_fashion_mnist",
    "read_fashion_mnist",
    "read_idx_dir",
    "read_idx_pair",
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_NAMES",
]
