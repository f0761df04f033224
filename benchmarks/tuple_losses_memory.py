"""Peak memory and time of the pair / tuple losses over all pairs of large batches.

Each (loss, batch size) runs in a fresh subprocess: ``B`` normalized random embeddings of
dimension ``--dim`` with ``requires_grad``, labels ``arange(B) // 4`` (4 samples per
class), one forward + backward. Peak memory is the rise of the peak RSS (reset through
``/proc/self/clear_refs``) above the RSS just before the call, inputs excluded, with
glibc's mmap threshold fixed so that freed blocks leave the RSS. The
chunked losses should show a peak that does not grow like ``B^2``: an ``(B, B)`` fp32
matrix alone is 1 GB at ``B = 16384``.

Usage::

    python benchmarks/tuple_losses_memory.py --sizes 1024 4096 --losses ntxent supcon
    python benchmarks/tuple_losses_memory.py --sizes 16384 --losses ntxent

Writes ``benchmarks/results/tuple_losses_memory.json`` (``--json`` renames it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from _common import format_table, machine_info, write_json

LOSSES = [
    "ntxent",
    "supcon",
    "multi_similarity",
    "circle",
    "lifted_structure",
    "generalized_lifted_structure",
    "angular",
    "margin",
    "n_pairs",
    "fast_ap",
    "quadruplet",
]

CHILD = r"""
import json, sys, time, torch
sys.path.insert(0, {here!r})
from _common import peak_rss_mb, reset_peak_rss
from dmlkit.registry import LOSSES
torch.set_num_threads({threads})
g = torch.Generator().manual_seed(0)
x = torch.nn.functional.normalize(torch.randn({b}, {dim}, generator=g), dim=1)
x.requires_grad_(True)
y = torch.arange({b}) // 4
loss = LOSSES.build({name!r})
import torch._dynamo  # noqa: F401  (checkpoint's one-time import, outside time and memory)
base = reset_peak_rss()
start = time.perf_counter()
value = loss(x, y)
value.backward()
seconds = time.perf_counter() - start
finite = bool(torch.isfinite(x.grad).all())
print(json.dumps({{"seconds": seconds, "peak_rise_mb": peak_rss_mb() - base,
                  "value": float(value.detach()), "finite_grad": finite}}))
"""


def run_case(name: str, b: int, dim: int, threads: int, timeout: float) -> dict:
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    code = CHILD.format(here=here, threads=threads, b=b, dim=dim, name=name)
    try:
        # a fixed mmap threshold makes glibc return freed blocks, so the peak RSS tracks
        # live tensors rather than allocator caching
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f}s"}
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--losses", nargs="+", default=LOSSES)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--json", default="tuple_losses_memory.json", help="results file name")
    args = parser.parse_args()
    rows, results = [], []
    for name in args.losses:
        for b in args.sizes:
            res = run_case(name, b, args.dim, args.threads, args.timeout)
            results.append({"loss": name, "batch": b, "dim": args.dim, **res})
            dense_mb = b * b * 4 / 2**20
            rows.append(
                [name, b, res.get("seconds"), res.get("peak_rise_mb"), dense_mb, res.get("error")]
            )
            print(format_table(rows[-1:], ["loss", "B", "s", "peak MB", "BxB fp32 MB", "error"]))
    print()
    print(format_table(rows, ["loss", "B", "s", "peak MB", "BxB fp32 MB", "error"]))
    path = write_json(
        args.json,
        {"machine": machine_info(args.threads), "dim": args.dim, "results": results},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
