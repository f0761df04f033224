"""Two processes under torchrun (gloo) equal one process on the concatenated batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import one_process_group

HERE = Path(__file__).parent


def torchrun(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", "2", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_losses_and_gradients_equal_single_process(tmp_path):
    sys.path.insert(0, str(HERE))
    from ddp_worker import CASES, REGULARIZED, WEIGHTS, reference, setup

    from dmlkit.training.trainer import regularization

    out = tmp_path / "ddp.json"
    res = torchrun([str(HERE / "ddp_worker.py"), str(out)], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(out.read_text())
    for name in CASES | REGULARIZED:
        model, loss, miner, x, y = setup(name)
        emb = model(x)
        value = loss(emb, y, indices=miner(emb, y) if miner is not None else None)
        if name in REGULARIZED:  # the anchor and uniformity terms of the whole batch
            extra = regularization(emb, reference(x), *WEIGHTS)
            assert float(extra) != 0.0
            value = value + extra
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


def test_distributed_batch_loss_adds_anchor_and_uniformity(tmp_path, monkeypatch):
    """DistributedTrainer's loss carries training.anchor_weight's and uniformity_weight's
    terms (a one-process group: its global batch is the batch)."""

    from dmlkit.config import Config
    from dmlkit.data.load import split_dataset
    from dmlkit.training import Trainer
    from dmlkit.training.build import resolve_config
    from dmlkit.training.distributed import DistributedTrainer

    with one_process_group(monkeypatch):
        losses = {}
        for weights in ((0.0, 0.0), (30.0, 1.0)):
            cfg = Config.from_dict({
                "name": "ddp_reg", "data": {"name": "digits"},
                "model": {"name": "mlp", "dim": 8, "hidden": [16]},
                "loss": {"name": "multi_similarity"},
                "training": {"epochs": 1, "progress": False, "seed": 0,
                             "anchor_weight": weights[0], "uniformity_weight": weights[1]}})
            train, _ = split_dataset(cfg.data)
            cfg = resolve_config(cfg, train.x[0], 10)
            single = Trainer(cfg, train, out_dir=tmp_path / "one", log=None)
            multi = DistributedTrainer(cfg, train, out_dir=tmp_path / "two", log=None)
            with torch.no_grad():  # a step's worth of change, so the anchor term is not 0
                for trainer in (single, multi):
                    for p in trainer.model.parameters():
                        p.add_(0.05)
            batch = single.fetch(list(range(32)))
            got = float(multi.batch_loss(batch).detach())
            want = float(single.batch_loss(batch).detach())
            assert got == pytest.approx(want, rel=1e-5), weights
            losses[weights] = got
        assert losses[(30.0, 1.0)] != pytest.approx(losses[(0.0, 0.0)], rel=1e-3)


def test_every_process_stops_together_and_bad_shards_are_clear_errors(tmp_path):
    from dmlkit.config import Config

    base = {"name": "ddp", "data": {"name": "digits", "max_per_class": 20,
                                    "max_heldout_per_class": 10},
            "model": {"name": "small_cnn", "dim": 8, "width": 4},
            "sampler": {"name": "m_per_class", "m": 4, "batch_size": 40},
            "optimizer": {"lr": 3e-5},
            "training": {"epochs": 8, "progress": False, "val_fraction": 0.25,
                         "patience": 1}}
    Config.from_dict(base).to_yaml(tmp_path / "stop.yaml")
    res = torchrun(["-m", "dmlkit", "train", str(tmp_path / "stop.yaml"), "--out",
                    str(tmp_path / "stop")], tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]  # batch norms differ per process: no hang
    # the first process alone prints the set-up lines
    assert res.stdout.count("run directory:") == 1 and res.stdout.count("training on") == 1
    metrics = json.loads((tmp_path / "stop" / "metrics.json").read_text())
    assert len(metrics["history"]) <= 8
    odd = {**base, "sampler": {"name": "m_per_class", "m": 3, "batch_size": 27},
           "training": {"epochs": 1, "progress": False}}
    Config.from_dict(odd).to_yaml(tmp_path / "odd.yaml")
    res = torchrun(["-m", "dmlkit", "train", str(tmp_path / "odd.yaml"), "--out",
                    str(tmp_path / "odd")], tmp_path, timeout=300)
    # refused before the first epoch, leaving no run directory behind
    assert res.returncode != 0 and "does not split evenly over 2 processes" in res.stderr
    assert "training stopped during epoch" not in res.stdout
    assert not (tmp_path / "odd").exists()
    assert "gloo::EnforceNotMet" not in res.stderr
    # a batch size capped at an odd number of training items names the size asked for
    capped = {**base, "data": {"name": "digits", "test_fraction": 0.5}, "sampler": None,
              "training": {"epochs": 1, "progress": False, "batch_size": 2000}}
    Config.from_dict(capped).to_yaml(tmp_path / "capped.yaml")
    res = torchrun(["-m", "dmlkit", "train", str(tmp_path / "capped.yaml"), "--out",
                    str(tmp_path / "capped")], tmp_path, timeout=300)
    assert res.returncode != 0
    assert "the 2000 asked for, capped at the 899 training items" in res.stderr, res.stderr[-2000:]


def test_torchrun_without_out_asks_for_it(tmp_path):
    res = torchrun(["-m", "dmlkit", "train", "--epochs", "1"], tmp_path, timeout=300)
    assert res.returncode != 0 and "name the run directory: --out" in res.stderr
    assert not (tmp_path / "runs").exists()


RUNS_SCRIPT = '''
import os, sys
from dmlkit.config import load_config
from dmlkit.training import train_run

rank = int(os.environ["RANK"])
cfg = load_config(sys.argv[1])
train_run(cfg, "first", log=lambda m: None)
train_run(cfg, "second", log=lambda m: None)  # a new process group in the same processes
print(f"rank {rank}: two runs done", flush=True)
cfg.training.epochs = 4

def fail(trainer, record):
    if rank == 0 and record["epoch"] == 2:
        raise OSError("disk full on rank 0")

train_run(cfg, "third", callbacks=(fail,), log=lambda m: None)
'''


def test_two_runs_in_one_job_and_a_failing_process_ends_the_job(tmp_path):
    """A second train_run in the same torchrun processes trains (the gather's group was
    the destroyed first one); an error on one process ends the job at once instead of
    pairing its final barrier with the others' next collective (a hang)."""
    from dmlkit.config import Config

    Config.from_dict({
        "name": "ddp", "data": {"name": "digits", "max_per_class": 20,
                                "max_heldout_per_class": 10},
        "model": {"name": "mlp", "dim": 8, "hidden": [16]},
        "loss": {"name": "multi_similarity"},
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": 40},
        "training": {"epochs": 1, "progress": False}}).to_yaml(tmp_path / "c.yaml")
    (tmp_path / "runs.py").write_text(RUNS_SCRIPT)
    res = torchrun([str(tmp_path / "runs.py"), str(tmp_path / "c.yaml")], tmp_path,
                   timeout=240)
    assert "rank 0: two runs done" in res.stdout and "rank 1: two runs done" in res.stdout, (
        res.stderr[-3000:])
    assert (tmp_path / "second" / "metrics.json").is_file()
    assert res.returncode != 0 and "disk full on rank 0" in res.stderr


UNEVEN = """
import os, sys, torch, torch.distributed as dist
from dmlkit.training.distributed import gather, gather_with_grad, init_from_env
init_from_env("cpu")
rank, said = dist.get_rank(), []
for fn in (gather_with_grad, gather):
    try:
        fn(torch.randn(3 - rank, 4, requires_grad=fn is gather_with_grad))
        said.append(f"{fn.__name__} gathered")
    except ValueError as err:
        said.append(f"{fn.__name__} refused: {err}")
said.append(str(tuple(gather(torch.full((2, 2), float(rank))).shape)))
with open(f"r{rank}.txt", "w") as f:
    f.write("\\n".join(said))
dist.barrier()  # (both done before either tears the group down)
dist.destroy_process_group()
sys.stdout.flush()
os._exit(0)  # skip C++ static teardown, where gloo's threads can abort (as python -m dmlkit)
"""


def test_a_gather_of_different_shapes_is_refused_on_every_process(tmp_path):
    (tmp_path / "uneven.py").write_text(UNEVEN)
    res = torchrun([str(tmp_path / "uneven.py")], tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    for rank in (0, 1):  # each process refuses both gathers, then gathers equal shapes
        lines = (tmp_path / f"r{rank}.txt").read_text().splitlines()
        assert len(lines) == 3 and lines[2] == "(4, 2)", lines
        assert all(ln.endswith("refused: every process must gather a tensor of the same "
                               "shape, got 0: (3, 4), 1: (2, 4) (process: shape); give each "
                               "process as many rows") for ln in lines[:2]), lines
