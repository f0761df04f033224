"""What data a run trains on, as checksums kept in its checkpoint, so that a resume on
changed data (rows edited, added or deleted; a held-out part drawn again from a changed
file) is refused instead of silently training on something else.

A fingerprint is a dict ``{part: sha256}`` over the arrays a run loaded (its training
items, labels or tuples, its held-out split), each part named as the refusal names it.
Checkpoints written before fingerprints existed have none and resume as before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: the checkpoint entry that holds the fingerprint
CHECKPOINT_KEY = "data"


def _update(h: Any, value: Any) -> None:
    """Feed one array, a sequence of strings, or ``None`` into the hash ``h``."""
    if value is None:
        h.update(b"none;")
    elif isinstance(value, (Tensor, np.ndarray)):
        t = torch.as_tensor(value).detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        h.update(f"seq{len(value)};".encode())
        for item in value:
            if isinstance(item, str):
                h.update(item.encode("utf-8", "surrogatepass") + b"\0")
            else:
                _update(h, item)
    else:
        h.update(repr(value).encode() + b";")


def data_fingerprint(parts: dict[str, Any]) -> dict[str, str]:
    """``{name: sha256 hex}`` of each part: an array (tensor or numpy: dtype, shape and
    bytes), a sequence of strings (file paths) or of arrays, or ``None``."""
    out = {}
    for name, value in parts.items():
        h = hashlib.sha256()
        _update(h, value)
        out[name] = h.hexdigest()
    return out


def data_changes(saved: dict[str, str], current: dict[str, str]) -> list[str]:
    """The parts whose checksums differ (or that only one of the two has)."""
    return [name for name in dict.fromkeys([*saved, *current])
            if saved.get(name) != current.get(name)]


def check_same_data(saved: Any, current: dict[str, str] | None, where: str | Path) -> None:
    """Refuse to resume the run at ``where`` when its checkpoint's fingerprint ``saved``
    differs from ``current`` (the data as loaded now). A checkpoint without one (older
    runs), or no current fingerprint, passes."""
    if not isinstance(saved, dict) or not saved or current is None:
        return
    changed = data_changes(saved, current)
    if changed:
        # the verb agrees with the parts: "the held-out split differs", "the training
        # items differ", "the training items, the held-out split differ"
        one = len(changed) == 1 and not changed[0].endswith("s")
        raise ValueError(
            f"cannot resume {where}: the data changed since the run started: "
            f"{', '.join(changed)} {'differs' if one else 'differ'} from what its "
            "checkpoint was trained on (a file "
            "edited, rows added or deleted, or another file at the same path); restore the "
            "data it started with to resume, or train a new run (another --out)")


def check_resume_data(out_dir: Path, current: dict[str, str]) -> None:
    """:func:`check_same_data` against the fingerprint in ``out_dir``'s checkpoint (read
    without loading its tensors), before a resumed run writes anything."""
    from dmlkit.training.trainer import CHECKPOINT

    path = Path(out_dir) / CHECKPOINT
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # (unreadable: resuming loads it again and says what is wrong)
        return
    saved = state.get(CHECKPOINT_KEY) if isinstance(state, dict) else None
    check_same_data(saved, current, out_dir)


__all__ = ["CHECKPOINT_KEY", "check_resume_data", "check_same_data", "data_changes",
           "data_fingerprint"]
