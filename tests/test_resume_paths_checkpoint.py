"""A resume reads its checkpoint once and compares the data once; the data fingerprint is
hashed only where it is used (a new run's first checkpoint, a resume's comparison), and is
the same as hashing the data at the start would give."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dmlkit.training.data_fingerprint as fingerprints
import dmlkit.training.run as run_module
import dmlkit.training.trainer as trainer_module
from dmlkit.config import Config
from dmlkit.training import Trainer, load_checkpoint, train_run
from dmlkit.training.run import build_splits


def quiet(*_):
    pass


def npz_config(tmp_path, epochs: int = 2, shift: float = 0.0) -> Config:
    """A labelled npz run; ``shift`` moves the rows of one item (changed data)."""
    rng = np.random.default_rng(0)
    x = rng.random((80, 6)).astype(np.float32)
    x[3] += shift
    np.savez(tmp_path / "d.npz", x=x, labels=np.arange(80) % 4)
    return Config.from_dict({
        "name": "l", "data": {"name": "npz", "path": str(tmp_path / "d.npz"),
                              "split": "stratified", "test_fraction": 0.25},
        "model": {"name": "mlp", "dim": 4, "hidden": [8]},
        "loss": {"name": "triplet_margin"}, "miner": {"name": "batch_hard"},
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": 16},
        "training": {"epochs": epochs, "num_threads": 1, "progress": False}})


@pytest.fixture
def hashes(monkeypatch):
    """The parts of every data fingerprint computed, one list per call."""
    calls = []
    real = fingerprints.data_fingerprint

    def counted(parts):
        calls.append(sorted(parts))
        return real(parts)

    monkeypatch.setattr(fingerprints, "data_fingerprint", counted)
    monkeypatch.setattr(run_module, "data_fingerprint", counted, raising=False)
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


def test_a_new_run_hashes_its_data_once_at_its_first_checkpoint(tmp_path, hashes, monkeypatch):
    cfg = npz_config(tmp_path, epochs=3)

    def fail(self, epoch):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # stopped before its first checkpoint: no hash at all
        m.setattr(Trainer, "train_epoch", fail)
        with pytest.raises(KeyboardInterrupt):
            train_run(cfg, tmp_path / "cut", log=quiet)
    assert hashes == []
    train_run(cfg, tmp_path / "run", log=quiet)
    assert hashes == [["the held-out split", "the training items", "the training labels"]]
    # the same checksums as hashing the data as loaded
    train, heldout = build_splits(cfg)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["data"] == \
        fingerprints.data_fingerprint({"the training items": train.x,
                                       "the training labels": train.labels,
                                       "the held-out split": [heldout.x, heldout.labels]})


def test_a_resume_reads_its_checkpoint_once_and_compares_once(tmp_path, hashes, reads,
                                                               monkeypatch):
    cfg = npz_config(tmp_path)
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


def test_a_resume_on_changed_data_is_still_refused_before_anything_is_written(tmp_path, reads):
    cfg = npz_config(tmp_path)
    out = tmp_path / "run"
    interrupt(cfg, out)
    kept = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    npz_config(tmp_path, shift=0.5)  # one training item edited
    reads.clear()
    with pytest.raises(ValueError, match=rf"^cannot resume {out}: the data changed since the "
                       "run started: the training items differ from what its checkpoint"):
        train_run(cfg, out, resume=True, log=quiet)
    assert len(reads) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == kept


def test_an_old_checkpoint_resumes_without_hashing_until_it_saves(tmp_path, hashes):
    cfg = npz_config(tmp_path)
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


def test_a_checkpoint_handed_to_fit_is_restored_and_let_go(tmp_path):
    """``Trainer.fit(resume=True, checkpoint=...)`` restores what reading the file would,
    and empties the dict handed in (no second copy of the weights stays alive)."""
    cfg = npz_config(tmp_path)
    out = tmp_path / "run"
    interrupt(cfg, out)
    train, _ = build_splits(cfg)
    resolved = Config.from_yaml(out / "config.yaml")
    runs = []
    for given in (None, load_checkpoint(out / "checkpoint.pt")):
        copy = tmp_path / f"copy{len(runs)}"
        copy.mkdir()
        (copy / "checkpoint.pt").write_bytes((out / "checkpoint.pt").read_bytes())
        trainer = Trainer(resolved, train, out_dir=copy, log=None)
        trainer.fit(resume=True, checkpoint=given)
        assert given is None or given == {}
        runs.append(trainer)
    a, b = (t.model.state_dict() for t in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in runs[0].history] == [r["loss"] for r in runs[1].history]
