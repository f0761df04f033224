"""Under torchrun only the main process hashes the training data: a new run's at the first
checkpoint it writes, a resume's to compare with the checkpoint, and every process raises
the main process's refusal of changed data."""

from __future__ import annotations

import json

import numpy as np
from test_distributed import torchrun

from dmlkit.config import Config

WORKER = '''
import json, os, sys
from pathlib import Path

import dmlkit.training.data_fingerprint as fingerprints
import dmlkit.training.run as run_module
from dmlkit.config import Config
from dmlkit.training import train_run

calls = []
real = fingerprints.data_fingerprint
fingerprints.data_fingerprint = lambda parts: calls.append(1) or real(parts)
if hasattr(run_module, "data_fingerprint"):
    run_module.data_fingerprint = fingerprints.data_fingerprint
config, out, name = sys.argv[1:]
error = None
try:
    train_run(Config.from_yaml(config), out, resume=name != "new", log=lambda *_: None)
except ValueError as err:
    error = str(err)
Path(out).parent.joinpath(f"{name}-{os.environ['RANK']}.json").write_text(
    json.dumps({"hashes": len(calls), "error": error}))
sys.stdout.flush()
os._exit(0)  # skip C++ static teardown, where gloo's threads can abort (as python -m dmlkit)
'''


def write_data(path, shift: float = 0.0) -> None:
    rng = np.random.default_rng(0)
    x = rng.random((80, 6)).astype(np.float32)
    x[3] += shift
    np.savez(path, x=x, labels=np.arange(80) % 4)


def test_only_the_main_process_hashes_and_every_process_refuses_changed_data(tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    write_data(tmp_path / "d.npz")
    cfg = Config.from_dict({
        "name": "ddp", "data": {"name": "npz", "path": str(tmp_path / "d.npz"),
                                "split": "stratified", "test_fraction": 0.25},
        "model": {"name": "mlp", "dim": 4, "hidden": [8]}, "loss": {"name": "triplet_margin"},
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": 16},
        "training": {"epochs": 1, "progress": False}})
    cfg.to_yaml(tmp_path / "one.yaml")
    cfg.training.epochs = 2
    cfg.to_yaml(tmp_path / "two.yaml")
    out = str(tmp_path / "run")

    def job(config: str, name: str) -> list[dict]:
        res = torchrun([str(tmp_path / "worker.py"), str(tmp_path / config), out, name],
                       tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        return [json.loads((tmp_path / f"{name}-{rank}.json").read_text()) for rank in (0, 1)]

    assert job("one.yaml", "new") == [{"hashes": 1, "error": None},  # at its checkpoint
                                      {"hashes": 0, "error": None}]
    write_data(tmp_path / "d.npz", shift=0.5)  # one training item edited
    refused = job("two.yaml", "changed")
    assert [r["hashes"] for r in refused] == [1, 0]
    assert refused[0]["error"] == refused[1]["error"]
    assert refused[0]["error"].startswith(f"cannot resume {out}: the data changed since the "
                                          "run started: the training items differ")
