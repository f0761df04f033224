"""A folder of images with one sub-folder per class (``root/<class>/<image>``), via Pillow."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from dmlkit._checks import first_few, is_int
from dmlkit.data.dataset import ArrayDataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
#: Pillow modes of single-channel (grey) images, alpha or not
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
Color = Literal["auto", "grayscale", "rgb"]


def _pillow():  # imported lazily: Pillow is an optional dependency
    try:
        from PIL import Image
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading image folders needs Pillow: "
            "pip install 'dmlkit[images]' (or pip install pillow)"
        ) from err
    return Image


def too_large(path: str | Path, err: Exception) -> ValueError:
    """The error for an image above Pillow's decompression-bomb pixel limit, naming it."""
    limit = _pillow().MAX_IMAGE_PIXELS  # Pillow refuses images above twice this
    limit_text = f" of {2 * limit} pixels" if limit else ""
    found = re.search(r"\((\d+) pixels\)", str(err))
    size = f" ({found.group(1)} pixels)" if found else ""
    return ValueError(
        f"image {path}{size} is larger than Pillow's limit{limit_text}, its guard against "
        "decompression bombs; shrink the image or remove it")


def is_color(image) -> bool:  # noqa: ANN001 - PIL type
    """Whether a PIL image is stored in colour: its mode is not a grey one
    (:data:`GREY_MODES`); a palette image is colour when a palette entry is not grey."""
    if image.mode in ("P", "PA"):
        palette = image.getpalette() or []
        rgb = np.asarray(palette[: len(palette) // 3 * 3]).reshape(-1, 3)
        return bool((rgb != rgb[:, :1]).any())
    return image.mode not in GREY_MODES


#: formats whose ``"I"`` images Pillow decodes on a 16-bit scale: PGM (``PPM``) maps the
#: header's maxval to 65535, and older Pillows read 16-bit PNGs as ``"I"``
SIXTEEN_BIT_I_FORMATS = frozenset({"PPM", "PNG"})


def _grey_top(image, a: np.ndarray) -> float:  # noqa: ANN001 - PIL type
    """The value that is white in a 16/32-bit or float grey image ``image`` (pixels ``a``):
    from the file's declared bit depth where Pillow gives it, else from the pixels."""
    if image.mode.startswith("I;16") or (
            image.mode == "I" and image.format in SIXTEEN_BIT_I_FORMATS):
        return 65535.0
    if image.mode == "F":
        return max(float(a.max()), 1e-12) if a.max() > 1 else 1.0
    return 65535.0 if a.max() > 255 else 255.0  # "I" of unknown depth (32-bit TIFF)


def to_mode(image, color: Color):  # noqa: ANN001, ANN201 - PIL types
    """Convert a PIL image to 8-bit grayscale (``"L"``) or ``"RGB"``; ``"auto"``: ``"RGB"``
    for a colour image (:func:`is_color`), else ``"L"``."""
    if color not in ("auto", "grayscale", "rgb"):
        raise ValueError(f"color must be 'auto', 'grayscale' or 'rgb', got {color!r}")
    if color == "auto":
        color = "rgb" if is_color(image) else "grayscale"
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit grey: Pillow's
        # convert("L") clips to 255 instead of scaling, so rescale to 8 bits first
        a = np.asarray(image, dtype=np.float64)
        top = _grey_top(image, a)
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
    path: str | Path, color: Color = "rgb",
    image_size: int | tuple[int, int] | None = None,
) -> np.ndarray:
    """One image file as a float32 ``(C, H, W)`` array in ``[0, 1]`` (``color="auto"``:
    ``C`` is 3 for a colour image, 1 for a grey one).

    A file Pillow cannot decode (corrupt, truncated, not an image) is a ``ValueError``
    naming it.
    """
    image = _pillow()
    try:
        with image.open(path) as img:
            img = to_mode(img, color)
            if image_size is not None:
                img = resize(img, image_size)
            return to_array(img)
    except image.DecompressionBombError as err:
        raise too_large(path, err) from None
    except (OSError, SyntaxError) as err:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(
            f"cannot read image {path} ({err}); the file is corrupt or not an image: "
            "replace or remove it"
        ) from None


#: folders that archive tools add beside the content, never a class
NOT_CLASS_FOLDERS = frozenset({"__MACOSX"})


def class_folders(root: Path) -> list[Path]:
    """The class sub-folders of ``root``, sorted; hidden ones (``.git``) and archive
    tools' folders (``__MACOSX``) skipped."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and p.name not in NOT_CLASS_FOLDERS)


def image_files(class_dir: Path) -> list[Path]:
    """The image files under one class folder, sorted; hidden files and folders skipped,
    and entries that are no files (a folder named ``x.png``)."""
    return sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(class_dir).parts)
                  and p.is_file())


def image_header(file: str | Path) -> tuple[tuple[int, int], bool]:
    """``((width, height), colour)`` of an image file (:func:`is_color`), from its header
    only. A file Pillow cannot open raises ``OSError`` or ``SyntaxError`` (for the caller
    to name where the file came from); one above Pillow's pixel limit a ``ValueError``
    naming it."""
    image = _pillow()
    try:
        with image.open(file) as img:
            return img.size, is_color(img)
    except image.DecompressionBombError as err:
        raise too_large(file, err) from None


def folder_color(files: list[Path] | list[str]) -> Literal["grayscale", "rgb"]:
    """``"rgb"`` when any of the image ``files`` is colour (:func:`is_color`), else
    ``"grayscale"``: what ``color="auto"`` reads a set of images as. Only the files'
    headers are read; a file Pillow cannot open is a ``ValueError`` naming it."""
    for file in files:
        try:
            if image_header(file)[1]:
                return "rgb"
        except (OSError, SyntaxError) as err:
            raise ValueError(f"cannot read image {file} ({err}); the file is corrupt or not "
                             "an image: replace or remove it") from None
    return "grayscale"


def folder_images(root: str | Path) -> tuple[list[str], list[tuple[int, Path]]]:
    """``(class_names, [(class id, file), ...])`` of an image folder ``root/<class>/<image>``,
    without opening any image: class ids follow the sorted sub-folder names
    (:func:`class_folders`), files are sorted within each (:func:`image_files`).

    A missing folder is a ``FileNotFoundError``; one without class sub-folders (said as
    speaker sub-folders where it holds ``.wav`` files) or without images a ``ValueError``,
    and so is a class sub-folder without image files (only other files, or none): it would
    be a class name no item has, as the audio folder refuses.
    """
    root = Path(root)
    if root.is_file():
        raise ValueError(f"{root} is a file, not an image folder (root/<class>/<image>); "
                         "for an .npz file use data.name: npz")
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    class_dirs = class_folders(root)
    if not class_dirs:
        if any(f.suffix.lower() == ".wav" and f.is_file() for f in root.iterdir()):
            raise ValueError(f"{root} holds .wav files but no speaker sub-folders (expected "
                             "ROOT/<speaker>/*.wav): move each speaker's recordings into a "
                             "sub-folder named after the speaker")
        raise ValueError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
    listing = [image_files(class_dir) for class_dir in class_dirs]
    suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
    if not any(listing):
        raise ValueError(f"no images ({suffixes}) found under {root}")
    empty = [class_dir for class_dir, found in zip(class_dirs, listing, strict=True)
             if not found]
    if empty:  # a class without images: a class name (and id) no item has
        shown = first_few(empty)
        raise ValueError(
            f"{len(empty)} class folder(s) of {root} hold no images ({shown}); every "
            f"sub-folder is a class: add its images ({suffixes}) or remove the folder")
    files = [(label, file) for label, found in enumerate(listing) for file in found]
    return [p.name for p in class_dirs], files


def header_colour(file: str | Path) -> bool:
    """Whether an image file is colour, from its header; ``False`` where it cannot be
    opened or is above Pillow's pixel limit (an image that is listed but not read)."""
    try:
        return image_header(file)[1]
    except (OSError, SyntaxError, ValueError):
        return False


class MixedSizesError(ValueError):
    """The images of a folder read without ``image_size`` differ in size: the message
    says to set ``data.image_size``; ``root``, ``sizes`` and ``examples`` (the texts of
    :func:`size_list`) let a caller that reads the folder otherwise say what to do."""

    def __init__(self, root: str | Path, sizes: str, examples: str) -> None:
        self.root, self.sizes, self.examples = Path(root), sizes, examples
        super().__init__(
            f"images under {root} differ in size {sizes}; set data.image_size (e.g. "
            "data.image_size: 32, or [height, width]) to resize every image to it; one "
            f"image of each size (under {root}): {examples}")


def load_image_folder(
    root: str | Path,
    image_size: int | tuple[int, int] | None = None,
    color: Color = "auto",
    keep_classes: Collection[int] | None = None,
) -> ArrayDataset:
    """Every image under ``root/<class_name>/`` as ``(n, C, H, W)`` float32 in ``[0, 1]``.

    Class ids follow the sorted sub-folder names (``class_names`` keeps them); hidden
    folders and files (``.git``, ``.ipynb_checkpoints``) are skipped; a class folder
    without images is a ``ValueError`` (:func:`folder_images`). Without ``image_size``
    all images must share one size. 16-bit grey images are scaled to ``[0, 1]`` from
    their 16-bit range.

    ``color``: ``"auto"`` (default) reads 3 channels (RGB) when any image of the folder
    is colour (its Pillow mode is not a grey one, :func:`is_color`; grey images then
    repeat their grey in R, G and B), else 1 channel; ``"grayscale"`` or ``"rgb"``
    force 1 or 3 channels.

    ``keep_classes``: class ids whose images are read; the other classes' images are
    listed, not decoded (with ``color="auto"`` their headers still count, so the items
    read are the whole folder's items of those classes, with the same ids, class names
    and paths; a header that cannot be read counts as grey). An id that is not a class
    of the folder, or classes without images, are a ``ValueError``; a non-integer (a
    name, ``1.0``, ``True``) a ``TypeError``.
    """
    names, files = folder_images(root)
    _pillow()
    others: list[Path] = []  # listed, not decoded
    if keep_classes is not None:
        odd = [c for c in keep_classes if not is_int(c)]
        if odd:
            raise TypeError(f"keep_classes must hold class ids (integers), got {odd!r}")
        keep = {int(c) for c in keep_classes}
        unknown = sorted(c for c in keep if not 0 <= c < len(names))
        if unknown:
            raise ValueError(f"keep_classes {unknown} are not classes of {root} (class ids "
                             f"0 to {len(names) - 1}: {names})")
        others = [file for label, file in files if label not in keep]
        files = [(label, file) for label, file in files if label in keep]
        if not files:
            raise ValueError(f"keep_classes {sorted(keep)} hold no images under {root}")
    # "auto": each image in its own mode, then grey ones repeated to RGB if any is colour
    arrays = [read_image(file, color, image_size) for _, file in files]
    if color == "auto" and (any(a.shape[0] == 3 for a in arrays)
                            or any(header_colour(file) for file in others)):
        arrays = [np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for a in arrays]
    labels = [label for label, _ in files]
    paths = [str(file) for _, file in files]
    if len({a.shape for a in arrays}) > 1:
        sizes, examples = size_list([a.shape for a in arrays],
                                    [file.relative_to(root) for _, file in files])
        raise MixedSizesError(root, sizes, examples)
    return ArrayDataset(np.stack(arrays), np.asarray(labels, dtype=np.int64), names, paths)


def listed_files(items: Sequence[tuple[str | Path, tuple[int, ...]]], most: int = 5) -> str:
    """``(file, shape)`` pairs for a message: ``a.png of shape (1, 8, 8), ...``, at most
    ``most`` of them, then ``and N more``."""
    text = ", ".join(f"{p} of shape {s}" for p, s in items[:most])
    return text + (f" and {len(items) - most} more" if len(items) > most else "")


def size_list(shapes: Sequence[tuple[int, ...]], files: Sequence[str | Path],
              most: int = 4) -> tuple[str, str]:
    """The sizes of a set of images for a message: ``(sizes, examples)``, the ``most``
    commonest shapes (``[(3, 28, 28), (3, 40, 32) and N more]``) and one file of each
    (:func:`listed_files`); ``shapes[i]`` is the shape of ``files[i]``'s image."""
    counts = Counter(shapes)
    order = sorted(counts, key=lambda s: (-counts[s], s))[:most]  # commonest first
    first: dict[tuple[int, ...], str | Path] = {}
    for shape, file in zip(shapes, files, strict=True):
        first.setdefault(shape, file)
    more = f" and {len(counts) - most} more" if len(counts) > most else ""
    return (f"[{', '.join(str(s) for s in order)}{more}]",
            listed_files([(first[s], s) for s in order], most))


__all__ = ["MixedSizesError", "load_image_folder", "folder_images", "header_colour",
           "read_image", "to_mode", "resize", "to_array", "IMAGE_SUFFIXES", "GREY_MODES",
           "class_folders", "image_files", "is_color", "image_header", "folder_color",
           "listed_files", "size_list"]
