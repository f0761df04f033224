"""STS-B test Spearman of all-MiniLM-L6-v2 fine-tuned briefly on a subset of STS-B train.

The same recipe as ``configs/stsb.yaml`` (positive pairs scoring >= 4, in-batch negatives
InfoNCE at temperature 0.05, AdamW 2e-5), on the first ``--max-pairs`` positive pairs of a
seeded shuffle, for CPUs too busy for the full epoch of ``dmlkit train configs/stsb.yaml``.
``--baseline`` also scores the pretrained encoder (Spearman of cosine vs human scores on
the 1379 test pairs).

    python benchmarks/text_stsb.py --max-pairs 160 [--baseline]

Writes ``benchmarks/results/text_stsb.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import write_json

from dmlkit.config import Config
from dmlkit.data.text import load_stsb
from dmlkit.text import sts_spearman
from dmlkit.training import Trainer

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "stsb.yaml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-pairs", type=int, default=160)
    ap.add_argument("--baseline", action="store_true")
    ap.add_argument("--eval-part", default="test", choices=["dev", "test"],
                    help="'dev' for choosing settings (the test part is then not read)")
    ap.add_argument("--lr", type=float, default=None, help="override optimizer.lr")
    ap.add_argument("--temperature", type=float, default=None, help="override loss.temperature")
    ap.add_argument("--out", default="text_stsb.json")
    args = ap.parse_args()
    cfg = Config.from_yaml(CONFIG)
    cfg.training.progress = False
    if args.lr is not None:
        cfg.optimizer.lr = args.lr
    if args.temperature is not None:
        cfg.loss["temperature"] = args.temperature
    train = load_stsb("train", min_score=4.0).positives()
    order = np.random.default_rng(0).permutation(len(train))[: args.max_pairs]
    train = train.subset(order)
    test = load_stsb(args.eval_part)
    start = time.perf_counter()
    trainer = Trainer(cfg, train, log=print)
    result: dict = {"config": cfg.to_dict(), "eval_part": args.eval_part,
                    "train_pairs": len(train),
                    "steps": len(trainer.sampler)}
    if args.baseline:
        tick = time.perf_counter()
        result["pretrained"] = sts_spearman(trainer.model, test)
        result["pretrained"]["seconds"] = round(time.perf_counter() - tick, 1)
        print("pretrained", result["pretrained"])
    tick = time.perf_counter()
    result["history"] = trainer.fit()
    result["fit_seconds"] = round(time.perf_counter() - tick, 1)
    tick = time.perf_counter()
    result["fine_tuned"] = sts_spearman(trainer.model, test)
    result["fine_tuned"]["seconds"] = round(time.perf_counter() - tick, 1)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print("fine-tuned", result["fine_tuned"], f"{result['seconds']} s in all")
    write_json(args.out, result)


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
