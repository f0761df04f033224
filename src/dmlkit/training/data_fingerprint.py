"""What data a run trains on, as checksums kept in its checkpoint, so that a resume on
changed data (rows edited, added or deleted; a held-out part drawn again from a changed
file) is refused instead of silently training on something else.

A fingerprint is a dict ``{part: sha256}`` over the arrays a run loaded (its training
items, labels or tuples, its held-out split), each part named as the refusal names it.
Checkpoints written before fingerprints existed have none and resume as before.

Hashing reads all the data (seconds for gigabytes), so a run hashes only where a
fingerprint is used: a :class:`LazyFingerprint` is computed at the first checkpoint a
new run saves (by the one process that saves it), and on a resume only when the
checkpoint holds a fingerprint to compare with, by the main process of a multi-process
run, which tells the others its verdict.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
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


class LazyFingerprint:
    """The :func:`data_fingerprint` of ``parts``, computed when first called and kept
    (``parts`` are let go then). Holds references to the arrays until that call: they
    must not be changed in place meanwhile."""

    def __init__(self, parts: dict[str, Any]) -> None:
        self._parts: dict[str, Any] | None = parts
        self._value: dict[str, str] | None = None

    def __call__(self) -> dict[str, str]:
        if self._value is None:
            self._value = data_fingerprint(self._parts or {})
            self._parts = None
        return self._value


#: a fingerprint, or a function that computes it (a :class:`LazyFingerprint`)
Fingerprint = dict[str, str] | Callable[[], dict[str, str]]


def fingerprint_value(fingerprint: Fingerprint | None) -> dict[str, str] | None:
    """The fingerprint itself: ``fingerprint`` called when it is a function."""
    return fingerprint() if callable(fingerprint) else fingerprint


#: parts added after runs were checkpointed without them: compared only where the
#: checkpoint has them (those runs resume as they did)
LATER_PARTS = frozenset({"the image files"})


def data_changes(saved: dict[str, str], current: dict[str, str]) -> list[str]:
    """The parts whose checksums differ (or that only one of the two has, but for a
    :data:`LATER_PARTS` part that only ``current`` has)."""
    return [name for name in dict.fromkeys([*saved, *current])
            if saved.get(name) != current.get(name)
            and not (name in LATER_PARTS and name not in saved)]


def parts_differ(changed: list[str]) -> str:
    """The changed parts with a verb that agrees: "the held-out split differs", "the
    training items differ", "the training items, the held-out split differ"."""
    one = len(changed) == 1 and not changed[0].endswith("s")
    return f"{', '.join(changed)} {'differs' if one else 'differ'}"


def saved_fingerprint(run_dir: str | Path,
                      checkpoint: dict[str, Any] | None = None) -> dict[str, str] | None:
    """The data fingerprint of the checkpoint in ``run_dir`` (``checkpoint``: as the caller
    loaded it already; else read without loading its tensors); ``None`` for a run without
    a checkpoint or fingerprint (older runs), or one that cannot be read (loading it for
    its weights says what is wrong)."""
    if checkpoint is None:
        from dmlkit.training.trainer import CHECKPOINT

        path = Path(run_dir) / CHECKPOINT
        if not path.is_file():
            return None
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            return None
    saved = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    return saved if isinstance(saved, dict) and saved else None


def check_same_data(saved: Any, current: Fingerprint | None, where: str | Path) -> None:
    """Refuse to resume the run at ``where`` when its checkpoint's fingerprint ``saved``
    differs from ``current`` (the data as loaded now; a function computing it is called
    only when there is a fingerprint to compare with). A checkpoint without one (older
    runs), or no current fingerprint, passes."""
    if not isinstance(saved, dict) or not saved or current is None:
        return
    changed = data_changes(saved, fingerprint_value(current) or {})
    if changed:
        raise ValueError(
            f"cannot resume {where}: the data changed since the run started: "
            f"{parts_differ(changed)} from what its "
            "checkpoint was trained on (a file "
            "edited, rows added or deleted, or another file at the same path); restore the "
            "data it started with to resume, or train a new run (another --out)")


def check_resume_data(out_dir: Path, current: Fingerprint | None,
                      checkpoint: dict[str, Any] | None = None) -> None:
    """:func:`check_same_data` against the fingerprint in ``out_dir``'s checkpoint, before
    a resumed run writes anything.

    ``checkpoint``: the checkpoint as the caller loaded it already
    (:func:`~dmlkit.training.run_dir.check_resume` returns it); without it the file is
    read here, without loading its tensors. Under ``torch.distributed`` the main process
    alone hashes and compares (the others' ``current`` is not used), and every process
    raises its refusal.
    """
    import torch.distributed as dist

    several = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if several and dist.get_rank() != 0:
        verdict: list[str | None] = [None]
        dist.broadcast_object_list(verdict, src=0)
    else:
        verdict = [_refusal(out_dir, current, checkpoint)]
        if several:
            dist.broadcast_object_list(verdict, src=0)
    if verdict[0] is not None:
        raise ValueError(verdict[0])


def _refusal(out_dir: Path, current: Fingerprint | None,
             checkpoint: dict[str, Any] | None) -> str | None:
    """The message of :func:`check_same_data`'s refusal, or ``None`` when it passes."""
    saved = saved_fingerprint(out_dir, checkpoint)
    try:
        check_same_data(saved, current, out_dir)
    except ValueError as err:
        return str(err)
    return None


__all__ = ["CHECKPOINT_KEY", "Fingerprint", "LazyFingerprint", "check_resume_data",
           "check_same_data", "data_changes", "data_fingerprint", "fingerprint_value",
           "parts_differ", "saved_fingerprint"]
