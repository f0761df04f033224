"""The ``dmlkit`` command line.

Each module in this package that defines ``register(app: typer.Typer) -> None`` adds its
commands. Modules import torch and friends inside their commands, so ``dmlkit --help``
stays instant.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

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


_register_commands()


@app.callback()
def _root() -> None:
    """Deep metric learning: train, evaluate, embed, index and search."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
