"""Help texts show docstring sentences whole, not broken at the source's line ends."""

from __future__ import annotations

from typer.testing import CliRunner

from dmlkit.cli.main import app, flowed


def test_flowed_joins_lines_and_keeps_paragraphs():
    text = """First line
    goes on here.

    Second paragraph with
    --resume at a line start.
    """
    assert flowed(text) == ("First line goes on here.\n\n"
                            "Second paragraph with --resume at a line start.")


def test_command_list_and_command_help_are_not_broken_mid_sentence():
    runner = CliRunner()
    env = {"COLUMNS": "250", "TERMINAL_WIDTH": "250"}
    root = runner.invoke(app, ["--help"], env=env)
    assert root.exit_code == 0
    assert "mean MAP@R over class-disjoint folds of the training classes" in root.output
    tune = runner.invoke(app, ["tune", "--help"], env=env)
    assert tune.exit_code == 0
    assert "(same config and --out, or --storage) with --resume; they share" in tune.output
