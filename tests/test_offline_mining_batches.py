"""The offline hard-negative sampler's batches split evenly over torchrun's processes."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import torch

from dmlkit.data.dataset import ArrayDataset
from dmlkit.training.offline_mining import OfflineHardNegativeSampler


def _sampler(batch_multiple: int = 1) -> OfflineHardNegativeSampler:
    torch.manual_seed(0)
    ds = ArrayDataset(torch.randn(300, 8), torch.arange(300) % 10)
    sampler = OfflineHardNegativeSampler(ds, torch.nn.Linear(8, 4), batch_size=30, k=5,
                                         seed=0, batch_multiple=batch_multiple)
    sampler.set_epoch(0)
    return sampler


def test_batches_are_topped_up_to_the_multiple():
    plain, even = list(_sampler()), list(_sampler(batch_multiple=4))
    assert len({len(b) for b in plain}) > 1  # shared items make sizes vary
    assert all(len(b) % 4 == 0 for b in even)
    for p, e in zip(plain, even, strict=True):
        assert len(e) <= 30 and len(set(e)) == len(e)
        if len(p) <= 28:  # fits once topped up: every triplet member stays, in order
            assert e[: len(p)] == p and len(e) - len(p) < 4  # a few extras
        else:  # 29 or 30 members would top up past batch_size: the last triplet(s) go
            kept = next(j for j in range(len(e) + 1) if j == len(e) or e[j] != p[j])
            assert len(e) <= 28 and len(e) - kept < 4
    assert list(_sampler(batch_multiple=4)) == even  # seeded


def test_the_default_leaves_batches_as_mined():
    sizes = collections.Counter(len(b) for b in _sampler())
    assert max(sizes) <= 30


def test_shipped_offline_config_trains_under_torchrun(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "dmlkit", "train", str(root / "configs" / "digits_offline_mining.yaml"),
           "--epochs", "1", "--no-progress", "--out", str(tmp_path / "run")]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "run" / "model.pt").is_file()
