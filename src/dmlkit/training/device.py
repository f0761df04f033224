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
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` ...
    where : str
        Where the name came from (``"training.device"``, ``"--device"``), for the message.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{where} {device!r} is not a device name ({err}); use 'cpu' or "
                         "'cuda'") from None
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
    return dev


__all__ = ["resolve_device", "check_device"]
