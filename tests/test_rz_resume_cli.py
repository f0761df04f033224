"""``dmlkit train --resume`` on run directories that lack a file or name other settings:
a deleted ``config.yaml`` is replaced by the config the checkpoint saved (the settings a
resume gives are compared with it), a directory with nothing to resume says what to do,
a run resumes on another device, and repeating the run's seed is no change."""

from __future__ import annotations

import pytest
import torch
import yaml
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.config import Config
from dmlkit.training import train_run

TINY = """
name: tiny
data: {name: digits, max_per_class: 10, max_heldout_per_class: 10}
model: {name: mlp, dim: 8, hidden: [16]}
loss: {name: triplet_margin, margin: 0.2}
sampler: {name: m_per_class, m: 2, batch_size: 10}
training: {epochs: 1, num_threads: 1, progress: false, seed: 3}
"""

runner = CliRunner()


def quiet(*_args):
    pass


def one_error(res, *needles: str) -> str:
    """The command failed with one ``error:`` line on stderr, holding ``needles``."""
    assert res.exit_code == 1, res.output
    lines = [s for s in res.stderr.splitlines() if s.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A run that trained its one epoch (no model.pt: it may go on)."""
    out = tmp_path_factory.mktemp("rz-resume") / "run"
    train_run(Config.from_dict(yaml.safe_load(TINY)), out, log=quiet)
    (out / "model.pt").unlink()
    return out


def _copy(run, tmp_path, *, config_yaml: bool = True):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns(".train.lock"))
    if not config_yaml:
        (copy / "config.yaml").unlink()
    return copy


def _resume(out, *args: str):
    return runner.invoke(app, ["train", *args, "--resume", "--out", str(out), "--no-progress"])


def test_a_run_whose_config_yaml_was_deleted_resumes_with_its_checkpoints_config(
        done, tmp_path):
    out = _copy(done, tmp_path, config_yaml=False)
    res = _resume(out, "--epochs", "2")
    assert res.exit_code == 0, res.output
    assert "config.yaml is missing: resuming with the config saved in its checkpoint" in (
        res.stderr)
    assert len((out / "train.log").read_text().splitlines()) == 2
    saved = Config.from_yaml(out / "config.yaml")  # written again
    assert saved.training.epochs == 2 and saved.model["hidden"] == [16]


def test_a_config_that_differs_from_the_checkpoints_is_refused_without_config_yaml(
        done, tmp_path):
    out = _copy(done, tmp_path, config_yaml=False)
    (tmp_path / "other.yaml").write_text(TINY.replace("margin: 0.2", "margin: 0.5"))
    one_error(_resume(out, str(tmp_path / "other.yaml")),
              f"with the config saved in {out / 'checkpoint.pt'}", "loss.margin: 0.2 -> 0.5")


def test_the_library_compares_a_resumes_config_with_the_checkpoints_without_config_yaml(
        done, tmp_path):
    out = _copy(done, tmp_path, config_yaml=False)
    config = Config.from_dict(yaml.safe_load(TINY))
    config.loss["margin"] = 0.5
    config.training.epochs = 2
    with pytest.raises(ValueError, match=r"config\.yaml is missing.*loss\.margin: 0\.2 -> 0\.5"):
        train_run(config, out, resume=True, log=quiet)
    assert not (out / "config.yaml").exists() and not (out / "model.pt").exists()


def test_a_run_without_config_yaml_whose_checkpoint_holds_none_says_what_to_do(
        done, tmp_path):
    out = _copy(done, tmp_path, config_yaml=False)
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    del state["config"]
    torch.save(state, out / "checkpoint.pt")
    one_error(_resume(out), f"cannot resume {out}: its config.yaml is missing",
              "restore config.yaml, or train a new run (another --out)")


@pytest.mark.parametrize("case", ["empty", "lock file only", "absent"])
def test_a_directory_with_nothing_to_resume_says_what_to_do(case, tmp_path):
    out = tmp_path / "run"
    if case != "absent":
        out.mkdir()
    if case == "lock file only":  # (a run killed before it wrote anything)
        (out / ".train.lock").touch()
    if case == "absent":
        one_error(_resume(out), f"cannot resume: {out} does not exist, so there is no run",
                  "check --out, or train a new run without --resume")
        assert not out.exists()
    else:
        line = one_error(_resume(out), f"cannot resume: no checkpoint.pt in {out}")
        assert "nothing to resume: start it again without --resume (same --out)" in line
        res = runner.invoke(app, ["train", "--out", str(out), "--epochs", "1", "--no-progress",
                                  "--set", "data.max_per_class=10", "--set",
                                  "data.max_heldout_per_class=10"])
        assert res.exit_code == 0, res.output  # the advice works


def test_a_run_trained_on_a_gpu_resumes_on_the_cpu(done, tmp_path):
    out = _copy(done, tmp_path)
    raw = yaml.safe_load((out / "config.yaml").read_text())
    raw["training"]["device"] = "cuda"  # (as a GPU machine saved it)
    (out / "config.yaml").write_text(yaml.safe_dump(raw))
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    state["config"]["training"]["device"] = "cuda"
    torch.save(state, out / "checkpoint.pt")
    res = _resume(out, "--epochs", "2", "--set", "training.device=cpu",
                  "--set", "training.num_threads=1")
    assert res.exit_code == 0, res.output
    assert Config.from_yaml(out / "config.yaml").training.device == "cpu"
    assert len((out / "train.log").read_text().splitlines()) == 2


def test_resume_takes_the_runs_own_seed_and_refuses_another(done, tmp_path):
    out = _copy(done, tmp_path)
    one_error(_resume(out, "--seed", "4"), "--seed cannot change on --resume (the run's seed "
              "is 3)")
    assert len((out / "train.log").read_text().splitlines()) == 1
    res = _resume(out, "--seed", "3", "--epochs", "2")  # the same command, resumed
    assert res.exit_code == 0, res.output
    assert len((out / "train.log").read_text().splitlines()) == 2


def test_resume_without_out_finds_a_run_named_after_the_config(tmp_path, monkeypatch):
    from dmlkit.cli import train as train_cli

    monkeypatch.setattr(train_cli, "RUNS_DIR", tmp_path / "runs")
    (tmp_path / "runs" / "digits").mkdir(parents=True)
    (tmp_path / "runs" / "digits" / "checkpoint.pt").write_bytes(b"x")
    assert train_cli._latest_run("digits") == tmp_path / "runs" / "digits"
    assert train_cli._latest_run("other") is None
