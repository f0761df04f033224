"""A folder of images with one sub-folder per class (``root/<class>/<image>``), via Pillow."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from dmlkit.data.dataset import ArrayDataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


def _pillow():  # imported lazily: Pillow is an optional dependency
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading image folders needs Pillow: "
            "pip install 'dmlkit[images]' (or pip install pillow)"
        ) from err
    return Image


def to_mode(image, color: Literal["grayscale", "rgb"]):  # noqa: ANN001, ANN201 - PIL types
    """Convert a PIL image to 8-bit grayscale (``"L"``) or ``"RGB"``."""
    if color not in ("grayscale", "rgb"):
        raise ValueError(f"color must be 'grayscale' or 'rgb', got {color!r}")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit grey: Pillow's
        # convert("L") clips to 255 instead of scaling, so rescale to 8 bits first
        a = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or a.max() > 255 else 255.0
        if image.mode == "F":
            top = max(float(a.max()), 1e-12) if a.max() > 1 else 1.0
        grey = np.clip(np.rint(a / top * 255.0), 0, 255).astype(np.uint8)
        image = _pillow().fromarray(grey, mode="L")
    return image.convert("L" if color == "grayscale" else "RGB")


def resize(image, size: int | tuple[int, int]):  # noqa: ANN001, ANN201 - PIL types
    """Resize a PIL image to ``size`` (side, or ``(height, width)``) with bilinear filtering."""
    height, width = (size, size) if isinstance(size, int) else size
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return image.resize((width, height), resample=_pillow().BILINEAR)


def to_array(image) -> np.ndarray:  # noqa: ANN001 - PIL type
    """A PIL image as a float32 ``(C, H, W)`` array in ``[0, 1]``."""
    a = np.asarray(image, dtype=np.float32) / 255.0
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def read_image(
    path: str | Path, color: Literal["grayscale", "rgb"] = "rgb",
    image_size: int | tuple[int, int] | None = None,
) -> np.ndarray:
    """One image file as a float32 ``(C, H, W)`` array in ``[0, 1]``.

    A file Pillow cannot decode (corrupt, truncated, not an image) is a ``ValueError``
    naming it.
    """
    try:
        with _pillow().open(path) as img:
            img = to_mode(img, color)
            if image_size is not None:
                img = resize(img, image_size)
            return to_array(img)
    except (OSError, SyntaxError) as err:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(
            f"cannot read image {path} ({err}); the file is corrupt or not an image: "
            "replace or remove it"
        ) from None


def class_folders(root: Path) -> list[Path]:
    """The class sub-folders of ``root``, sorted; hidden ones (``.git``) skipped."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(class_dir: Path) -> list[Path]:
    """The image files under one class folder, sorted; hidden files and folders skipped."""
    return sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(class_dir).parts))


def load_image_folder(
    root: str | Path,
    image_size: int | tuple[int, int] | None = None,
    color: Literal["grayscale", "rgb"] = "rgb",
) -> ArrayDataset:
    """Every image under ``root/<class_name>/`` as ``(n, C, H, W)`` float32 in ``[0, 1]``.

    Class ids follow the sorted sub-folder names (``class_names`` keeps them); hidden
    folders and files (``.git``, ``.ipynb_checkpoints``) are skipped. Without
    ``image_size`` all images must share one size. 16-bit grey images are scaled to
    ``[0, 1]`` from their 16-bit range.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    class_dirs = class_folders(root)
    if not class_dirs:
        raise ValueError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
    _pillow()
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[str] = []
    for label, class_dir in enumerate(class_dirs):
        for file in image_files(class_dir):
            arrays.append(read_image(file, color, image_size))
            labels.append(label)
            paths.append(str(file))
    if not arrays:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {root}")
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"images under {root} differ in size {sorted(shapes)}; set image_size")
    names = [p.name for p in class_dirs]
    return ArrayDataset(np.stack(arrays), np.asarray(labels, dtype=np.int64), names, paths)


__all__ = ["load_image_folder", "read_image", "to_mode", "resize", "to_array", "IMAGE_SUFFIXES",
           "class_folders", "image_files"]
