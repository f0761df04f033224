"""Every command's ``--seed`` follows one seed rule (``check_seed``: 0 to 2**63 - 1), and
a seed outside it is one ``error: --seed ...`` line, not typer's usage box nor (as
``recommend train`` did) a run on a negative seed."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.config.field_rules import MAX_SEED

COMMANDS = {
    "verify": ["verify", "--data", "{tmp}/x.npz"],
    "fewshot": ["fewshot", "--episodes", "{tmp}/x.npz"],
    "evaluate": ["evaluate", "{tmp}/run"],
    "recommend": ["recommend", "train", "{tmp}/x.csv", "--out", "{tmp}/model"],
    "crossval": ["crossval", "{tmp}/c.yaml"],
}


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, 2**64])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_seed_out_of_range_is_one_error_line(tmp_path, command, seed):
    args = [a.format(tmp=tmp_path) for a in COMMANDS[command]] + ["--seed", str(seed)]
    out = CliRunner().invoke(app, args)
    assert out.exit_code != 0
    lines = out.output.strip().splitlines()
    assert len(lines) == 1, out.output
    assert lines[0].startswith(f"error: --seed must be an integer from 0 to {MAX_SEED} ")
    assert f"got {seed}" in lines[0]
    assert not (tmp_path / "model").exists()  # (refused before anything is written)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_seed_in_range_passes_the_rule(tmp_path, command):
    args = [a.format(tmp=tmp_path) for a in COMMANDS[command]] + ["--seed", str(MAX_SEED)]
    out = CliRunner().invoke(app, args)  # (fails later: its inputs do not exist)
    assert "--seed" not in out.output and out.output.startswith("error: "), out.output
