"""Errors the commands share: one-line messages (output paths are checked by
:mod:`dmlkit.cli._outputs`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer


def one_line(err: BaseException) -> str:
    """The message of ``err``: a file system error names its path (``PATH: reason``), a
    ``KeyError`` gives its message without the quotes ``str`` would add."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    return str(err)


def is_missing_package(err: BaseException) -> bool:
    """Whether ``err`` is an optional package (or pretrained weights) the user has not
    installed, whose message names what to install: the pretrained weights'
    ``MissingWeightsError`` and every ``ImportError`` of dmlkit that names its
    ``pip install`` command (a missing extra). Imported lazily: ``dmlkit --help`` stays
    instant."""
    if not isinstance(err, ImportError):
        return False
    if "pip install" in str(err):
        return True
    from dmlkit.models.pretrained.weights import MissingWeightsError

    return isinstance(err, MissingWeightsError)


def one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """``command`` whose missing optional package (:func:`is_missing_package`) ends it
    with one ``error:`` line naming the pip command, exit status 1, no traceback.

    The CLI wraps every command with it (:func:`dmlkit.cli.main`), so no command has to
    list these errors in its own ``except``."""

    @functools.wraps(command)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ImportError as err:
            if not is_missing_package(err):
                raise
            typer.echo(f"error: {one_line(err)}", err=True)
            raise typer.Exit(1) from None

    wrapped.one_line_errors = True  # type: ignore[attr-defined]
    return wrapped


def wrap_commands(app: typer.Typer) -> None:
    """Wrap every command of ``app`` and of its sub-apps with :func:`one_line_errors`."""
    for info in app.registered_commands:
        if info.callback is not None and not getattr(info.callback, "one_line_errors", False):
            info.callback = one_line_errors(info.callback)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            wrap_commands(group.typer_instance)

