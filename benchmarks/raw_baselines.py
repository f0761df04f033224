"""Raw-input retrieval baselines of the protocols in RESULTS.md, computed as the field
does (each flattened input scaled to unit L2 norm) and unnormalized, side by side.

The baselines depend only on the data, not on any training, so this script recomputes
them for the tables that quote one: the digits default job (held-out half), the
Fashion-MNIST unseen-classes job (classes 5-9 of the official test set; also the test set
of ``loss_comparison.py``) and the validation folds of
``fashion_mnist_unseen_validation.py`` (two left-out classes of 0-4, 500 images each).
Leave-one-out, Euclidean, ``retrieval_metrics`` defaults.

    python benchmarks/raw_baselines.py

Writes ``benchmarks/results/raw_baselines.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import format_table, write_json

from dmlkit.config import load_config
from dmlkit.data.load import load_dataset
from dmlkit.data.splits import class_split, limit_per_class
from dmlkit.evaluation import retrieval_metrics
from dmlkit.functional.distances import l2_normalize
from dmlkit.runs import build_splits

KEYS = ("precision_at_1", "r_precision", "map_at_r")
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
#: validation folds of fashion_mnist_unseen_validation.py: (train classes, left-out classes)
FOLDS = {"a": ([0, 1, 2], [3, 4]), "b": ([2, 3, 4], [0, 1]), "c": ([0, 3, 4], [1, 2])}


def baselines(x: torch.Tensor, labels: torch.Tensor) -> dict[str, dict[str, float]]:
    flat = x.flatten(1).float()  # (n, C*H*W)
    normed = retrieval_metrics(l2_normalize(flat), labels)
    plain = retrieval_metrics(flat, labels)
    return {"l2_normalized": {k: normed[k] for k in KEYS},
            "unnormalized": {k: plain[k] for k in KEYS}, "n": len(labels)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="raw_baselines.json",
                        help="file in benchmarks/results (an absolute path is used as is)")
    args = parser.parse_args()
    sets = {}
    for name in ("digits", "fashion_mnist_unseen"):
        _, heldout = build_splits(load_config(CONFIGS / f"{name}.yaml"))
        sets[name] = (heldout.x, heldout.labels)
    data = load_dataset({"name": "fashion_mnist", "part": "train"})
    for fold, (train_classes, val_classes) in FOLDS.items():
        _, val = class_split(data, train_classes, val_classes)
        val = limit_per_class(val, 500, 1)
        sets[f"fashion_mnist validation fold {fold}"] = (val.x, val.labels)
    results, rows = {}, []
    for name, (x, labels) in sets.items():
        results[name] = res = baselines(x, labels)
        a, b = res["l2_normalized"], res["unnormalized"]
        rows.append([name, res["n"], *[a[k] for k in KEYS], *[b[k] for k in KEYS]])
        print(f"{name}: done", flush=True)
    print(format_table(rows, ["protocol", "n", "P@1 L2-normed", "RP L2-normed",
                              "MAP@R L2-normed", "P@1 as is", "RP as is", "MAP@R as is"]))
    print(f"wrote {write_json(args.out, {'results': results})}")


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
