"""Mixed precision on CPU: the default digits job in fp32 and under bf16 autocast.

    python benchmarks/amp_digits.py

Trains ``configs/digits.yaml`` twice (``training.amp`` false, then true; bf16 autocast
on CPU, losses computed in fp32) and prints held-out MAP@R, P@1 and the time of each.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_json  # noqa: E402

from dmlkit.config import load_config  # noqa: E402
from dmlkit.training import train_run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="amp_digits.json",
                        help="file in benchmarks/results (an absolute path is used as is)")
    args = parser.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for amp in (False, True):
            cfg = load_config(ROOT / "configs" / "digits.yaml")
            cfg.training.amp, cfg.training.progress = amp, False
            start = time.perf_counter()
            result = train_run(cfg, Path(tmp) / f"amp_{amp}", log=lambda *a: None)
            name = "bf16 autocast" if amp else "fp32"
            rows[name] = {"map_at_r": result.metrics["map_at_r"],
                          "precision_at_1": result.metrics["precision_at_1"],
                          "seconds": time.perf_counter() - start}
            print(f"{name:14s} MAP@R {rows[name]['map_at_r']:.4f}  P@1 "
                  f"{rows[name]['precision_at_1']:.4f}  {rows[name]['seconds']:.0f} s", flush=True)
    diff = rows["fp32"]["map_at_r"] - rows["bf16 autocast"]["map_at_r"]
    print(f"MAP@R difference fp32 - bf16: {diff:+.4f}")
    print(f"wrote {write_json(args.out, rows)}")


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
