"""Choose the Fashion-MNIST unseen-classes config without looking at the unseen classes.

Validation protocol: inside the training classes 0-4 of the official training set,
leave two classes out per fold, train on the other three (1,000 images per class) and
score leave-one-out retrieval MAP@R on the two left-out classes (500 images each)
after every epoch, next to raw pixels on the same images. Classes 5-9 and the official
test set are never read. Prints one JSON line per (candidate, fold) and appends them to
``--out``.

    python benchmarks/fashion_mnist_unseen_validation.py --candidates base g4 --folds ab
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dmlkit.config.schema import Config
from dmlkit.data.augment import AugmentedDataset
from dmlkit.data.load import load_dataset
from dmlkit.data.splits import class_split, limit_per_class
from dmlkit.evaluation import retrieval_metrics
from dmlkit.functional.distances import l2_normalize
from dmlkit.training.build import resolve_config
from dmlkit.training.trainer import Trainer

FOLDS = {"a": ([0, 1, 2], [3, 4]), "b": ([2, 3, 4], [0, 1]), "c": ([0, 3, 4], [1, 2])}
TRIPLET = {"loss": {"name": "triplet_margin", "margin": 0.2}, "miner": {"name": "batch_hard"}}
AUG = {"shift": 2, "hflip": True}
CANDIDATES = {
    "base": {**TRIPLET},  # the previous config: global average pooling, 64-d
    "g4": {"grid": 4, "dim": 128, **TRIPLET},
    "g7": {"grid": 7, "dim": 128, **TRIPLET},
    "g4aug": {"grid": 4, "dim": 128, **AUG, **TRIPLET},
    "g4ms": {"grid": 4, "dim": 128, "loss": {"name": "multi_similarity"}},
    "g4sup": {"grid": 4, "dim": 128, "loss": {"name": "supcon", "temperature": 0.1}},
    "g4aug_ms": {"grid": 4, "dim": 128, **AUG, "loss": {"name": "multi_similarity"}, "lr": 1e-3},
    "g7aug_lr1": {"grid": 7, "dim": 128, **AUG, **TRIPLET, "lr": 1e-3},
    "g7aug_ms": {"grid": 7, "dim": 128, **AUG, "loss": {"name": "multi_similarity"}, "lr": 1e-3},
    "g4ms_lr1": {"grid": 4, "dim": 128, "loss": {"name": "multi_similarity"}, "lr": 1e-3},
}


def config_for(cand: dict, epochs: int) -> Config:
    return Config.from_dict({
        "data": {"name": "fashion_mnist"},
        "model": {"name": "small_cnn", "in_channels": 1, "image_size": 28, "width": 16,
                  "dim": cand.get("dim", 64), "grid": cand.get("grid", 1),
                  "dropout": cand.get("dropout", 0.0)},
        "loss": cand["loss"], "miner": cand.get("miner"),
        "sampler": {"name": "m_per_class", "m": 16, "batch_size": 48},
        "optimizer": {"name": "adam", "lr": cand.get("lr", 2e-3)},
        "schedule": {"name": "cosine", "warmup_epochs": 0.5},
        "training": {"epochs": epochs, "seed": 0, "progress": False},
    })  # fmt: skip


def run_fold(cand: dict, fold: str, per_class: int, val_per_class: int, epochs: int) -> dict:
    train_classes, val_classes = FOLDS[fold]
    data = load_dataset({"name": "fashion_mnist", "part": "train"})
    train, val = class_split(data, train_classes, val_classes)
    train = limit_per_class(train, per_class, 0)
    val = limit_per_class(val, val_per_class, 1)
    flat = val.x.flatten(1).float()  # raw baseline as usual: each image at unit L2 norm
    raw = retrieval_metrics(l2_normalize(flat), val.labels)["map_at_r"]
    raw_plain = retrieval_metrics(flat, val.labels)["map_at_r"]
    config = resolve_config(config_for(cand, epochs), train.x[0], 10)
    if cand.get("shift", 0) or cand.get("hflip", False):
        train = AugmentedDataset(train, cand.get("shift", 0), cand.get("hflip", False), seed=0)
    start = time.perf_counter()
    history = Trainer(config, train, val_data=val, log=None).fit()
    curve = [round(h["val_map_at_r"], 4) for h in history]  # per epoch, class-disjoint
    return {"fold": fold, "raw": round(raw, 4), "raw_unnormalized": round(raw_plain, 4),
            "curve": curve, "last": curve[-1],
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    p.add_argument("--folds", default="ab", help=f"fold letters, from {''.join(FOLDS)}")
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--val-per-class", type=int, default=500)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"
                                        / "fashion_mnist_unseen_validation.jsonl"))
    args = p.parse_args()
    bad = sorted(set(args.folds) - set(FOLDS))
    if bad:
        p.error(f"--folds {args.folds!r}: unknown fold(s) {''.join(bad)!r}; "
                f"valid letters are {', '.join(FOLDS)}")
    torch.set_num_threads(args.threads)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for name in args.candidates:
        for fold in args.folds:
            row = {"name": name, **run_fold(
                CANDIDATES[name], fold, args.per_class, args.val_per_class, args.epochs
            ), "candidate": CANDIDATES[name]}  # fmt: skip
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
