"""The ``dmlkit`` command line.

Each module in this package that defines ``register(app: typer.Typer) -> None`` adds its
commands. Modules import torch and friends inside their commands, so ``dmlkit --help``
stays instant.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import typer

from dmlkit.cli._errors import wrap_commands

app = typer.Typer(
    name="dmlkit",
    help="Deep metric learning: train, evaluate, embed, index and search.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_commands() -> None:
    import dmlkit.cli as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name in ("main",) or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"dmlkit.cli.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)
    wrap_commands(app)  # one error line for a missing optional package, in every command
    _flow_help(app)


def flowed(text: str) -> str:
    """``text`` with each paragraph's line breaks turned into spaces (paragraphs stay
    apart): the help shows a docstring's sentences whole, where the terminal wraps them,
    not broken at the source's line ends (or read as a list where a line starts with
    ``--option``)."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def _flow_help(typer_app: typer.Typer) -> None:
    """:func:`flowed` help for every command and sub-app of ``typer_app``."""
    for info in typer_app.registered_commands:
        doc = info.help if info.help is not None else inspect.getdoc(info.callback)
        if doc:
            info.help = flowed(doc)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _flow_help(group.typer_instance)


_register_commands()


def _version(value: bool) -> None:
    if value:
        from dmlkit import __version__

        typer.echo(f"dmlkit {__version__}")
        raise typer.Exit()


def _one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    """Warnings on the command line: one line, no source excerpt."""
    return f"warning: {message}\n"


def _terminate(signum: int, frame: object) -> None:  # noqa: ARG001
    """SIGTERM unwinds like Ctrl-C, so atomic writes remove their temporary files."""
    raise KeyboardInterrupt


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Deep metric learning: train, evaluate, embed, index and search."""
    import warnings

    warnings.formatwarning = _one_line_warning


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    finally:  # the command is over: a SIGTERM while the process exits just ends it (no
        # KeyboardInterrupt raised inside the interpreter's exit handlers)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


if __name__ == "__main__":
    main()
