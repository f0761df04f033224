"""File modes for atomic writes: ``tempfile`` creates ``0600`` files and ``0700`` folders,
which would keep a saved model or index from the other users the umask allows."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_mode(path: str | Path) -> None:
    """Give a temporary file or folder the mode a plain ``open`` / ``mkdir`` would have."""
    path = Path(path)
    base = 0o777 if path.is_dir() else 0o666
    os.chmod(path, base & ~_umask())


__all__ = ["publish_mode"]


def file_checksum(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
