"""A folder of images with one sub-folder per class (``root/<class>/<image>``), via Pillow."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from dmlkit._checks import first_few, is_int
from dmlkit.data.checks import check_inputs
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


def _grey_top(image) -> float | None:  # noqa: ANN001 - PIL type
    """The value that is white in a 16-bit grey image (``65535``: the file declares its
    bit depth, or Pillow decodes it on a 16-bit scale); ``None`` for the grey images whose
    scale no header gives: float (``"F"``) and 32-bit integer (``"I"``) images
    (:func:`is_raw_grey`)."""
    if image.mode.startswith("I;16") or (
            image.mode == "I" and image.format in SIXTEEN_BIT_I_FORMATS):
        return 65535.0
    return None


def is_raw_grey(image) -> bool:  # noqa: ANN001 - PIL type
    """Whether a PIL image is a float (``"F"``) or 32-bit integer (``"I"``, not of a
    16-bit format) grey image: read as stored values (:func:`read_image`), not as
    8-bit pixels."""
    return image.mode == "F" or (image.mode == "I" and _grey_top(image) is None)


def integer_scale(lo: float, hi: float, source: str | Path) -> float:
    """The value that becomes 1.0 in 32-bit integer grey images whose pixels, all of
    them read together (a folder), range over ``[lo, hi]``: ``255`` when every value
    fits 8 bits (0..255), ``65535`` when it fits 16 bits; values beyond (or below 0) are
    a ``ValueError`` naming ``source``: no bit depth says what their white is."""
    if lo >= 0 and hi <= 255:
        return 255.0
    if lo >= 0 and hi <= 65535:
        return 65535.0
    raise ValueError(
        f"{source}: 32-bit integer (mode I) images hold values in [{lo:g}, {hi:g}], beyond "
        "16-bit pixels (0..65535); integer images are scaled by their bit depth (all of "
        "a folder's alike: 0..255 as 8-bit, 0..65535 as 16-bit): save them as 8- or "
        "16-bit images, or as float (mode F) images, whose values are kept as stored")


def to_mode(image, color: Color):  # noqa: ANN001, ANN201 - PIL types
    """Convert a PIL image to 8-bit grayscale (``"L"``) or ``"RGB"``; ``"auto"``: ``"RGB"``
    for a colour image (:func:`is_color`), else ``"L"``.

    16-bit grey images are scaled from 0..65535; 32-bit integer ones by the bit depth
    their values fit (:func:`integer_scale`); float ones are taken as values in
    ``[0, 1]`` (clipped). :func:`read_image` keeps float images' values instead, and
    scales 32-bit ones without rounding them to 8 bits. An alpha channel (RGBA, LA,
    transparent palettes) is dropped: transparent pixels keep the colour stored under
    them, as most image loaders of the field read them.
    """
    if color not in ("auto", "grayscale", "rgb"):
        raise ValueError(f"color must be 'auto', 'grayscale' or 'rgb', got {color!r}")
    if color == "auto":
        color = "rgb" if is_color(image) else "grayscale"
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit grey: Pillow's
        # convert("L") clips to 255 instead of scaling, so rescale to 8 bits first
        a = np.asarray(image, dtype=np.float64)
        top = _grey_top(image)
        if top is None:
            top = 1.0 if image.mode == "F" else integer_scale(
                float(a.min()) if a.size else 0.0, float(a.max()) if a.size else 0.0,
                getattr(image, "filename", "") or "image")
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
    integer_top: float | None = None,
) -> np.ndarray:
    """One image file as a float32 ``(C, H, W)`` array (``color="auto"``: ``C`` is 3 for
    a colour image, 1 for a grey one).

    Integer images are scaled to ``[0, 1]`` by their bit depth: 8-bit by ``1/255``,
    16-bit by ``1/65535``, 32-bit (``"I"``) ones by ``1 / integer_top`` (the scale of the
    set of images read together, :func:`integer_scale`), else by the depth this image's
    values fit. Float (``"F"``) images keep their stored values.

    A file Pillow cannot decode (corrupt, truncated, not an image) is a ``ValueError``
    naming it.
    """
    a, span = _decode(path, color, image_size)
    if span is None:
        return a
    return a / np.float32(integer_top if integer_top is not None else integer_scale(*span, path))


def _decode(
    path: str | Path, color: Color, image_size: int | tuple[int, int] | None,
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """``(array, span)``: an image file as float32 ``(C, H, W)``; ``span`` is ``None``
    where the array is final, else the ``(min, max)`` pixel of a 32-bit integer grey image
    whose array holds its stored values, for the caller to scale (:func:`integer_scale`)
    by the span of every image read together."""
    image = _pillow()
    try:
        with image.open(path) as img:
            if is_raw_grey(img):
                return _raw_grey(img, color, image_size)
            img = to_mode(img, color)
            if image_size is not None:
                img = resize(img, image_size)
            return to_array(img), None
    except image.DecompressionBombError as err:
        raise too_large(path, err) from None
    except (OSError, SyntaxError) as err:  # PIL.UnidentifiedImageError is an OSError
        raise ValueError(
            f"cannot read image {path} ({err}); the file is corrupt or not an image: "
            "replace or remove it"
        ) from None


def _raw_grey(img, color: Color, image_size: int | tuple[int, int] | None,  # noqa: ANN001
              ) -> tuple[np.ndarray, tuple[float, float] | None]:
    """A float or 32-bit integer grey image (:func:`is_raw_grey`) as its stored values,
    float32 ``(C, H, W)`` (``C`` 3 for ``color="rgb"``), with the ``(min, max)`` of a
    32-bit integer one (``None`` for a float one)."""
    if color not in ("auto", "grayscale", "rgb"):
        raise ValueError(f"color must be 'auto', 'grayscale' or 'rgb', got {color!r}")
    span = None
    if img.mode == "I":
        lo, hi = img.getextrema()
        span = (float(lo), float(hi))
    img = img.convert("F")  # (exact for 32-bit values up to 2**24)
    if image_size is not None:
        img = resize(img, image_size)
    a = np.asarray(img, dtype=np.float32)[None]  # (1, H, W)
    return (np.repeat(a, 3, axis=0) if color == "rgb" else a), span


def folder_integer_top(files: Sequence[tuple[int, Path]], others: Sequence[Path],
                       root: str | Path) -> float | None:
    """The one scale (:func:`integer_scale`) of the 32-bit integer grey images among an
    image folder's ``files`` and ``others`` (listed, not decoded) together; ``None`` when
    it holds none. Only those images are decoded here; the others' headers are read."""
    spans = [span for span in map(integer_span, [f for _, f in files] + list(others))
             if span is not None]
    if not spans:
        return None
    return integer_scale(min(lo for lo, _ in spans), max(hi for _, hi in spans), root)


def integer_span(file: str | Path) -> tuple[float, float] | None:
    """The ``(min, max)`` pixel of a 32-bit integer grey image file, ``None`` for any
    other image or a file that cannot be read (one that is listed, not decoded)."""
    image = _pillow()
    try:
        with image.open(file) as img:
            if img.mode == "I" and _grey_top(img) is None:
                lo, hi = img.getextrema()
                return float(lo), float(hi)
    except (OSError, SyntaxError, ValueError, image.DecompressionBombError):
        return None
    return None


#: folders that archive tools add beside the content, never a class
NOT_CLASS_FOLDERS = frozenset({"__MACOSX"})


def class_folders(root: Path) -> list[Path]:
    """The class sub-folders of ``root``, sorted; hidden ones (``.git``) and archive
    tools' folders (``__MACOSX``) skipped."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and p.name not in NOT_CLASS_FOLDERS)


def image_files(class_dir: Path) -> list[Path]:
    """The image files under one class folder, sorted; hidden files and folders skipped,
    and entries that are no files (a folder named ``x.png``). Linked sub-folders are
    followed, each folder once (a link back to a folder already listed is not), except
    links into the rest of the dataset (another class, or the dataset folder or one above
    it), whose images would be listed under this class too."""
    found: list[Path] = []
    top = os.path.realpath(class_dir)
    root = os.path.realpath(Path(class_dir).parent)
    seen = {top}
    for folder, dirs, names in os.walk(class_dir, followlinks=True):
        keep = []
        for name in sorted(dirs):
            real = os.path.realpath(os.path.join(folder, name))
            other_class = _inside(real, root) and not _inside(real, top)
            if not (name.startswith(".") or real in seen or other_class
                    or _inside(root, real)):
                seen.add(real)
                keep.append(name)
        dirs[:] = keep  # (os.walk descends into these only)
        found.extend(Path(folder) / name for name in names
                     if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES
                     and (Path(folder) / name).is_file())
    return sorted(found)


def _inside(path: str, folder: str) -> bool:
    """Whether real path ``path`` is ``folder`` or lies under it."""
    return os.path.commonpath([path, folder]) == folder


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
    """Every image under ``root/<class_name>/`` as ``(n, C, H, W)`` float32, checked as
    every labelled input is (:func:`~dmlkit.data.checks.check_inputs`).

    Class ids follow the sorted sub-folder names (``class_names`` keeps them); hidden
    folders and files (``.git``, ``.ipynb_checkpoints``) are skipped, linked sub-folders
    followed (:func:`image_files`); a class folder without images is a ``ValueError``
    (:func:`folder_images`). Without ``image_size`` all images must share one size.

    Pixel values follow one rule, the same for every image of the folder and never
    depending on an image's other pixels: integer images are scaled to ``[0, 1]`` by
    their type's range (8-bit by ``1/255``, 16-bit by ``1/65535``); 32-bit integer grey
    images (Pillow mode ``"I"``, e.g. 32-bit TIFF), whose type does not say their white,
    by ``1/255`` when every value of all such images of the folder fits 0..255, else by
    ``1/65535`` when all fit 0..65535; values beyond (or negative) are a ``ValueError``
    naming the folder. Float grey images (mode ``"F"``) keep their stored values.

    ``color``: ``"auto"`` (default) reads 3 channels (RGB) when any image of the folder
    is colour (its Pillow mode is not a grey one, :func:`is_color`; grey images then
    repeat their grey in R, G and B), else 1 channel; ``"grayscale"`` or ``"rgb"``
    force 1 or 3 channels.

    ``keep_classes``: class ids whose images are read; the other classes' images are
    listed, not decoded (with ``color="auto"`` their headers still count, and so do
    the values of their 32-bit integer images, so the items read are the whole folder's
    items of those classes, with the same values, ids, class names and paths; a header
    that cannot be read counts as grey). An id that is not a class of the folder, or
    classes without images, are a ``ValueError``; a non-integer (a name, ``1.0``,
    ``True``) a ``TypeError``.
    """
    return check_inputs(read_image_folder(root, image_size, color, keep_classes), str(root))


def read_image_folder(
    root: str | Path,
    image_size: int | tuple[int, int] | None = None,
    color: Color = "auto",
    keep_classes: Collection[int] | None = None,
) -> ArrayDataset:
    """:func:`load_image_folder` without its input checks
    (:func:`~dmlkit.data.load.load_dataset` checks what every source gives once)."""
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
    top = folder_integer_top(files, others, root)  # (32-bit images: one scale)
    arrays = [read_image(file, color, image_size, top) for _, file in files]
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


__all__ = ["MixedSizesError", "load_image_folder", "read_image_folder", "folder_images",
           "folder_integer_top", "header_colour", "integer_scale", "integer_span", "is_raw_grey",
           "read_image", "to_mode", "resize", "to_array", "IMAGE_SUFFIXES", "GREY_MODES",
           "class_folders", "image_files", "is_color", "image_header", "folder_color",
           "listed_files", "size_list"]
