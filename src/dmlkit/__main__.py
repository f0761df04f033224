"""``python -m dmlkit``: the command line (also what ``torchrun -m dmlkit`` runs)."""

from dmlkit.cli.main import main

if __name__ == "__main__":
    main()
