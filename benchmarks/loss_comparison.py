"""Losses compared on Fashion-MNIST unseen classes under one wall-clock budget each.

Train on the classes 0-4 of the official training part, evaluate retrieval on the
classes 5-9 of the official test part (never seen in training; leave-one-out over
5,000 images): P@1, R-Precision and MAP@R (Euclidean, as ``AccuracyCalculator``), plus
the raw-pixel baseline. Every loss gets the same model, optimizer, sampler, seed and
training-time budget; the budget runs whole sampler "epochs" of ``--batches`` batches
until the time is spent (the Trainer itself has no time limit), and the table reports
how many batches fit, since a slower loss gets fewer steps.

Everything is the library's own: ``dmlkit.data.load_fashion_mnist`` and
``class_split``, ``MPerClassSampler``, ``dmlkit.training.Trainer``,
``dmlkit.training.run.embed`` and ``dmlkit.evaluation.retrieval_metrics``.

Usage::

    python benchmarks/loss_comparison.py --budget-s 60
    python benchmarks/loss_comparison.py --budget-s 5 --losses contrastive arcface

Writes ``benchmarks/results/loss_comparison.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from _common import format_table, machine_info, write_json

#: name -> (loss config, miner config or None); library defaults unless stated
LOSSES: dict[str, tuple[dict[str, Any], dict[str, Any] | None]] = {
    "contrastive": ({"name": "contrastive"}, None),
    "triplet (all)": ({"name": "triplet_margin", "margin": 0.1}, None),
    "triplet + batch-hard": ({"name": "triplet_margin", "margin": 0.1}, {"name": "batch_hard"}),
    "multi_similarity": ({"name": "multi_similarity"}, None),
    "ntxent": ({"name": "ntxent"}, None),
    "supcon": ({"name": "supcon"}, None),
    "arcface": ({"name": "arcface"}, None),
    "proxy_anchor": ({"name": "proxy_anchor"}, None),
}
METRICS = ("precision_at_1", "r_precision", "map_at_r")


def load_data(train_classes: list[int], test_classes: list[int]):
    from dmlkit.data.idx import load_fashion_mnist
    from dmlkit.data.splits import class_split

    train, _ = class_split(load_fashion_mnist("train"), train_classes)
    test, _ = class_split(load_fashion_mnist("test"), test_classes)
    return train, test


def evaluate(embeddings, labels) -> dict[str, float]:
    from dmlkit.evaluation import retrieval_metrics

    m = retrieval_metrics(embeddings, labels)
    return {k: float(m[k]) for k in METRICS}


def train_one(
    name: str, train, test, args: argparse.Namespace, warm_up: bool = True
) -> dict[str, Any]:
    import torch

    from dmlkit.config.schema import (
        Config,
        OptimizerConfig,
        ScheduleConfig,
        TrainingConfig,
    )
    from dmlkit.samplers.m_per_class import MPerClassSampler
    from dmlkit.training.build import resolve_config
    from dmlkit.training.run import embed
    from dmlkit.training.trainer import Trainer

    loss_cfg, miner_cfg = LOSSES[name]
    config = Config(
        name=f"fmnist-{name}",
        model=dict(args.model_spec),
        loss=dict(loss_cfg),
        miner=None if miner_cfg is None else dict(miner_cfg),
        optimizer=OptimizerConfig(name="adam", lr=args.lr),
        schedule=ScheduleConfig(name="none"),
        training=TrainingConfig(
            epochs=1, batch_size=args.batch_size, seed=args.seed, progress=False
        ),
    )
    config = resolve_config(config, train.x[0], num_classes=int(train.labels.max()) + 1)
    sampler = MPerClassSampler(
        train.labels, m=args.m, batch_size=args.batch_size, num_batches=args.batches, seed=args.seed
    )
    if warm_up:  # lazy imports and first-call costs stay out of every budget
        spare = Trainer(config, train, sampler=sampler, log=None)
        spare.batch_loss(spare.fetch(next(iter(sampler)))).backward()
        spare.optimizer.step()
    trainer = Trainer(config, train, sampler=sampler, log=None)
    torch.manual_seed(args.seed)
    start, epoch, losses = time.perf_counter(), 0, []
    while time.perf_counter() - start < args.budget_s:
        losses.append(trainer.train_epoch(epoch)["loss"])
        epoch += 1
    train_s = time.perf_counter() - start
    emb, labels = embed(trainer.model, test, batch_size=1000)
    return {
        "loss_config": config.loss,
        "miner_config": config.miner,
        "batches": epoch * args.batches,
        "train_s": train_s,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        **evaluate(emb, labels),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    ap.add_argument("--budget-s", type=float, default=60.0, help="training seconds per loss")
    ap.add_argument("--model", default="mlp", choices=["mlp", "small_cnn"])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--m", type=int, default=32, help="samples per class in a batch")
    ap.add_argument("--batches", type=int, default=20, help="batches per sampler epoch")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam, model and loss parameters")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="loss_comparison.json")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    args.model_spec = {"name": args.model, "dim": args.dim}
    if args.model == "mlp":
        args.model_spec["hidden"] = [256]
    train, test = load_data([0, 1, 2, 3, 4], [5, 6, 7, 8, 9])
    print(
        f"Fashion-MNIST: train classes 0-4 ({len(train)} images), evaluate classes 5-9 of the "
        f"test part ({len(test)} images, leave-one-out); model {args.model_spec}; Adam "
        f"lr={args.lr}; MPerClassSampler m={args.m}, batch {args.batch_size}; "
        f"{args.budget_s:.0f} s of training per loss; torch threads {args.threads}\n",
        flush=True,
    )
    from dmlkit.functional.distances import l2_normalize

    flat = test.x.flatten(1).float()  # raw baseline as usual: each image scaled to unit norm
    results: dict[str, dict[str, Any]] = {
        "raw pixels": {"batches": 0, "train_s": 0.0, **evaluate(l2_normalize(flat), test.labels)},
        "raw pixels (unnormalized)": {"batches": 0, "train_s": 0.0,
                                      **evaluate(flat, test.labels)},
    }
    for name in ("raw pixels", "raw pixels (unnormalized)"):
        print(f"{name:>22}: " + _line(results[name]), flush=True)
    for name in args.losses:
        results[name] = train_one(name, train, test, args)
        print(f"{name:>22}: " + _line(results[name]), flush=True)

    rows = [
        [name, r["batches"], r["train_s"], *(100 * r[k] for k in METRICS)]
        for name, r in results.items()
    ]
    print()
    print(format_table(rows, ["loss", "batches", "train s", "P@1 %", "R-Prec %", "MAP@R %"]))
    payload = {
        "info": machine_info(args.threads),
        "command": "python benchmarks/loss_comparison.py " + " ".join(sys.argv[1:]),
        "args": {k: v for k, v in vars(args).items()},
        "results": results,
    }
    print(f"\nwrote {write_json(args.out, payload)}")
    return 0


def _line(r: dict[str, Any]) -> str:
    return (
        f"P@1 {100 * r['precision_at_1']:.2f}  R-Prec {100 * r['r_precision']:.2f}  "
        f"MAP@R {100 * r['map_at_r']:.2f}  ({r['batches']} batches, {r['train_s']:.0f} s)"
    )


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
