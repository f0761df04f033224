"""Classifier / proxy losses at large batch: time and peak memory against pytorch-metric-learning.

Every (loss, library) runs forward + backward in a fresh subprocess on the same seeded
inputs: ``B`` random embeddings of dimension ``--dim``, labels ``arange(B) % C``, class
weights copied from one seeded tensor (transposed for pytorch-metric-learning's
``(D, C)`` layouts). Reported: the loss values (must agree), the median time of the timed
repeats after one warm-up (the minimum is reported: the least disturbed by other load
on a shared machine), and the peak-RSS rise above the RSS before the first call
(all of torch's allocations during forward and backward). Workers run with
``MALLOC_MMAP_THRESHOLD_=65536`` so freed large blocks go back to the system and the
RSS tracks live tensors rather than glibc's heap high-water mark. Address space is
capped so a case that would exhaust the machine fails instead.

Usage::

    python benchmarks/classifier_losses.py                       # B=16384, D=128, C=1024
    python benchmarks/classifier_losses.py --batch 4096 --classes 8192 --losses arcface

Writes ``benchmarks/results/classifier_losses.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from _common import format_table, machine_info, write_json

#: name -> (dmlkit registry name, dmlkit params, PML class, PML params, PML weight attribute)
CASES: dict[str, tuple[str, dict, str, dict, str]] = {
    "normalized_softmax": ("normalized_softmax", {}, "NormalizedSoftmaxLoss", {}, "W"),
    "cosface": ("cosface", {}, "CosFaceLoss", {}, "W"),
    "arcface": ("arcface", {}, "ArcFaceLoss", {}, "W"),
    "subcenter_arcface": ("subcenter_arcface", {"sub_centers": 3}, "SubCenterArcFaceLoss",
                          {"sub_centers": 3}, "W"),
    "sphereface": ("sphereface", {}, "SphereFaceLoss", {}, "W"),
    "proxy_nca": ("proxy_nca", {}, "ProxyNCALoss", {}, "proxies"),
    "proxy_anchor": ("proxy_anchor", {}, "ProxyAnchorLoss", {}, "proxies"),
    "soft_triple": ("soft_triple", {"centers_per_class": 10}, "SoftTripleLoss",
                    {"centers_per_class": 10}, "fc"),
}


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import gc

    import torch
    from _common import cap_address_space, peak_rss_mb, reset_peak_rss
    from pytorch_metric_learning import losses as pml_losses

    from dmlkit.registry import LOSSES

    torch.set_num_threads(spec["threads"])
    out: dict[str, Any] = {"status": "ok"}
    cap_address_space(spec["mem_cap_gb"])
    b, d, c = spec["B"], spec["dim"], spec["C"]
    name, params, pml_name, pml_params, attr = CASES[spec["loss"]]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, d, generator=g).requires_grad_(True)
    y = torch.arange(b) % c
    if spec["lib"] == "dmlkit":
        loss = LOSSES.build(name, num_classes=c, embedding_size=d, **params)
        p = next(loss.parameters())
    else:
        loss = getattr(pml_losses, pml_name)(num_classes=c, embedding_size=d, **pml_params)
        p = getattr(loss, attr)
    rows = p.shape[0] if p.shape[1] == d else p.shape[1]
    w = torch.randn(rows, d, generator=g)
    with torch.no_grad():
        p.copy_(w if p.shape[1] == d else w.T)

    def once() -> tuple[float, float]:
        x.grad = None
        loss.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        value = loss(x, y)
        value.backward()
        return float(value.detach()), time.perf_counter() - t0

    gc.collect()
    base = reset_peak_rss()
    try:
        out["value"], first = once()
        times = [once()[1] for _ in range(max(1, min(spec["repeats"], int(30 / first))))]
    except (MemoryError, RuntimeError) as e:
        out.update(status="fail (mem cap)", error=str(e)[:200])
        return out
    out.update(median_s=statistics.median(times), min_s=min(times), peak_mb=peak_rss_mb() - base)
    return out


def _value(res: dict[str, Any]) -> str:
    return f"{res['value']:.6g}" if "value" in res else res["status"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16384)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--classes", type=int, default=1024)
    ap.add_argument("--losses", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--order", choices=["dmlkit-first", "pml-first"], default="dmlkit-first")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mem-cap-gb", type=float, default=12.0)
    ap.add_argument("--out", default="classifier_losses.json",
                    help="file in benchmarks/results (an absolute path is used as is)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(run_worker(json.loads(args.worker))), flush=True)
        return 0

    info = machine_info(args.threads)
    print(f"B={args.batch} D={args.dim} C={args.classes}; {args.threads} threads; "
          f"torch {info['torch']}; address space capped at +{args.mem_cap_gb} GB\n", flush=True)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    rows, records = [], []
    for name in args.losses:
        res = {}
        libs = ("dmlkit", "pml") if args.order == "dmlkit-first" else ("pml", "dmlkit")
        for lib in libs:
            spec = {"loss": name, "lib": lib, "B": args.batch, "dim": args.dim,
                    "C": args.classes, "repeats": args.repeats, "threads": args.threads,
                    "mem_cap_gb": args.mem_cap_gb}
            proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                                  capture_output=True, text=True, env=env)
            line = [s for s in proc.stdout.splitlines() if s.startswith("RESULT ")]
            res[lib] = (json.loads(line[0][7:]) if line
                        else {"status": f"exit {proc.returncode}", "error": proc.stderr[-300:]})
        ok = all(r["status"] == "ok" for r in res.values())
        rows.append([
            name,
            _value(res["dmlkit"]),
            _value(res["pml"]),
            res["dmlkit"].get("min_s", float("nan")) * 1e3,
            res["pml"].get("min_s", float("nan")) * 1e3,
            res["dmlkit"]["min_s"] / res["pml"]["min_s"] if ok else None,
            res["dmlkit"].get("peak_mb"),
            res["pml"].get("peak_mb"),
            res["dmlkit"]["peak_mb"] / max(res["pml"]["peak_mb"], 1e-9) if ok else None,
        ])
        records.append({"loss": name, **{lib: r for lib, r in res.items()}})
        print(name, {lib: {k: v for k, v in r.items() if k != "error"} for lib, r in res.items()},
              flush=True)
    headers = ["loss", "value dmlkit", "value pml", "ms dmlkit", "ms pml", "time ratio",
               "peak MB dmlkit", "peak MB pml", "mem ratio"]
    print("\n" + format_table(rows, headers))
    path = write_json(args.out, {"machine": info, "args": vars(args), "results": records})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
