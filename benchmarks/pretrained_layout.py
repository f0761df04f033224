"""Backbone feature time: EfficientNet-Lite0 in channels-last (NHWC) layout, as shipped,
against the same network in the contiguous (NCHW) layout.

The recommended unseen-class recipe's features (``configs/unseen_classes.yaml``: 64 x 64
inputs, taps 7, 10, 14 and the head, blocks 7 and 10 on a 2 x 2 grid, pixels pooled to
16 x 16) of ``--images`` Fashion-MNIST-sized grey images (28 x 28, random values: the time
does not depend on them), through :func:`~dmlkit.models.pretrained.feature_cache.
compute_features`, the path a cold run takes. Rounds alternate between the two layouts
(order flipped every round); the table gives the median seconds and images/s, and the
largest difference between the two layouts' features.

    python benchmarks/pretrained_layout.py --threads 1 --out pretrained_layout.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, machine_info, write_json  # noqa: E402

from dmlkit.models.pretrained.feature_cache import compute_features  # noqa: E402
from dmlkit.registry import MODELS  # noqa: E402

RECIPE = {"mode": "frozen", "resolution": 64, "taps": [7, 10, 14, 16], "grid_taps": [7, 10],
          "pixels": 16, "head_type": "residual", "in_channels": 1, "image_size": 28}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON file name under benchmarks/results/")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import dmlkit.models  # noqa: F401  (registers the models)

    shipped = MODELS.get("efficientnet_lite0")(**RECIPE)
    plain = MODELS.get("efficientnet_lite0")(**RECIPE)
    plain.backbone.to(memory_format=torch.contiguous_format)
    x = torch.rand(args.images, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    models = {"channels-last (shipped)": shipped, "contiguous": plain}
    times: dict[str, list[float]] = {name: [] for name in models}
    feats: dict[str, torch.Tensor] = {}
    compute_features(shipped, x[:8]), compute_features(plain, x[:8])  # warm-up
    for r in range(args.rounds):
        for name in (list(models) if r % 2 == 0 else list(models)[::-1]):
            start = time.perf_counter()
            feats[name] = compute_features(models[name], x)
            times[name].append(time.perf_counter() - start)
    diff = float((feats["contiguous"] - feats["channels-last (shipped)"]).abs().max())
    median = {name: statistics.median(t) for name, t in times.items()}
    rows = [[name, f"{median[name]:.2f}", f"{args.images / median[name]:.0f}",
             f"{median['contiguous'] / median[name]:.2f}x"] for name in models]
    print(format_table(rows, ["layout", "median s", "images/s", "speed vs contiguous"]))
    print(f"largest feature difference between the layouts: {diff:.2e}")
    if args.out:
        write_json(args.out, {"machine": machine_info(args.threads), "images": args.images,
                              "rounds": args.rounds, "seconds": times,
                              "max_feature_difference": diff})


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
