"""Losses with one row per class are sized by the number of training classes, and each
label is given its row (sorted), so how the classes are numbered changes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import one_process_group

from dmlkit.config import Config
from dmlkit.data.dataset import ArrayDataset
from dmlkit.training import Trainer, load_checkpoint, train_run
from dmlkit.training.build import resolve_config
from dmlkit.training.class_rows import (
    CLASS_IDS_KEY,
    as_class_ids,
    label_rows,
    run_class_ids,
)


def _npz(path, scale: int = 1, n: int = 200, classes: int = 10, dim: int = 16):
    """``n`` points of ``classes`` Gaussian classes in ``dim`` dimensions, labels x
    ``scale``, saved as an ``.npz`` at ``path``."""
    rng = np.random.default_rng(0)
    labels = np.arange(n) % classes
    centers = rng.normal(size=(classes, dim)).astype(np.float32)
    x = centers[labels] + 0.8 * rng.normal(size=(n, dim)).astype(np.float32)
    np.savez(path, x=x, labels=labels.astype(np.int64) * scale)
    return path


def _config(path, loss: str = "normalized_softmax", epochs: int = 2) -> Config:
    return Config.from_dict({
        "name": "rows", "data": {"name": "npz", "path": str(path)},
        "model": {"name": "mlp", "dim": 8, "hidden": [16]},
        "loss": {"name": loss},
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": 40},
        "training": {"epochs": epochs, "seed": 0, "progress": False, "num_threads": 1}})


def _quiet(*_args):
    pass


def test_scaled_labels_train_as_the_original_ones(tmp_path):
    results = {}
    for scale in (1, 1000):
        data = _npz(tmp_path / f"x{scale}.npz", scale)
        result = train_run(_config(data), tmp_path / f"run{scale}", log=_quiet)
        saved = Config.from_yaml(tmp_path / f"run{scale}" / "config.yaml")
        assert saved.loss["num_classes"] == 10  # not 9001
        state = load_checkpoint(tmp_path / f"run{scale}" / "checkpoint.pt")
        assert state["loss"]["W"].shape == (8, 10)
        assert state[CLASS_IDS_KEY].tolist() == [c * scale for c in range(10)]
        results[scale] = result.metrics
    for key in ("map_at_r", "precision_at_1", "r_precision"):
        assert results[1000][key] == results[1][key], key


def test_labels_of_ten_digits_train(tmp_path):
    data = _npz(tmp_path / "huge.npz", 10**9)
    result = train_run(_config(data, "proxy_anchor", epochs=1), tmp_path / "run", log=_quiet)
    assert 0.0 < result.metrics["map_at_r"] <= 1.0
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["loss"]["proxies"].shape[0] == 10


def test_a_run_saved_before_class_rows_resumes_with_its_size(tmp_path, monkeypatch):
    """A checkpoint written the old way (loss sized by the largest label + 1, labels as
    rows, no class ids) resumes as it was sized; so does its model."""
    import dmlkit.training.run as run_module

    data = _npz(tmp_path / "x1000.npz", 1000)
    out = tmp_path / "old"
    with monkeypatch.context() as m:  # the old sizing
        m.setattr(run_module, "run_class_ids",
                  lambda labels, checkpoint: (None, int(labels.max()) + 1))
        train_run(_config(data, epochs=1), out, log=_quiet)
    state = load_checkpoint(out / "checkpoint.pt")
    del state[CLASS_IDS_KEY]  # as written before class rows existed
    torch.save(state, out / "checkpoint.pt")
    assert state["loss"]["W"].shape == (8, 9001)
    result = train_run(_config(data, epochs=2), out, resume=True, log=_quiet)
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 2 and state["loss"]["W"].shape == (8, 9001)
    assert state.get(CLASS_IDS_KEY) is None
    assert Config.from_yaml(out / "config.yaml").loss["num_classes"] == 9001
    assert 0.0 < result.metrics["map_at_r"] <= 1.0


def test_a_new_run_resumes_with_its_recorded_rows(tmp_path):
    data = _npz(tmp_path / "x1000.npz", 1000)
    straight = train_run(_config(data, epochs=2), tmp_path / "a", log=_quiet)

    def stop(trainer, record):  # interrupted after the first epoch's checkpoint
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(_config(data, epochs=2), tmp_path / "b", log=_quiet, callbacks=(stop,))
    resumed = train_run(_config(data, epochs=2), tmp_path / "b", resume=True, log=_quiet)
    assert resumed.metrics["map_at_r"] == straight.metrics["map_at_r"]
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert torch.equal(a["loss"]["W"], b["loss"]["W"])
    assert torch.equal(b[CLASS_IDS_KEY], torch.arange(10) * 1000)
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["map_at_r"] == (
        straight.metrics["map_at_r"])


def _trainer_data(scale: int) -> tuple[Config, ArrayDataset]:
    x = torch.randn(60, 16, generator=torch.Generator().manual_seed(0))
    labels = (torch.arange(60) % 6) * scale
    cfg = Config.from_dict({
        "model": {"name": "mlp", "dim": 8, "hidden": [16]},
        "loss": {"name": "arcface"},
        "sampler": {"name": "m_per_class", "m": 2, "batch_size": 12},
        "training": {"epochs": 1, "seed": 0, "progress": False}})
    return resolve_config(cfg, x[0], 6), ArrayDataset(x, labels)


def test_trainer_maps_labels_to_rows_and_checks_resumes(tmp_path):
    cfg, plain = _trainer_data(1)
    _, scaled = _trainer_data(1000)
    ids = torch.unique(scaled.labels)
    with pytest.raises(ValueError, match="num_classes=6"):  # rows not given: refused
        Trainer(cfg, scaled, log=None)
    a = Trainer(cfg, plain, log=None)
    b = Trainer(cfg, scaled, log=None, class_ids=ids, out_dir=tmp_path)
    batch = list(range(12))
    assert torch.equal(b.unpack(b.fetch(batch))[1], plain.labels[:12])
    assert float(a.batch_loss(a.fetch(batch)).detach()) == float(
        b.batch_loss(b.fetch(batch)).detach())
    b.fit()
    assert torch.equal(load_checkpoint(tmp_path / "checkpoint.pt")[CLASS_IDS_KEY], ids)
    same = Trainer(cfg, scaled, log=None, class_ids=ids.clone(), out_dir=tmp_path)
    same.load(tmp_path / "checkpoint.pt")  # the same ids: restored
    assert torch.equal(same.class_ids, ids)
    with pytest.raises(ValueError, match="other class ids"):
        Trainer(cfg, ArrayDataset(scaled.x, scaled.labels + 1), log=None,
                class_ids=ids + 1, out_dir=tmp_path).load(tmp_path / "checkpoint.pt")


def test_the_distributed_trainer_gives_the_loss_rows(tmp_path, monkeypatch):
    """DistributedTrainer (a one-process group) calls the loss with the labels' rows."""

    from dmlkit.training.distributed import DistributedTrainer

    cfg, plain = _trainer_data(1)
    _, scaled = _trainer_data(10**9)
    with one_process_group(monkeypatch):
        single = Trainer(cfg, plain, log=None)
        multi = DistributedTrainer(cfg, scaled, log=None,
                                   class_ids=torch.unique(scaled.labels))
        batch = list(range(12))
        assert float(multi.batch_loss(multi.fetch(batch)).detach()) == pytest.approx(
            float(single.batch_loss(single.fetch(batch)).detach()), rel=1e-6)


def test_label_rows_and_run_class_ids():
    ids = torch.tensor([3, 70, 10**12])
    assert label_rows(torch.tensor([10**12, 3, 70, 3]), ids).tolist() == [2, 0, 1, 0]
    with pytest.raises(ValueError, match="label 5 is not one of the 3 classes"):
        label_rows(torch.tensor([3, 5]), ids)
    labels = torch.tensor([7, 7, 2, 9000])
    got, n = run_class_ids(labels, None)
    assert got.tolist() == [2, 7, 9000] and n == 3
    assert run_class_ids(labels, {"epoch": 1}) == (None, 9001)  # saved before class rows
    got, n = run_class_ids(labels, {CLASS_IDS_KEY: torch.tensor([2, 7, 9000])})
    assert got.tolist() == [2, 7, 9000] and n == 3
    assert run_class_ids(torch.tensor([[0, 1], [1, 4]]), None) == (None, 5)  # hierarchical
    with pytest.raises(ValueError, match="sorted"):
        as_class_ids([3, 1])
