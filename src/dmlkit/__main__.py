"""``python -m dmlkit``: the command line (also what ``torchrun -m dmlkit`` runs)."""

import os
import sys

from dmlkit.cli.main import main


def _run() -> None:
    try:
        main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # a torchrun worker: its process group is already destroyed and the run written;
        # leave without C++ static teardown, where gloo's threads can abort the process
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _run()
