"""Untrained multi-scale features (``model.scales``): fold and unseen-class MAP@R.

The recipe's untrained features (``configs/unseen_classes.yaml``'s taps, grid and pixel
group, ``head_type: none``) at 64 x 64 alone and averaged with those of other input
resolutions (what ``model.scales`` computes: the mean of each resolution's feature vector,
L2-normalized for retrieval). For every class split of ``generalization.py`` (both
``--splits``): the mean leave-one-out MAP@R over the three class-disjoint folds of the
training classes that ``generalization.py --validate`` uses (a training-only score: the
features use no labels), and the MAP@R on the unseen test classes. Digits: all images;
Fashion-MNIST: ``--per-class`` images of each class from the official training split
(folds) and from the test split (unseen classes), seed 0.

    python benchmarks/generalization_scales.py --out generalization_scales_untrained.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, machine_info, write_json  # noqa: E402
from generalization import SPLITS  # noqa: E402
from generalization_resolution import features, images, map_at_r  # noqa: E402

from dmlkit.functional.distances import l2_normalize  # noqa: E402

#: name -> the resolutions whose features are averaged
COMBOS = {"64": [64], "64+96": [64, 96], "64+128": [64, 128], "64+96+128": [64, 96, 128]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="JSON file name under benchmarks/results/")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    splits = [pair for group in SPLITS.values() for pair in group]
    result: dict = {"machine": machine_info(args.threads), "per_class": args.per_class,
                    "rows": []}  # fmt: skip
    rows = []
    for name in ("digits", "fmnist"):
        parts = {"train": images(name, "train", args.per_class)}
        parts["test"] = parts["train"] if name == "digits" else images(name, "test",
                                                                         args.per_class)
        feats: dict[int, dict[str, torch.Tensor]] = {}
        for r in sorted({r for rs in COMBOS.values() for r in rs}):
            start = time.perf_counter()
            feats[r] = {part: l2_normalize(features(x, r)) for part, (x, _) in parts.items()}
            print(f"{name} at {r} x {r}: {time.perf_counter() - start:.0f} s", flush=True)
        for tr, te in splits:
            folds = [tr[3:], tr[:2], tr[1:3]]
            row = {"dataset": name, "train": tr, "test": te, "fold_mean": {}, "test_map": {}}
            for combo, rs in COMBOS.items():
                f = {part: sum(feats[r][part] for r in rs) for part in parts}
                fold = [map_at_r(f["train"], parts["train"][1], v) for v in folds]
                row["fold_mean"][combo] = sum(fold) / len(fold)
                row["test_map"][combo] = map_at_r(f["test"], parts["test"][1], te)
            result["rows"].append(row)
            rows.append([name, f"{tr} -> {te}",
                         " / ".join(f"{v:.4f}" for v in row["fold_mean"].values()),
                         " / ".join(f"{v:.4f}" for v in row["test_map"].values())])
    print(format_table(rows, ["dataset", "train -> test",
                              f"fold mean ({' / '.join(COMBOS)})",
                              f"unseen classes ({' / '.join(COMBOS)})"]))  # fmt: skip
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
