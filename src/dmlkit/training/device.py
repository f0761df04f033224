"""Check a device name before anything is loaded or written."""

from __future__ import annotations

import torch


def resolve_device(device: str) -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_device(device: str | torch.device, where: str = "device") -> torch.device:
    """``device`` as a :class:`torch.device`, or a ``ValueError`` saying what to use instead.

    Parameters
    ----------
    device : str or torch.device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` ..., or ``"auto"``
        (:func:`resolve_device`: CUDA where available, else the CPU).
    where : str
        Where the name came from (``"training.device"``, ``"--device"``), for the message.
    """
    try:
        dev = resolve_device(device) if device == "auto" else torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{where} {device!r} is not a device name ({err}); use 'cpu', 'cuda' "
                         "or 'auto'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{where} is {str(device)!r} but CUDA is not available here (torch "
                f"{torch.__version__}, built {'with' if torch.version.cuda else 'without'} "
                f"CUDA); set {where} to 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{where} is {str(device)!r} but only "
                             f"{torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{where} is 'mps' but MPS is not available here; set {where} to 'cpu'")
    use = f"set {where} to 'cpu'" + (" or 'cuda'" if torch.cuda.is_available() else "")
    if dev.type == "meta":
        raise ValueError(f"{where} is 'meta', torch's device of shapes without data, which "
                         f"cannot compute; {use}")
    if dev.type not in ("cpu", "cuda", "mps") and not _available(dev.type):
        raise ValueError(f"{where} is {str(device)!r} but this torch ({torch.__version__}) "
                         f"has no {dev.type!r} device available; {use}")
    return dev


def _available(kind: str) -> bool:
    """Whether torch has an accelerator of ``kind`` (``xpu``, ``mtia``, a backend a
    plugin registers) here: its module's ``is_available()``; False without one (or when
    it fails: torch built without it)."""
    module = getattr(torch, kind, None)
    check = getattr(module, "is_available", None)
    if not callable(check):
        return False
    try:
        return bool(check())
    except Exception:  # noqa: BLE001
        return False


__all__ = ["resolve_device", "check_device"]
