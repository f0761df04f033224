"""Versioned on-disk format of indexes: a directory, written atomically, checked on load.

Layout of an index directory::

    manifest.json    {"format": "dmlkit-index", "version": 1, "kind", "dim", "metric",
                      "count", "params": {...}, "files": {name: {"sha256", "bytes"}}}
    ids.npy          (count,) int64
    labels.npy       (count,) int64, -1 = no label
    metadata.json    {"paths": [...], "payloads": [...]}
    vectors.npy      (count, dim) float32         (exact indexes)
    faiss.index      faiss.write_index output     (faiss indexes)

Arrays are read with ``numpy.load(allow_pickle=False)`` and nothing is ever unpickled.
Every file's size and SHA-256 are checked against the manifest before it is parsed, so a
corrupt, truncated, swapped or foreign file is refused with :class:`IndexFormatError`.
:func:`read_consistent` reads each file once into memory, checks those bytes and parses
them, so a load that overlaps a save of the same directory gets one save whole (the old
or the new, retrying while the save swaps them), never the files of two.
Writes go to a temporary sibling directory that is renamed into place, one save of a
directory at a time (from any thread or process: :mod:`dmlkit.index.swap`); an existing
``path`` is replaced only when it is empty or holds an earlier save of the same format
(and, for saved objects other than indexes, of the same kind: :func:`check_replaceable`)
with no entry its manifest does not list, never another directory's files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from dmlkit._files import file_checksum, publish_mode
from dmlkit.index.checks import json_text
from dmlkit.index.swap import (
    recover_set_aside,
    remove_stale_temps,
    save_lock,
    save_running,
    swap_in,
)

FORMAT = "dmlkit-index"
VERSION = 1
MANIFEST = "manifest.json"


class IndexFormatError(ValueError):
    """An index directory is missing, corrupt, truncated or does not match its manifest."""


def write_index_dir(
    path: str | Path,
    header: dict[str, Any],
    arrays: dict[str, np.ndarray],
    json_files: dict[str, Any],
    writers: dict[str, Callable[[Path], None]] | None = None,
    *,
    format_name: str = FORMAT,
    version: int = VERSION,
) -> Path:
    """Write an index directory atomically.

    ``header`` holds ``kind``, ``dim``, ``metric``, ``count`` and ``params``; ``arrays``
    become ``NAME.npy``; ``json_files`` become JSON files; ``writers`` write other files
    (given their destination path). ``format_name`` and ``version`` label the manifest,
    so other saved objects (the application kits) reuse this format under their own name.
    """
    path = Path(path)
    # an index may be rebuilt as another kind of index; any other saved object (a kit)
    # is one estimator, replaced only by another save of the same kind
    kind = None if format_name == FORMAT else header.get("kind")
    # JSON checked before anything is created; an index's strict (no NaN), as it always
    # was for its payloads (a kit's state keeps the NaN its parameters may hold)
    loose = format_name != FORMAT
    for key, value in header.items():
        json_text(value, key, allow_nan=loose)
    texts = {name: json_text(obj, name, allow_nan=loose) for name, obj in json_files.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with save_lock(path):  # one save of path at a time, from any thread or process
        _check_replaceable(path, format_name, kind)  # before any work: nothing else deleted
        remove_stale_temps(path, locked=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent,
                                    prefix=f".{path.name}.tmp-{os.getpid()}-"))
        try:
            publish_mode(tmp)
            _write_files(tmp, arrays, texts, writers,
                         {"format": format_name, "version": version, **header})
            _check_replaceable(path, format_name, kind)
            swap_in(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return path


def _write_files(tmp: Path, arrays: dict[str, np.ndarray], json_files: dict[str, str],
                 writers: dict[str, Callable[[Path], None]] | None,
                 header: dict[str, Any]) -> None:
    """Write the files of a save into ``tmp`` (``json_files``: their JSON text), then its
    manifest, all flushed to disk."""
    names: list[str] = []
    for name, arr in arrays.items():
        np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
        names.append(f"{name}.npy")
    for name, text in json_files.items():
        (tmp / name).write_text(text)
        names.append(name)
    for name, write in (writers or {}).items():
        write(tmp / name)
        names.append(name)
    files = {n: {"sha256": file_checksum(tmp / n), "bytes": (tmp / n).stat().st_size}
             for n in names}
    (tmp / MANIFEST).write_text(json_text({**header, "files": files}, MANIFEST,
                                          allow_nan=True, indent=2))  # (checked before)
    for n in [*names, MANIFEST]:  # flush file contents before the rename publishes them
        fd = os.open(tmp / n, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _saved_what(format_name: str) -> str:
    """What a directory of ``format_name`` holds, for messages: ``"an index"`` or ``"a
    saved model"`` (a kit: a fitted recommender, detector, verifier, ...)."""
    return "an index" if format_name == FORMAT else "a saved model"


def with_article(word: str) -> str:
    """``word`` after its indefinite article, for messages: ``"an Identifier"``,
    ``"a Verifier"``."""
    return f"{'an' if str(word)[:1].lower() in 'aeiou' else 'a'} {word}"


def check_replaceable(path: str | Path, format_name: str = FORMAT,
                      kind: str | None = None) -> None:
    """Refuse (``FileExistsError``) to replace ``path`` unless it is missing, an empty
    directory, or a directory saved in ``format_name`` (an earlier save of the same
    format; with ``kind``, also of that manifest ``kind``, so that a fitted recommender
    never replaces a saved anomaly detector) holding only the files its manifest lists:
    anything else there (an embedding store, a
    run, other files, another kind of model) would be deleted.

    A save of ``path`` running meanwhile is waited for (:func:`save_lock`), so that the
    directory it swaps in is never judged half-way.
    """
    path = Path(path)
    if not path.exists():
        return
    with save_lock(path):
        _check_replaceable(path, format_name, kind)


def _check_replaceable(path: Path, format_name: str, kind: str | None) -> None:
    """:func:`check_replaceable` of a caller holding the save lock of ``path``."""
    if not path.exists():
        return
    what = _saved_what(format_name)
    if not path.is_dir():
        raise FileExistsError(
            f"{path} exists and is not a directory; {what} is written as a directory: "
            "choose another path or remove it first")
    if not any(path.iterdir()):
        return
    mpath = path / MANIFEST
    found = manifest = None
    if mpath.is_file():
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            manifest = None
        found = manifest.get("format") if isinstance(manifest, dict) else None
        if found == format_name:
            held = manifest.get("kind")
            if kind is None or held == kind:
                _check_only_saved_files(path, manifest)
                return
            raise FileExistsError(
                f"{path} holds a saved {held}, not {with_article(kind)}; saving there would "
                "replace it: choose another path or remove it first")
    seen = (f"its {MANIFEST} says format {found!r}" if mpath.is_file()
            else f"it holds files but no {MANIFEST}")
    raise FileExistsError(
        f"{path} exists and does not hold {what} ({seen}, not {format_name}: an "
        "embedding store, a run or other files); writing there would delete its files: "
        "choose another path or remove it first")


#: extra entries a refusal names, at most
_NAMED_EXTRAS = 3


def _check_only_saved_files(path: Path, manifest: dict[str, Any]) -> None:
    """Refuse to replace ``path`` when it holds entries its manifest does not list (a
    save writes only those files and its manifest inside the directory; its temporary,
    set-aside and lock files are siblings), as a replacement would delete them."""
    listed = manifest.get("files")
    listed = set(listed) if isinstance(listed, dict) else set()
    extra = sorted(e.name + ("/" if e.is_dir() else "") for e in path.iterdir()
                   if e.name != MANIFEST and e.name not in listed)
    if extra:
        shown = ", ".join(extra[:_NAMED_EXTRAS]) + (
            f" and {len(extra) - _NAMED_EXTRAS} more" if len(extra) > _NAMED_EXTRAS else "")
        raise FileExistsError(
            f"{path} holds files that are not part of its saved index ({shown}); replacing "
            "it would delete them: move them out or choose another --out")


def read_manifest(
    path: str | Path, *, format_name: str = FORMAT, version: int = VERSION,
    blobs: dict[str, bytearray] | None = None, files: dict[str, bytearray] | None = None,
) -> dict[str, Any]:
    """The checked manifest of an index directory (files are verified too).

    With ``blobs``, each listed file is read once into memory, checked, and kept there
    under its name (parse those bytes with :func:`load_array` / :func:`load_json`, so
    that what is parsed is what was checked). A missing ``path`` whose previous save a
    killed writer left set aside is put back first (:func:`recover_set_aside`).
    ``files`` (with ``blobs``): the directory's files already in memory, by name (an
    index saved inside a kit), read instead of ``path``, which only names them."""
    path = Path(path)
    mpath = path / MANIFEST
    aside = None if files is not None else recover_set_aside(path)
    try:
        text = (files.get(MANIFEST) if files is not None
                else mpath.read_bytes() if mpath.is_file() else None)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        text = None  # (moved away between the check and the read)
    if text is None:
        why = f"no {MANIFEST}" + ("" if path.is_dir() else ": it is a file" if path.exists()
                                  else ": it does not exist")
        if aside is not None and aside != path:
            why += (f"; its previous save is set aside in {aside} by an interrupted or "
                    f"running save: if no save is running, move it back to {path}")
        raise IndexFormatError(f"{path} is not {_saved_what(format_name)} directory ({why})")
    try:
        manifest = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IndexFormatError(f"{mpath} is not valid JSON: {err}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != format_name:
        raise IndexFormatError(f"{mpath} is not a {format_name} manifest")
    if manifest.get("version") != version:
        raise IndexFormatError(
            f"{path} has format version {manifest.get('version')!r}; this dmlkit reads "
            f"version {version}"
        )
    for key, kind in (("kind", str), ("dim", int), ("metric", str), ("count", int),
                      ("files", dict)):
        if not isinstance(manifest.get(key), kind):
            raise IndexFormatError(f"{mpath}: field {key!r} missing or not a {kind.__name__}")
    for name, info in manifest["files"].items():
        if "/" in name or "\\" in name or name.startswith("."):
            raise IndexFormatError(f"{mpath}: bad file name {name!r}")
        if not isinstance(info, dict):
            raise IndexFormatError(f"{mpath}: the entry of {name!r} is not an object")
        fpath = path / name
        data = (files.get(name) if files is not None
                else _read_file(fpath) if blobs is not None else None)
        if (data is None) if blobs is not None else not fpath.is_file():
            raise IndexFormatError(f"{path}: missing file {name}")
        size = len(data) if data is not None else fpath.stat().st_size
        if size != info.get("bytes"):
            raise IndexFormatError(
                f"{fpath} has {size} bytes, the manifest says {info.get('bytes')} (truncated?)")
        digest = (hashlib.sha256(data).hexdigest() if data is not None
                  else file_checksum(fpath))
        if digest != info.get("sha256"):
            raise IndexFormatError(f"{fpath} does not match its SHA-256 (corrupt or replaced)")
        if blobs is not None and data is not None:
            blobs[name] = data
    return manifest


def _read_file(fpath: Path) -> bytearray | None:
    """The bytes of a plain file (writable, so arrays parsed from them need no copy), or
    ``None`` when it is missing or not a file."""
    if not fpath.is_file():  # (missing, or a fifo or device: never opened)
        return None
    try:
        with open(fpath, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            data = bytearray(size)
            got = fh.readinto(data)
            rest = fh.read()  # (grown since the stat: the size check refuses it)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    return data[:got] + rest if got != size or rest else data


T = TypeVar("T")

#: how long a load waits for a save that is swapping the directory it reads
LOAD_WAIT_S = 2.0


def read_consistent(
    path: str | Path, parse: Callable[[dict[str, Any], dict[str, bytearray]], T], *,
    format_name: str = FORMAT, version: int = VERSION, wait_s: float = LOAD_WAIT_S,
) -> T:
    """``parse(manifest, blobs)`` of one save of ``path``: every file read once, checked
    against the manifest read with it (:func:`read_manifest` with ``blobs``).

    A read that fails while the directory changes under it (a save is swapping it in) is
    retried for up to ``wait_s`` seconds; a failure of an unchanging directory (missing,
    corrupt, foreign) is raised at once, as :class:`IndexFormatError`."""
    path = Path(path)
    deadline = time.monotonic() + wait_s
    delay = 0.005
    while True:
        before = _dir_state(path)
        try:
            blobs: dict[str, bytearray] = {}
            manifest = read_manifest(path, format_name=format_name, version=version,
                                     blobs=blobs)
            return parse(manifest, blobs)
        except (IndexFormatError, FileNotFoundError, NotADirectoryError) as err:
            changing = _dir_state(path) != before or save_running(path)
            if not changing or time.monotonic() + delay > deadline:
                if isinstance(err, IndexFormatError):
                    raise
                raise IndexFormatError(f"{path}: {err.strerror or err}: "
                                       f"{getattr(err, 'filename', '')}") from None
        time.sleep(delay)
        delay = min(2 * delay, 0.1)


def _dir_state(path: Path) -> tuple[Any, ...]:
    """What tells one save of ``path`` from the next: its inode and its manifest's."""
    out: list[Any] = []
    for p in (path, path / MANIFEST):
        try:
            st = p.stat()
        except OSError:
            out.append(None)
            continue
        out.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


def require_files(path: Path, manifest: dict[str, Any], names: list[str]) -> None:
    """Refuse an index whose manifest does not list each of ``names``: only listed files
    are checked against their SHA-256, so an unlisted one would be read unchecked."""
    missing = [name for name in names if name not in manifest["files"]]
    if missing:
        raise IndexFormatError(
            f"{path}: the manifest lists no {', '.join(missing)}; every file an index reads "
            "must be listed with its SHA-256 (the manifest was edited or is incomplete): "
            "rebuild the index")


def load_array(path: Path, name: str, shape: tuple[int, ...], dtype: np.dtype, *,
               blobs: dict[str, bytearray] | None = None) -> np.ndarray:
    """Load ``NAME.npy`` without pickle and check its shape and dtype: from ``blobs``
    (the checked bytes :func:`read_manifest` kept) when given, else from the file."""
    fpath = path / f"{name}.npy"
    try:
        arr = (np.load(fpath, allow_pickle=False) if blobs is None
               else _parse_npy(blobs[f"{name}.npy"]))
    except KeyError:
        raise IndexFormatError(f"{path}: missing file {name}.npy") from None
    except (ValueError, OSError, EOFError) as err:
        raise IndexFormatError(f"{fpath} is not a readable .npy array: {err}") from None
    if arr.shape != shape or arr.dtype != dtype:
        raise IndexFormatError(
            f"{fpath} holds {arr.dtype} {arr.shape}, expected {np.dtype(dtype)} {shape}")
    return arr


#: bytes of a ``.npy`` file's start read for its header (magic, version, length, dict)
_NPY_HEADER_MAX = 1 << 16


def _parse_npy(data: bytearray) -> np.ndarray:
    """A ``.npy`` array over ``data`` itself (no copy) when it is a plain C-order one."""
    fh = io.BytesIO(bytes(memoryview(data)[:_NPY_HEADER_MAX]))  # (the header: no copy of all)
    fmt = np.lib.format
    try:
        major, _ = fmt.read_magic(fh)
        read_header = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
    except ValueError:  # (a header longer than the start read, or none: numpy judges)
        return np.load(io.BytesIO(data), allow_pickle=False)
    count = int(np.prod(shape, dtype=np.int64))
    if fortran or dtype.hasobject or len(data) - fh.tell() != count * dtype.itemsize:
        return np.load(io.BytesIO(data), allow_pickle=False)
    return np.frombuffer(data, dtype=dtype, count=count, offset=fh.tell()).reshape(shape)


def load_json(path: Path, name: str, *, blobs: dict[str, bytearray] | None = None) -> Any:
    """Parse JSON file ``name``: from ``blobs`` when given (see :func:`load_array`)."""
    try:
        return json.loads((path / name).read_text() if blobs is None else blobs[name])
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        raise IndexFormatError(f"{path / name} is not valid JSON: {err}") from None


__all__ = [
    "FORMAT",
    "VERSION",
    "MANIFEST",
    "IndexFormatError",
    "write_index_dir",
    "check_replaceable",
    "read_consistent",
    "read_manifest",
    "recover_set_aside",
    "remove_stale_temps",
    "load_array",
    "load_json",
    "require_files",
    "with_article",
]


def restore_state(index: Any, path: Path, manifest: dict[str, Any],
                  blobs: dict[str, bytearray], on_disk: bool = True) -> None:
    """``index._restore``: with the checked bytes ``blobs`` where it takes them; a
    subclass written before that argument (``_restore(self, path, manifest)``) gets
    ``path`` and ``manifest`` and reads its files itself (``on_disk`` False: the files
    were in memory, so it reads them from a temporary copy)."""
    import inspect
    import tempfile

    try:
        params = inspect.signature(index._restore).parameters
    except (TypeError, ValueError):
        params = {}
    takes_blobs = "blobs" in params or len(params) >= 3 or any(
        p.kind is inspect.Parameter.VAR_POSITIONAL for p in params.values())
    if takes_blobs:
        index._restore(path, manifest, blobs)
    elif on_disk:
        index._restore(path, manifest)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in blobs.items():
                (Path(tmp) / name).write_bytes(data)
            index._restore(Path(tmp), manifest)
