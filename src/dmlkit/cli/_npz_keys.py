"""``--x-key`` and ``--labels-key``: the arrays of a ``.npz`` ``--data`` file that hold the
inputs and the labels, as ``x_key`` / ``labels_key`` do in a config's data block."""

from __future__ import annotations

from typing import Any

import typer

X_KEY = typer.Option(
    None, "--x-key", help="Array of a .npz --data that holds the inputs (default 'x').")
LABELS_KEY = typer.Option(
    None, "--labels-key", "--y-key",
    help="Array of a .npz --data that holds the integer labels (default 'labels').")


def x_key_option(files: str, default: str = "'x', else 'embeddings'") -> Any:
    """``--x-key`` of a command reading the ``.npz`` ``files`` (their options, in words)."""
    return typer.Option(None, "--x-key", help=f"Array of {files} that holds the inputs or "
                        f"embeddings (default {default}).")


def labels_key_option(files: str) -> Any:
    """``--labels-key`` (alias ``--y-key``) of a command reading the ``.npz`` ``files``."""
    return typer.Option(None, "--labels-key", "--y-key", help=f"Array of {files} that holds "
                        "the labels (default 'labels').")
