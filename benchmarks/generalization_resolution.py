"""Could the input resolution be chosen on the training classes?

The recipe's untrained features (``configs/unseen_classes.yaml``'s taps, grid and pixel
group, ``head_type: none``) are computed at several resolutions. They use no labels, so
their leave-one-out MAP@R on the training classes is a fair, training-only score of a
resolution; this script prints it beside the MAP@R on the unseen test classes of every
class split (the four protocols of ``generalization.py`` and its ``--splits other``: five per
dataset),
and whether the resolution the training classes pick is the one the test classes
would have picked. Digits: all images; Fashion-MNIST: ``--per-class`` images of each
training class from the official training split and of each test class from the test
split (seed 0).

    python benchmarks/generalization_resolution.py --out generalization_resolution.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, machine_info, write_json  # noqa: E402
from generalization import SPLITS  # noqa: E402

from dmlkit.data.digits import load_digits  # noqa: E402
from dmlkit.data.idx import load_fashion_mnist  # noqa: E402
from dmlkit.evaluation import retrieval_metrics  # noqa: E402
from dmlkit.models.pretrained.efficientnet_lite0 import EfficientNetLite0Embedder  # noqa: E402

RECIPE = {"taps": [7, 10, 14, 16], "grid_taps": [7, 10], "pixels": 16, "head_type": "none"}


def images(name: str, part: str, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, 1, H, W)`` images in [0, 1] and ``(n,)`` labels (Fashion-MNIST: ``per_class``
    of each class, seeded)."""
    data = load_digits() if name == "digits" else load_fashion_mnist(part)
    x, y = torch.as_tensor(data.x).float(), torch.as_tensor(data.labels)
    if name == "digits":
        return x, y
    rng = np.random.default_rng(0)
    rows = np.sort(np.concatenate([
        rng.choice(np.flatnonzero(y.numpy() == c), per_class, replace=False)
        for c in range(10)]))  # fmt: skip
    return x[rows], y[rows]


def features(x: torch.Tensor, resolution: int) -> torch.Tensor:
    model = EfficientNetLite0Embedder(
        resolution=resolution, image_size=tuple(x.shape[-2:]), in_channels=1, **RECIPE
    ).eval()
    with torch.no_grad():
        return torch.cat([model(x[i : i + 256]) for i in range(0, len(x), 256)])


def map_at_r(f: torch.Tensor, y: torch.Tensor, classes: list[int]) -> float:
    rows = torch.isin(y, torch.tensor(classes))
    return float(retrieval_metrics(f[rows], y[rows], metric="cosine")["map_at_r"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=200)
    p.add_argument("--digits-resolutions", type=int, nargs="+", default=[32, 48, 64, 96, 128])
    p.add_argument("--fmnist-resolutions", type=int, nargs="+", default=[64, 96, 128])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON file name under benchmarks/results/")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    splits = [pair for group in SPLITS.values() for pair in group]
    result: dict = {"machine": machine_info(args.threads), "per_class": args.per_class,
                    "rows": []}  # fmt: skip
    for name, resolutions in (("digits", args.digits_resolutions),
                              ("fmnist", args.fmnist_resolutions)):  # fmt: skip
        parts = {"train": images(name, "train", args.per_class)}
        parts["test"] = parts["train"] if name == "digits" else images(name, "test", args.per_class)
        scores: dict[int, dict] = {}
        for r in resolutions:
            start = time.perf_counter()
            f = {part: features(x, r) for part, (x, _) in parts.items()}
            print(f"{name} at {r} x {r}: {time.perf_counter() - start:.0f} s", flush=True)
            scores[r] = {(tuple(tr), tuple(te)): (map_at_r(f["train"], parts["train"][1], tr),
                                                  map_at_r(f["test"], parts["test"][1], te))
                         for tr, te in splits}  # fmt: skip
        for tr, te in splits:
            key = (tuple(tr), tuple(te))
            on_train = max(resolutions, key=lambda r: scores[r][key][0])
            on_test = max(resolutions, key=lambda r: scores[r][key][1])
            result["rows"].append({
                "dataset": name, "train": tr, "test": te,
                "train_map_at_r": {r: scores[r][key][0] for r in resolutions},
                "test_map_at_r": {r: scores[r][key][1] for r in resolutions},
                "picked_on_train": on_train, "best_on_test": on_test,
                "test_loss_of_pick": scores[on_test][key][1] - scores[on_train][key][1],
            })  # fmt: skip
    print(format_table(
        [[row["dataset"], f"{row['train']} -> {row['test']}",
          " / ".join(f"{v:.4f}" for v in row["train_map_at_r"].values()),
          " / ".join(f"{v:.4f}" for v in row["test_map_at_r"].values()),
          row["picked_on_train"], row["best_on_test"], f"{row['test_loss_of_pick']:.4f}"]
         for row in result["rows"]],
        ["dataset", "train -> test", "training classes (per resolution)",
         "test classes (per resolution)", "picked on train", "best on test",
         "test MAP@R lost"]))  # fmt: skip
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
