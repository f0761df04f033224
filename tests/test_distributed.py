"""Two processes under torchrun (gloo) equal one process on the concatenated batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent


def torchrun(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", "2", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_losses_and_gradients_equal_single_process(tmp_path):
    sys.path.insert(0, str(HERE))
    from ddp_worker import CASES, setup

    out = tmp_path / "ddp.json"
    res = torchrun([str(HERE / "ddp_worker.py"), str(out)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(out.read_text())
    for name in CASES:
        model, loss, miner, x, y = setup(name)
        emb = model(x)
        value = loss(emb, y, indices=miner(emb, y) if miner is not None else None)
        value.backward()
        assert got[name]["loss"] == pytest.approx(float(value.detach()), abs=1e-5), name
        for prefix, module in (("model", model), ("loss", loss)):
            for pname, p in module.named_parameters():
                if p.grad is None:
                    continue
                torch.testing.assert_close(torch.tensor(got[name]["grads"][f"{prefix}.{pname}"]),
                                           p.grad, atol=1e-5, rtol=1e-5, msg=name)


def test_two_process_training_resumes_on_one_and_back(tmp_path):
    from dmlkit.config import Config, load_config
    from dmlkit.training import load_checkpoint, train_run

    cfg = Config.from_dict({
        "name": "ddp", "data": {"name": "digits", "max_per_class": 20,
                                "max_heldout_per_class": 10},
        "model": {"name": "mlp", "dim": 8, "hidden": [16]},
        "loss": {"name": "multi_similarity"}, "miner": {"name": "multi_similarity"},
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": 40},
        "training": {"epochs": 1, "progress": False}})
    cfg.to_yaml(tmp_path / "c.yaml")
    res = torchrun(["-m", "dmlkit", "train", str(tmp_path / "c.yaml"), "--out",
                    str(tmp_path / "run")], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1
    assert len((tmp_path / "run" / "train.log").read_text().splitlines()) == 1  # rank 0 only
    # continue on one process for a second epoch, then on two for a third
    two = load_config(tmp_path / "c.yaml")
    two.training.epochs = 2
    train_run(two, tmp_path / "run", resume=True, log=lambda *a: None)
    res = torchrun(["-m", "dmlkit", "train", str(tmp_path / "c.yaml"), "--out",
                    str(tmp_path / "run"), "--resume", "--epochs", "3"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["epoch"] == 3 and len(state["history"]) == 3
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 < metrics["map_at_r"] <= 1.0
