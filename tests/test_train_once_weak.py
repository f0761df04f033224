"""A weak-supervision run (pairs / triplets without class labels) hashes its data only
where the fingerprint is used, and a resume reads its checkpoint once and compares the
data once, as a labelled run does (tests/test_resume_paths_checkpoint.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dmlkit.training.data_fingerprint as fingerprints
import dmlkit.training.trainer as trainer_module
import dmlkit.training.weak as weak_module
from dmlkit.config import Config
from dmlkit.training import Trainer, load_checkpoint, train_run
from dmlkit.training.weak import _fingerprint, build_weak_splits


def quiet(*_):
    pass


def tuple_config(tmp_path, epochs: int = 2) -> Config:
    """Triplets from a CSV file over a feature file."""
    rng = np.random.default_rng(0)
    if not (tmp_path / "x.npy").exists():
        np.save(tmp_path / "x.npy", rng.standard_normal((60, 6)).astype(np.float32))
        rows = [rng.choice(60, 3, replace=False) for _ in range(80)]
        (tmp_path / "t.csv").write_text("anchor,positive,negative\n" + "".join(
            f"{a},{p},{n}\n" for a, p, n in rows))
    return Config.from_dict({
        "name": "w", "data": {"kind": "triplets", "tuples": str(tmp_path / "t.csv"),
                              "features": str(tmp_path / "x.npy"), "test_fraction": 0.25},
        "model": {"name": "mlp", "dim": 4, "hidden": [8]},
        "loss": {"name": "triplet_margin", "margin": 0.2},
        "training": {"epochs": epochs, "batch_size": 16, "num_threads": 1,
                     "progress": False}})


def drawn_config(tmp_path, epochs: int = 2) -> Config:
    """Pairs drawn from a labelled npz file (whose held-out part keeps its labels)."""
    rng = np.random.default_rng(1)
    if not (tmp_path / "d.npz").exists():
        np.savez(tmp_path / "d.npz", x=rng.random((80, 6)).astype(np.float32),
                 labels=np.arange(80) % 4)
    return Config.from_dict({
        "name": "w", "data": {"name": "npz", "path": str(tmp_path / "d.npz"), "kind": "pairs",
                              "num_tuples": 60, "split": "stratified", "test_fraction": 0.25},
        "model": {"name": "mlp", "dim": 4, "hidden": [8]},
        "loss": {"name": "contrastive"},
        "training": {"epochs": epochs, "batch_size": 16, "num_threads": 1,
                     "val_fraction": 0.25, "progress": False}})


CONFIGS = {"tuple file": tuple_config, "drawn pairs": drawn_config}


@pytest.fixture
def hashes(monkeypatch):
    """The parts of every data fingerprint computed, one list per call."""
    calls = []
    real = fingerprints.data_fingerprint

    def counted(parts):
        calls.append(sorted(parts))
        return real(parts)

    monkeypatch.setattr(fingerprints, "data_fingerprint", counted)
    monkeypatch.setattr(weak_module, "data_fingerprint", counted, raising=False)
    return calls


@pytest.fixture
def reads(monkeypatch):
    """The paths of every ``torch.load`` of a checkpoint."""
    paths = []
    real = torch.load

    def load(f, *args, **kwargs):
        if str(f).endswith("checkpoint.pt"):
            paths.append(str(f))
        return real(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    return paths


def interrupt(cfg, out):
    def stop(trainer, record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, out, log=quiet, callbacks=(stop,))


@pytest.mark.parametrize("make", CONFIGS.values(), ids=list(CONFIGS))
def test_a_new_weak_run_hashes_its_data_once_at_its_first_checkpoint(tmp_path, hashes,
                                                                     monkeypatch, make):
    cfg = make(tmp_path, epochs=3)

    def fail(self, epoch):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # stopped before its first checkpoint: no hash at all
        m.setattr(Trainer, "train_epoch", fail)
        with pytest.raises(KeyboardInterrupt):
            train_run(cfg, tmp_path / "cut", log=quiet)
    assert hashes == []
    train_run(cfg, tmp_path / "run", log=quiet)
    assert len(hashes) == 1
    # the same checksums as hashing the data as loaded at the start
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["data"] == \
        _fingerprint(build_weak_splits(cfg))()


@pytest.mark.parametrize("make", CONFIGS.values(), ids=list(CONFIGS))
def test_a_weak_resume_reads_its_checkpoint_once_and_compares_once(tmp_path, hashes, reads,
                                                                    monkeypatch, make):
    cfg = make(tmp_path)
    train_run(cfg, tmp_path / "full", log=quiet)
    out = tmp_path / "run"
    interrupt(cfg, out)
    compared = []
    real = fingerprints.check_same_data

    def check(saved, current, where):
        compared.append(where)
        return real(saved, current, where)

    monkeypatch.setattr(fingerprints, "check_same_data", check)
    monkeypatch.setattr(trainer_module, "check_same_data", check)
    hashes.clear()
    reads.clear()
    result = train_run(cfg, out, resume=True, log=quiet)
    assert reads == [str(out / "checkpoint.pt")] and len(compared) == 1
    assert len(hashes) == 1 and len(result.history) == 2
    # the checkpoint handed down restores the run exactly: as if it had never stopped
    full = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    resumed = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert load_checkpoint(out / "checkpoint.pt")["data"] == \
        load_checkpoint(tmp_path / "full" / "checkpoint.pt")["data"]


def test_a_weak_resume_on_changed_data_is_refused_before_anything_is_written(tmp_path,
                                                                               reads):
    cfg = tuple_config(tmp_path)
    out = tmp_path / "run"
    interrupt(cfg, out)
    kept = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    x = np.load(tmp_path / "x.npy")
    np.save(tmp_path / "x.npy", x + 1)  # the items edited
    reads.clear()
    with pytest.raises(ValueError, match=rf"^cannot resume {out}: the data changed since the "
                       "run started: the items differ from what its checkpoint"):
        train_run(cfg, out, resume=True, log=quiet)
    assert len(reads) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == kept


def test_an_old_weak_checkpoint_resumes_without_hashing_until_it_saves(tmp_path, hashes):
    cfg = tuple_config(tmp_path)
    out = tmp_path / "run"
    interrupt(cfg, out)
    state = load_checkpoint(out / "checkpoint.pt")
    del state["data"]  # as an older dmlkit wrote it: nothing to compare with
    torch.save(state, out / "checkpoint.pt")
    hashes.clear()
    cfg.training.epochs = 1  # (nothing left to train: no checkpoint saved, no hash)
    train_run(cfg, out, resume=True, log=quiet)
    assert hashes == []
    cfg.training.epochs = 2
    train_run(cfg, out, resume=True, log=quiet)
    assert len(hashes) == 1 and load_checkpoint(out / "checkpoint.pt")["data"]
