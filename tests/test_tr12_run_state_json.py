"""A run directory's files describe one state: a resume that trains new epochs does not
leave the finished run's model.pt / metrics.json beside the newer checkpoint;
metrics.json is strict JSON; number strings in component parameters are numbers; and
train_seconds counts every session of a resumed run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dmlkit.config import Config
from dmlkit.runs import load_run
from dmlkit.training import metrics_table, train_run
from dmlkit.training.checkpoint import atomic_save, load_checkpoint


def _quiet(_message: str) -> None:
    pass


def _config(epochs: int, kind: str = "labels") -> Config:
    data = {
        "name": "digits",
        "split": "stratified",
        "test_fraction": 0.5,
        "seed": 0,
        "max_per_class": 30,
    }
    raw = {
        "model": {"name": "mlp", "dim": 16},
        "loss": {"name": "triplet_margin", "margin": 0.2},
        "optimizer": {"name": "adam", "lr": 0.003},
        "training": {"epochs": epochs, "seed": 0, "num_threads": 1, "batch_size": 40},
    }
    if kind == "labels":
        raw["data"] = data
        raw["miner"] = {"name": "batch_hard"}
        raw["sampler"] = {"name": "m_per_class", "m": 4, "batch_size": 40}
    else:
        raw["data"] = data | {"kind": kind, "num_tuples": 120}
    return Config.from_dict(raw)


def _stop_after(epoch: int):
    def callback(_trainer, record):
        if record["epoch"] >= epoch:
            raise KeyboardInterrupt

    return callback


@pytest.mark.parametrize("kind", ["labels", "triplets"])
def test_interrupted_resume_of_a_finished_run_loads_its_checkpoint(tmp_path, kind):
    out = tmp_path / "run"
    train_run(_config(2, kind), out, log=_quiet)
    assert (out / "model.pt").is_file() and (out / "metrics.json").is_file()
    # what evaluate / report made of the 2-epoch weights goes with them
    (out / "evaluation.json").write_text("{}")
    (out / "report.html").write_text("<html></html>")
    (out / "notes.txt").write_text("the user's own")
    with pytest.raises(KeyboardInterrupt):
        train_run(_config(4, kind), out, resume=True, log=_quiet, callbacks=(_stop_after(3),))
    # no final weights or metrics of the 2-epoch run beside the epoch-3 checkpoint
    assert not (out / "model.pt").exists()
    assert not (out / "metrics.json").exists()
    assert not (out / "evaluation.json").exists() and not (out / "report.html").exists()
    assert (out / "notes.txt").read_text() == "the user's own"
    run = load_run(out)
    assert run.weights.startswith("checkpoint of epoch 3 of 4")
    assert run.metrics is None
    saved = load_checkpoint(out / "checkpoint.pt")["model"]
    for key, value in run.model.state_dict().items():
        assert torch.equal(value, saved[key])
    # and the run finishes from there, writing both again
    result = train_run(_config(4, kind), out, resume=True, log=_quiet)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert (out / "model.pt").is_file()
    assert json.loads((out / "metrics.json").read_text())["history"][-1]["epoch"] == 4


def test_resume_that_trains_nothing_keeps_the_finished_files(tmp_path):
    out = tmp_path / "run"
    train_run(_config(2), out, log=_quiet)
    before = (out / "model.pt").read_bytes()
    train_run(_config(2), out, resume=True, log=_quiet)
    assert (out / "model.pt").read_bytes() == before
    assert (out / "metrics.json").is_file()


def _strict(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_labelled_metrics_json_writes_undefined_metrics_as_null(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.concatenate([np.repeat(np.arange(4), 30), np.arange(4, 14)])
    x = rng.normal(size=(len(labels), 8)).astype(np.float32) + labels[:, None]
    np.savez(tmp_path / "single.npz", x=x.astype(np.float32), labels=labels)
    config = Config.from_dict({
        "data": {"name": "npz", "path": str(tmp_path / "single.npz"), "split": "classes",
                 "train_classes": [0, 1, 2, 3], "seed": 0},
        "model": {"name": "mlp", "dim": 8},
        "loss": {"name": "triplet_margin", "margin": 0.2},
        "miner": {"name": "batch_hard"},
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": 16},
        "training": {"epochs": 1, "seed": 0, "num_threads": 1}})  # fmt: skip
    with pytest.warns(UserWarning):
        result = train_run(config, tmp_path / "run", log=_quiet)
    metrics = _strict((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["map_at_r"] is None
    assert np.isnan(result.metrics["map_at_r"])  # (in memory: NaN, as before)
    assert load_run(tmp_path / "run").metrics["map_at_r"] is None
    # the table prints undefined metrics, in memory or read back, as n/a
    for shown in (metrics_table(result.metrics),
                  metrics_table(load_run(tmp_path / "run").metrics)):
        row = next(line for line in shown.splitlines() if line.startswith("MAP@R"))
        assert row.split()[-1] == "n/a", shown
        assert "P@1" in shown


def test_number_strings_in_component_parameters_are_numbers():
    config = Config.from_dict({
        "model": {"name": "mlp", "dim": "16"},
        "loss": {"name": "triplet_margin", "margin": "5e-1"},
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": 40}})  # fmt: skip
    config.check()
    assert config.loss["margin"] == 0.5 and isinstance(config.loss["margin"], float)
    assert config.model["dim"] == 16 and isinstance(config.model["dim"], int)


def test_non_number_strings_in_component_parameters_are_refused():
    config = Config.from_dict({"loss": {"name": "triplet_margin", "margin": "wide"}})
    with pytest.raises(ValueError, match="loss.margin must be float"):
        config.check()
    config = Config.from_dict({"model": {"name": "mlp", "dim": "1.5"}})
    with pytest.raises(ValueError, match="model.dim must be int"):
        config.check()


@pytest.mark.parametrize("kind", ["labels", "triplets"])
def test_train_seconds_counts_the_earlier_sessions_of_a_resumed_run(tmp_path, kind):
    out = tmp_path / "run"
    train_run(_config(2, kind), out, log=_quiet)
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    for record in checkpoint["history"]:  # as if each epoch had taken 100 s
        record["seconds"] = 100.0
    atomic_save(checkpoint, out / "checkpoint.pt")
    result = train_run(_config(2, kind), out, resume=True, log=_quiet)  # trains nothing
    assert 200.0 <= result.seconds < 260.0
    assert 200.0 <= result.metrics["train_seconds"] < 260.0
    assert json.loads((out / "metrics.json").read_text())["train_seconds"] >= 200.0


def test_train_seconds_of_an_old_checkpoint_without_epoch_times(tmp_path):
    out = tmp_path / "run"
    train_run(_config(2), out, log=_quiet)
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    for record in checkpoint["history"]:
        record.pop("seconds", None)
    atomic_save(checkpoint, out / "checkpoint.pt")
    result = train_run(_config(3), out, resume=True, log=_quiet)
    assert 0.0 < result.metrics["train_seconds"] < 60.0
