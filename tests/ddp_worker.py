"""Run by torchrun from test_distributed.py: losses on a batch split over processes."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from dmlkit.registry import LOSSES, MINERS
from dmlkit.training.distributed import global_batch_loss, global_regularization

CASES = {
    "contrastive": ({"name": "contrastive"}, None),
    "triplet_batch_hard": ({"name": "triplet_margin", "margin": 0.2}, {"name": "batch_hard"}),
    "multi_similarity": ({"name": "multi_similarity"}, None),
    "ntxent": ({"name": "ntxent"}, None),
    "arcface": ({"name": "arcface", "num_classes": 4, "embedding_size": 6}, None),
    # order-dependent: a memory of 10 keeps the batch's last 10 items
    "xbm_wrapping": ({"name": "cross_batch_memory", "memory_size": 10, "embedding_size": 6},
                     None),
}
#: cases that add training.anchor_weight and training.uniformity_weight's terms
REGULARIZED = {"multi_similarity+anchor+uniformity": ({"name": "multi_similarity"}, None)}
WEIGHTS = (30.0, 1.0)  # anchor, uniformity


def reference(x: torch.Tensor) -> torch.Tensor:
    """A fixed "starting model"'s embeddings for the anchor term."""
    torch.manual_seed(2)
    with torch.no_grad():
        return torch.nn.Linear(5, 4)(x)


def setup(name: str):
    """The same model, loss and global batch in every process (and in the test)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 6)
    loss_spec, miner_spec = (CASES | REGULARIZED)[name]
    spec = dict(loss_spec)
    if spec["name"] == "cross_batch_memory":
        spec["loss"] = LOSSES.build("contrastive")
    loss = LOSSES.build(spec.pop("name"), **spec)
    miner = None if miner_spec is None else MINERS.build(miner_spec["name"])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 5, generator=g)
    y = torch.arange(16) % 4
    return model, loss, miner, x, y


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for name in CASES | REGULARIZED:
        model, loss, miner, x, y = setup(name)
        share = torch.arange(rank, 16, world)  # interleaved, as DistributedTrainer slices
        emb = model(x[share])
        value = global_batch_loss(loss, miner, emb, y[share])
        if name in REGULARIZED:
            value = value + global_regularization(emb, reference(x[share]), *WEIGHTS)
        value.backward()
        grads = {}
        for prefix, module in (("model", model), ("loss", loss)):
            for pname, p in module.named_parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    grads[f"{prefix}.{pname}"] = (p.grad / world).tolist()
        results[name] = {"loss": float(value.detach()), "grads": grads}
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    dist.barrier()  # no process leaves while another still talks to it
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
    sys.stdout.flush()
    os._exit(0)  # skip C++ static teardown, where gloo's threads can abort a finished worker
