"""Import the modules that register a user's own parts: the ``imports:`` of a config,
and the ``DMLKIT_IMPORTS`` environment variable.

An entry is a module name (``myplugin``, ``mypackage.losses``) or the path of a ``.py``
file (``parts/myplugin.py``, imported as the module ``myplugin``). A module name is
looked up on ``sys.path``, then in the config file's folder, then in the working
directory; a relative file path is read from the config file's folder (the working
directory for a config not read from a file). Importing a module runs its
``@register_*`` decorators, so the config can name its classes.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class UserModuleError(ImportError, ValueError):
    """A module named under ``imports:`` (or in ``DMLKIT_IMPORTS``) that cannot be
    imported. A ``ValueError`` too: a bad config value, reported on one line."""


def check_entries(value: Any, where: str = "imports") -> list[str]:
    """``value`` as a list of import entries (a single string is one entry); a clear
    error for anything else."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{where} must be a list of module names or .py files "
                         f"(e.g. [myplugin, parts/my_losses.py]), got {value!r}")
    return [v.strip() for v in value]


def is_file_entry(entry: str) -> bool:
    return entry.endswith(".py")


def absolute_entries(entries: Sequence[str], folder: Path) -> list[str]:
    """``entries`` with each relative ``.py`` file made absolute from ``folder`` (the
    config file's, else the working directory: where :func:`import_modules` reads it),
    so a run saving the config imports the same file from anywhere."""
    return [str((folder / e).resolve()) if is_file_entry(e) and not Path(e).is_absolute()
            else e for e in entries]


def recorded_entries(entries: Sequence[str], folder: str | Path | None) -> list[str]:
    """``entries`` as a run records them, after :func:`import_modules` imported them: a
    module name that was found as a file in ``folder`` (the config file's), and not in
    the working directory or on ``sys.path``, becomes that file's absolute path: a run's
    saved config is read from the run's folder, where the module is not. A module found
    by its name elsewhere keeps the name (portable: wherever it is importable)."""
    if folder is None:
        return list(entries)
    base = Path(folder).resolve()
    if base in {Path(p or ".").resolve() for p in [*sys.path, str(Path.cwd())]}:
        return list(entries)
    out = []
    for entry in entries:
        origin = getattr(sys.modules.get(entry), "__file__", None)
        if (not is_file_entry(entry) and "." not in entry and origin is not None
                and Path(origin).name == f"{entry}.py" and Path(origin).resolve().parent == base):
            entry = str(Path(origin).resolve())
        out.append(entry)
    return out


def import_modules(entries: Sequence[str], folder: str | Path | None = None,
                   source: str = "imports") -> None:
    """Import each entry (in order): a module name, or a ``.py`` file's path (relative
    to ``folder``, else to the working directory). ``source`` names where the entries
    come from in errors (``imports: of configs/x.yaml``)."""
    base = Path(folder) if folder is not None else None
    for entry in entries:
        if is_file_entry(entry):
            _import_file(Path(entry) if base is None else base / entry, entry, source)
        elif entry not in sys.modules:
            _import_name(entry, base, source)


def _import_name(name: str, folder: Path | None, source: str) -> None:
    extra = [str(p) for p in (folder, Path.cwd()) if p is not None]
    try:
        with _on_path(extra):
            importlib.import_module(name)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if missing == name or name.startswith(missing + "."):  # the entry itself
            looked = ", ".join(dict.fromkeys(extra))
            leaf = name.rpartition(".")[2]
            raise UserModuleError(
                f"cannot import module {name!r} named in {source}: no such module on "
                f"sys.path nor in {looked}; install the package that holds it (pip "
                f"install ...), put its folder on PYTHONPATH, or name its file "
                f"(imports: [path/to/{leaf}.py])") from err
        raise _failed(name, source, err) from err
    except Exception as err:  # its own error: a bug in it, a registry name it takes
        raise _failed(name, source, err) from err


def _import_file(path: Path, entry: str, source: str) -> None:
    path = path.resolve()
    if not path.is_file():
        raise UserModuleError(f"cannot import {entry!r} named in {source}: no file {path}; "
                              "a relative path is read from the config file's folder")
    name = path.stem
    loaded = sys.modules.get(name)
    if loaded is not None:
        origin = getattr(loaded, "__file__", None)
        if origin is not None and Path(origin).resolve() == path:
            return  # imported already
        raise UserModuleError(
            f"cannot import {path} (named in {source}) as module {name!r}: a module of that "
            f"name is imported already ({origin or 'built in'}); rename the file")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserModuleError(f"cannot import {path} (named in {source}): not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        with _on_path([str(path.parent)]):  # (it may import the modules beside it)
            spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[name]
        raise _failed(str(path), source, err) from err


def _failed(what: str, source: str, err: BaseException) -> UserModuleError:
    first = (str(err).strip().splitlines() or [""])[0]
    return UserModuleError(f"importing {what!r} (named in {source}) failed: "
                           f"{type(err).__name__}: {first}")


@contextmanager
def _on_path(folders: list[str]) -> Iterator[None]:
    """``folders`` at the end of ``sys.path`` while the block runs (those it lacks)."""
    added = [f for f in dict.fromkeys(folders) if f not in sys.path]
    sys.path.extend(added)
    try:
        yield
    finally:
        for f in added:
            if f in sys.path:
                sys.path.remove(f)


__all__ = ["UserModuleError", "absolute_entries", "check_entries", "import_modules",
           "recorded_entries"]
