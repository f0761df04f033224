"""Frozen backbone features computed once and cached on disk.

The cache key is the SHA-256 of the input tensor (bytes, shape, dtype) together with
the checksum of the backbone's weights and the model's feature settings (resolution,
taps, pixel group, pooling grid, extra resolutions where there are any), for flat rows
of pixels the image shape they are read as (:func:`input_key`) and, for images the model
shrinks, the version of that resize (:func:`resize_key`), so changed data, weights,
settings, image shape or resize never read stale features. Files are written atomically
(``.tmp`` then rename).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

DEFAULT_CACHE = Path("~/.cache/dmlkit/features")
PROGRESS_SECONDS = 10.0  # a progress line this often while features are computed


def tensor_checksum(x: Tensor, digest: Any = None) -> str:
    """Hex digest of a tensor's values, shape and dtype: SHA-256, or ``digest`` (a fresh
    :mod:`hashlib` object) where given."""
    digest = hashlib.sha256() if digest is None else digest
    digest.update(f"{tuple(x.shape)}|{x.dtype}".encode())
    digest.update(np.ascontiguousarray(x.detach().cpu().numpy()).tobytes())
    return digest.hexdigest()


def features_checksum(features: Tensor) -> str:
    """BLAKE2b (hex) of a feature tensor's shape, dtype and bytes: the integrity check
    stored beside cached features."""
    return tensor_checksum(features, hashlib.blake2b(digest_size=16))


def _read_cached(path: Path, shape: tuple[int, int]) -> tuple[Tensor | None, str]:
    """The features stored in ``path``, or ``None`` and why they cannot be trusted."""
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a damaged cache entry is a miss
        return None, f"are unreadable ({type(err).__name__})"
    if isinstance(stored, Tensor):
        return None, "were written without a checksum (an older dmlkit)"
    features = stored.get("features") if isinstance(stored, dict) else None
    checksum = stored.get("checksum") if isinstance(stored, dict) else None
    if not isinstance(features, Tensor) or not isinstance(checksum, str):
        return None, "are not a feature cache entry"
    if tuple(features.shape) != shape:
        return None, f"have shape {tuple(features.shape)}, not {shape}"
    if features_checksum(features) != checksum:
        return None, "are corrupt (their checksum does not match)"
    if not torch.isfinite(features).all():
        return None, "are corrupt (they hold NaN or infinite values)"
    return features, ""


def backbone_checksum(model: nn.Module) -> str:
    """SHA-256 (hex) of the backbone's state dict and the feature settings of ``model``
    (its extra resolutions, ``scales``, only where it has any: the key of a model without
    them is the one it had before they existed)."""
    settings = (model.resolution, tuple(model.taps), getattr(model, "pixels", 0),
                tuple(getattr(model, "grid_taps", ())), getattr(model, "grid", 1))  # fmt: skip
    scales = tuple(getattr(model, "scales", ()))
    if scales:
        settings = (*settings, scales)
    digest = hashlib.sha256(f"{settings}|v2".encode())
    for key, value in model.backbone.state_dict().items():
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(value.cpu().numpy()).tobytes())
    return digest.hexdigest()


#: version of the antialiased resize of images larger than the model's resolution (1,
#: bilinear without antialiasing, aliased fine patterns: a model with ``antialias``
#: False, a run saved before the setting existed, still resizes so, keyed as ever)
DOWNSAMPLE_VERSION = 2


def resize_key(model: nn.Module, x: Tensor) -> str:
    """The part of the cache key that says how ``model`` resizes images ``x``: empty where
    it enlarges them or keeps their size, or shrinks them without antialiasing (model
    ``antialias`` False): those resizes never changed, so features cached by any dmlkit
    stay valid. Else the version of the antialiased shrink (:data:`DOWNSAMPLE_VERSION`),
    so features of the aliasing resize are never read for it, nor its for that."""
    downsamples = getattr(model, "downsamples", None)
    if getattr(model, "antialias", True) and callable(downsamples) and downsamples(x):
        return f"|downsample-v{DOWNSAMPLE_VERSION}"
    return ""


def input_key(model: nn.Module, x: Tensor) -> str:
    """The part of the cache key that says how ``model`` reads the images ``x`` before
    resizing them: for flat rows ``(n, C H W)`` the channels and ``(H, W)`` it reshapes
    them to (``in_channels`` and ``hw``, from ``image_size``), since the same bytes read
    as other shapes are other images. Empty for ``(n, C, H, W)`` and ``(n, H, W)``
    images, whose shape is in :func:`tensor_checksum`: their cached features stay valid."""
    if x.dim() != 2:
        return ""
    hw = getattr(model, "hw", None)
    hw = None if hw is None else tuple(int(s) for s in hw)
    return f"|flat-{getattr(model, 'in_channels', None)}x{hw}"


def compute_features(model: nn.Module, x: Tensor, batch_size: int = 256,
                     log: Callable[[str], None] | None = None) -> Tensor:  # fmt: skip
    """Backbone features ``(n, feature_dim)`` of images ``x`` (no grad, eval mode), on
    the CPU; each batch of ``x`` goes to the backbone's device. A model with an
    ``image_features`` method (images -> features, e.g. the mean over several
    resolutions) computes them so; else ``backbone_features(prepare(batch))``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    parts, start = [], time.perf_counter()
    last = start
    device = next(model.backbone.parameters()).device
    was_training = model.training
    image_features = getattr(model, "image_features", None)
    if not callable(image_features):
        def image_features(batch: Tensor) -> Tensor:
            return model.backbone_features(model.prepare(batch))  # (b, feature_dim)
    model.eval()
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            batch = x[i : i + batch_size].to(device)  # (b, C, H, W)
            parts.append(image_features(batch).float().cpu())  # (b, feature_dim)
            done, now = min(i + batch_size, x.shape[0]), time.perf_counter()
            if log is not None and done < x.shape[0] and now - last >= PROGRESS_SECONDS:
                log(f"  features {done}/{x.shape[0]} ({now - start:.0f} s)")
                last = now
    model.train(was_training)
    return torch.cat(parts) if parts else torch.empty(0, model.feature_dim)


class CacheWriteError(ValueError):
    """A feature cache folder or file that cannot be written although it is where it
    should be (permission denied, a read-only file system, a full disk): features are then
    used without being stored (:func:`cached_features`). ``folder`` and ``reason`` (the
    operating system's words) name it."""

    def __init__(self, message: str, folder: Path, reason: str) -> None:
        super().__init__(message)
        self.folder, self.reason = folder, reason


def check_cache_dir(cache_dir: Path) -> None:
    """Create the feature cache folder ``cache_dir`` and check that files can be written
    in it.

    Raises
    ------
    ValueError
        When it cannot be created because it or a folder above it is a file (a mistake in
        the setting), naming the folder and the setting to change.
    CacheWriteError
        (a ``ValueError``) when it cannot be created or written in for another reason
        (permissions, a read-only file system, a full disk), naming the folder and reason.
    """
    fix = "set model.cache_dir (or DMLKIT_CACHE) to a folder that can be created and written"
    if cache_dir.exists() and not cache_dir.is_dir():
        raise ValueError(f"the feature cache folder {cache_dir} is a file: {fix}")
    blocker = next((p for p in cache_dir.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ValueError(f"the feature cache folder {cache_dir} cannot be created: {blocker} "
                         f"is a file, not a folder; {fix}")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=cache_dir):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        raise CacheWriteError(f"the feature cache folder {cache_dir} cannot be used "
                              f"({reason}); {fix}", cache_dir, reason) from None


_WARNED: set[str] = set()  # cache folders already said to be unwritable (once a process)


def _write_problem(cache_dir: Path) -> str | None:
    """Why files cannot be written in ``cache_dir`` (the OS's words), ``None`` where they
    can; a folder that is a file, or under one, raises (:func:`check_cache_dir`)."""
    try:
        check_cache_dir(cache_dir)
    except CacheWriteError as err:
        return err.reason
    return None


def _warn_not_stored(folder: Path, reason: str, also: str = "") -> None:
    """Say once per folder that features are used without being stored there."""
    if str(folder) in _WARNED:
        return
    _WARNED.add(str(folder))
    warnings.warn(f"the feature cache folder {folder} cannot be written ({reason}){also}: "
                  "the backbone features are computed and used without being stored; to "
                  "store them, set DMLKIT_CACHE (or model.cache_dir, when training) to a "
                  "folder that can be written", stacklevel=3)


def _cache_folders(model: nn.Module, cache_dir: str | Path | None) -> tuple[Path, Path | None]:
    """The cache folder to use and, where that is not ``DMLKIT_CACHE``'s and the variable
    is set, ``$DMLKIT_CACHE/features``: where features are cached when the first folder
    cannot be written (e.g. the folder a moved or shared run saved)."""
    env = os.environ.get("DMLKIT_CACHE")
    env_dir = Path(env).expanduser() / "features" if env else None
    if cache_dir is None:
        cache_dir = getattr(model, "cache_dir", None)
    if cache_dir is None:
        return env_dir or DEFAULT_CACHE.expanduser(), None
    folder = Path(cache_dir).expanduser()
    return folder, (env_dir if env_dir is not None and env_dir != folder else None)


def _lookup(path: Path, shape: tuple[int, int],
            log: Callable[[str], None] | None) -> tuple[Tensor | None, bool]:  # fmt: skip
    """The features cached in ``path`` (else ``None``), and whether a file is there."""
    if not path.is_file():
        return None, False
    features, problem = _read_cached(path, shape)
    if features is not None:
        if log is not None:
            log(f"backbone features of {shape[0]} items read from {path}")
        return features, True
    message = f"cached features in {path} {problem}; computing them again"
    if log is not None:
        log(message)
    else:  # e.g. a frozen model embedding a large batch: still say so
        warnings.warn(message, stacklevel=3)
    return None, True


def cached_features(model: nn.Module, x: Tensor, cache_dir: str | Path | None = None,
                    log: Callable[[str], None] | None = None,
                    store: bool = True) -> Tensor:  # fmt: skip
    """Features of ``x`` from the cache, else computed and (``store``) stored there.

    Parameters
    ----------
    model : EfficientNetLite0Embedder (anything with ``backbone``, ``prepare``,
        ``backbone_features``, ``resolution``, ``taps``, ``feature_dim``)
    x : Tensor of shape (n, C, H, W)
    cache_dir : path, optional
        Default ``model.cache_dir``, else ``$DMLKIT_CACHE/features``, else
        ``~/.cache/dmlkit/features``.
    store : bool
        Whether features computed on a miss are written to the cache (False: only
        read it, e.g. for a few query images). An entry that is there but damaged is
        written again either way (a damaged file is never read twice).

    Returns
    -------
    Tensor of shape (n, feature_dim), float32.

    A folder that cannot be written (permission denied, a read-only file system, a full
    disk) does not stop the features being used: where ``model.cache_dir`` (or the
    ``cache_dir`` given) is such a folder and ``DMLKIT_CACHE`` is set, they are looked up
    and stored in ``$DMLKIT_CACHE/features`` instead; else they are computed and used
    without being stored, with a warning (once per folder) naming the folder, the reason
    and how to choose another.

    Raises
    ------
    ValueError
        When a file is to be written and the cache folder is a file or under one, or
        something other than a file stands where the entry goes, naming it.
    """
    folder, fallback = _cache_folders(model, cache_dir)
    key = hashlib.sha256((tensor_checksum(x) + backbone_checksum(model)
                          + input_key(model, x) + resize_key(model, x)).encode()).hexdigest()
    name, shape = f"{key[:32]}.pt", (x.shape[0], model.feature_dim)
    features, damaged = _lookup(folder / name, shape, log)
    if features is not None:
        return features
    if not (store or damaged):
        return compute_features(model, x, log=log)
    reason, also = _write_problem(folder), ""  # before the slow computation, not after it
    if reason is not None and fallback is not None:  # e.g. a moved run's folder
        features, _ = _lookup(fallback / name, shape, log)
        if features is not None:
            return features
        other = _write_problem(fallback)
        if other is None:
            folder, reason = fallback, None
        else:
            also = f", nor can DMLKIT_CACHE's {fallback} ({other})"
    if reason is not None:
        _warn_not_stored(folder, reason, also)
        return compute_features(model, x, log=log)
    path = folder / name
    check_entry_path(path)
    start = time.perf_counter()
    features = compute_features(model, x, log=log)
    try:
        write_entry(path, features)
    except CacheWriteError as err:  # e.g. the disk filled up while writing
        _warn_not_stored(folder, err.reason)
        return features
    if log is not None:
        log(f"backbone features of {x.shape[0]} items computed in "
            f"{time.perf_counter() - start:.1f} s, cached in {path}")  # fmt: skip
    return features


_CACHE_FIX = "remove it, or set model.cache_dir (or DMLKIT_CACHE) to another folder"


def check_entry_path(path: Path) -> None:
    """Refuse to write a cache entry at ``path`` where something other than a file (a
    folder) stands there, naming it (before the features are computed)."""
    if path.exists() and not path.is_file():
        raise ValueError(f"the feature cache file {path} cannot be written: a folder (or "
                         f"other non-file) is in its place; {_CACHE_FIX}")


def write_entry(path: Path, features: Tensor) -> None:
    """Write ``features`` and their checksum to ``path`` atomically (a temporary file
    renamed over it); on failure the temporary file is removed and a
    :class:`CacheWriteError` (a ``ValueError``) names ``path`` and the reason."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        torch.save({"features": features, "checksum": features_checksum(features)}, tmp)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        reason = err.strerror or str(err)
        raise CacheWriteError(f"the feature cache file {path} cannot be written ({reason}); "
                              f"{_CACHE_FIX}", path.parent, reason) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


__all__ = [
    "DOWNSAMPLE_VERSION",
    "resize_key",
    "input_key",
    "tensor_checksum",
    "backbone_checksum",
    "features_checksum",
    "compute_features",
    "cached_features",
    "check_cache_dir",
    "CacheWriteError",
    "check_entry_path",
    "write_entry",
]
