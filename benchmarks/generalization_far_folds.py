"""Far and close class-disjoint folds: would validation see a loss on unlike classes?

For each protocol's five training classes, hold out the two whose untrained-feature
centroid is farthest from every other class's (lowest cosine similarity to the nearest
other centroid), then the two closest, train on the other three, and print MAP@R of the
untrained features, of the recipe trained without the anchor term and of the default
recipe (``configs/unseen_classes.yaml``). Only training classes are used.

    python benchmarks/generalization_far_folds.py --per-class 300
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generalization import (  # noqa: E402
    HIGH,
    LOW,
    ROOT,
    embed,
    fold_data,
    protocol_data,
    recipe_config,
    untrained_model,
)

from dmlkit.data.load import split_dataset  # noqa: E402
from dmlkit.evaluation import retrieval_metrics  # noqa: E402
from dmlkit.functional.distances import l2_normalize  # noqa: E402
from dmlkit.training import train_run  # noqa: E402


def by_farness(config, train) -> list[int]:
    """Training classes, farthest from the others first (untrained features)."""
    f = embed(untrained_model(config, train), train.x)  # (n, F)
    classes = sorted(set(train.labels.tolist()))
    centroids = l2_normalize(torch.stack([f[train.labels == c].mean(0) for c in classes]))
    sim = centroids @ centroids.T  # (k, k)
    sim.fill_diagonal_(-2.0)
    return [classes[i] for i in sim.max(1).values.argsort().tolist()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "unseen_classes.yaml"))
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = yaml.safe_load(Path(args.config).read_text())
    base["model"]["cache_dir"] = tempfile.mkdtemp(prefix="dmlkit-features-")
    atexit.register(shutil.rmtree, base["model"]["cache_dir"], ignore_errors=True)
    print("protocol | held out | untrained | no anchor | default")
    for source in ("fashion_mnist", "digits"):
        for classes in (LOW, HIGH):
            data = protocol_data(source, classes, [c for c in range(10) if c not in classes],
                                 args.per_class)  # fmt: skip
            data.pop("heldout_part", None)
            config = recipe_config(base, "default", data, args.seed)
            order = by_farness(config, split_dataset(config.data)[0])
            for kind, val in (("far", order[:2]), ("close", order[-2:])):
                fold = fold_data(source, classes, val, args.per_class)
                cfg = recipe_config(base, "default", fold, args.seed)
                train, heldout = split_dataset(cfg.data)
                emb = embed(untrained_model(cfg, train), heldout.x)
                scores = [retrieval_metrics(emb, heldout.labels)]
                for anchor in (0.0, base["training"].get("anchor_weight", 0.0)):
                    cfg.training.anchor_weight = anchor
                    with tempfile.TemporaryDirectory() as tmp:
                        scores.append(train_run(cfg, Path(tmp) / "r", log=lambda _m: None).metrics)
                row = " | ".join(f"{s['map_at_r']:.4f}" for s in scores)
                print(f"{source} {classes[0]}-{classes[-1]} | {kind} {val} | {row}", flush=True)


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
