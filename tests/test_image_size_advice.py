"""A model shape setting that does not match the data: the error gives the ``--set`` that
fits, and that setting trains."""

import numpy as np
from cli_helpers import error_line
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()


def test_image_size_mismatch_gives_the_setting_that_fits(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "nsq.npz", x=rng.normal(size=(40, 8, 12)).astype(np.float32),
             labels=np.repeat(np.arange(4), 10))  # fmt: skip
    base = ["train", "configs/digits.yaml", "--epochs", "1", "--set", "data.name=npz",
            "--set", f"data.path={tmp_path / 'nsq.npz'}", "--set", "sampler.m=4",
            "--set", "sampler.batch_size=8", "--no-progress"]  # fmt: skip
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "a")])
    assert res.exit_code == 1
    line = error_line(res, "model.image_size is 8")
    fix = line.split("(--set ")[1].split(")")[0]
    assert fix == "model.image_size=[8,12]"
    res = runner.invoke(app, [*base, "--set", fix, "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
