"""``--x-key`` and ``--labels-key``: the arrays of a ``.npz`` ``--data`` file that hold the
inputs and the labels, as ``x_key`` / ``labels_key`` do in a config's data block."""

from __future__ import annotations

import typer

X_KEY = typer.Option(
    None, "--x-key", help="Array of a .npz --data that holds the inputs (default 'x').")
LABELS_KEY = typer.Option(
    None, "--labels-key", "--y-key",
    help="Array of a .npz --data that holds the integer labels (default 'labels').")
