"""``dmlkit.<package>`` works for every subpackage without importing it first."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import dmlkit

_PACKAGES = sorted(
    info.name
    for info in pkgutil.iter_modules([str(Path(dmlkit.__file__).parent)])
    if info.ispkg
)


def test_every_subpackage_is_listed() -> None:
    missing = [name for name in _PACKAGES if name not in dmlkit.__all__]
    assert missing == []


@pytest.mark.parametrize("name", ["runs", "report", "tuning", "text", "service"])
def test_attribute_access_imports_lazily(name: str) -> None:
    code = (
        "import sys, dmlkit\n"
        f"assert 'dmlkit.{name}' not in sys.modules\n"
        f"mod = dmlkit.{name}\n"
        f"assert mod.__name__ == 'dmlkit.{name}'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        dmlkit.nope  # noqa: B018
