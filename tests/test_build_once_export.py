"""Exporting a run reads its training data once: the input shape (when the config
records none) and the input range come from the same read."""

from __future__ import annotations

import numpy as np
import pytest

from dmlkit.config.schema import Config
from dmlkit.runs import export
from dmlkit.training import run as training_run
from dmlkit.training import train_run


def quiet(_message: str) -> None:
    pass


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_once")
    x = np.random.default_rng(0).random((60, 5)).astype(np.float32) * 2
    np.savez(root / "d.npz", x=x, labels=np.arange(60) % 3)
    cfg = Config.from_dict({
        "name": "e", "data": {"name": "npz", "path": str(root / "d.npz"),
                              "split": "stratified", "test_fraction": 0.3},
        "model": {"name": "mlp", "dim": 4, "hidden": [8]},
        "loss": {"name": "contrastive"},
        "training": {"epochs": 1, "batch_size": 20, "num_threads": 1, "progress": False}})
    train_run(cfg, root / "run", log=quiet)
    return root / "run"


@pytest.fixture
def data_reads(monkeypatch):
    """Each time a run's splits are built (by the export, or by the input spec it reads)."""
    reads: list[str] = []
    real = training_run.build_splits

    def counting(config, *args, **kwargs):
        reads.append(config.data.name)
        return real(config, *args, **kwargs)

    monkeypatch.setattr(training_run, "build_splits", counting)
    monkeypatch.setattr(export, "build_splits", counting)
    return reads


@pytest.mark.parametrize("records_shape", [True, False])
def test_export_reads_the_training_data_once(tiny_run, tmp_path, monkeypatch, data_reads,
                                             records_shape):
    if not records_shape:  # a config that records no input shape (the data tells it)
        load = export.load_run

        def without_shape(run_dir):
            run = load(run_dir)
            del run.config.model["in_features"]
            return run

        monkeypatch.setattr(export, "load_run", without_shape)
    info = export.export_run(tiny_run, tmp_path / "m.pt", "torchscript")
    assert data_reads == ["npz"]
    assert info["input_shape"] == [5] and info["n_features"] == 5
    low, high = info["input_range"]
    assert 0 <= low < high <= 2


def test_without_the_data_a_config_without_a_shape_says_what_reading_it_said(
        tiny_run, tmp_path, monkeypatch):
    load = export.load_run

    def without_shape_or_data(run_dir):
        run = load(run_dir)
        del run.config.model["in_features"]
        run.config.data.path = str(tmp_path / "gone.npz")
        return run

    monkeypatch.setattr(export, "load_run", without_shape_or_data)
    with pytest.raises((OSError, ValueError), match="gone.npz"):
        export.export_run(tiny_run, tmp_path / "m.pt", "torchscript")
    assert not (tmp_path / "m.pt").exists()
