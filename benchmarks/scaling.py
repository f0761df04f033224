"""How the costs grow: training step time vs batch size (with and without gradient
caching), training throughput on 1 and 2 processes (torchrun, gloo, CPU), and faiss index
build time, memory and queries/s vs gallery size.

Parts (``--parts``):

``batch``
    One optimizer step of an MLP (64 -> 256 -> 128) under the contrastive loss with all
    in-batch pairs on random digit-like inputs, batch ``--batches`` (256 ... 16384), with
    ``training.grad_cache_chunk`` unset and set to ``--chunk``. The pair matrix is B x B,
    so the loss part grows O(B^2); the encoder part O(B). Peak RSS per step is the
    growth of the process's ``ru_maxrss`` over the step (reset before each).
``ddp``
    ``python -m torch.distributed.run --standalone --nproc-per-node P -m dmlkit train`` on
    a small digits config, P = 1 and 2: wall seconds of the whole run (incl. start-up).
``index``
    Galleries of ``--galleries`` vectors (the clustered set of index_million.py) into a
    faiss Flat and an IVF-PQ (+refine) index: build seconds, RSS growth, queries/s.

Usage::

    python benchmarks/scaling.py --parts batch index --batches 256 1024 4096 \
        --galleries 10000 100000

Writes ``benchmarks/results/scaling.json``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import format_table, machine_info, peak_rss_mb, reset_peak_rss, write_json

CONFIG = """
name: scaling
data: {name: digits}
model: {name: mlp, dim: 32, hidden: [128]}
loss: {name: contrastive}
sampler: {name: m_per_class, m: 8, batch_size: 80}
training: {epochs: 2, num_threads: 1, progress: false}
"""


def part_batch(batches: list[int], chunk: int) -> list[dict]:
    import torch

    from dmlkit.config.schema import Config
    from dmlkit.data.dataset import ArrayDataset
    from dmlkit.training.trainer import Trainer

    torch.set_num_threads(1)
    rows = []
    for b in batches:
        x = torch.randn(b, 64)
        y = torch.randint(0, 100, (b,))
        data = ArrayDataset(x, y)
        for gc in (None, chunk):
            if gc is not None and gc >= b:
                continue
            cfg = Config.from_dict({
                "data": {"name": "digits"},
                "model": {"name": "mlp", "in_features": 64, "dim": 128, "hidden": [256]},
                "loss": {"name": "contrastive"},
                "training": {"epochs": 1, "grad_cache_chunk": gc, "device": "cpu"},
            })
            trainer = Trainer(cfg, data, sampler=[list(range(b))], log=None)
            base = reset_peak_rss()
            t = time.perf_counter()
            loss = trainer.batch_loss((x, y))
            trainer.optimizer.zero_grad()
            loss.backward()
            trainer.optimizer.step()
            sec = time.perf_counter() - t
            rows.append({"batch": b, "grad_cache_chunk": gc, "seconds": sec,
                         "peak_rss_growth_mb": peak_rss_mb() - base})
            print(rows[-1], flush=True)
    return rows


def part_ddp(procs: list[int]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "scaling.yaml"
        cfg.write_text(CONFIG)
        for p in procs:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nproc-per-node", str(p), "-m", "dmlkit", "train", str(cfg),
                   "--out", str(Path(tmp) / f"run{p}")]
            t = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True)
            sec = time.perf_counter() - t
            if res.returncode:
                raise RuntimeError(res.stderr[-2000:])
            rows.append({"processes": p, "seconds": sec})
            print(rows[-1], flush=True)
    return rows


def part_index(galleries: list[int], queries: int) -> list[dict]:
    import faiss
    from index_million import draw

    faiss.omp_set_num_threads(1)
    rows = []
    q = draw(queries, 128, 2000, 0, 10**9)
    for n in galleries:
        x = np.concatenate([draw(min(65536, n - s), 128, 2000, 0, s)
                            for s in range(0, n, 65536)])
        flat = faiss.IndexFlatL2(128)
        base = reset_peak_rss()
        t = time.perf_counter()
        flat.add(x)
        rows.append({"gallery": n, "index": "Flat", "build_s": time.perf_counter() - t,
                     "rss_growth_mb": peak_rss_mb() - base})
        _, gt = flat.search(q, 10)
        t = time.perf_counter()
        flat.search(q, 10)
        rows[-1]["qps"] = queries / (time.perf_counter() - t)
        rows[-1]["recall_at_10"] = 1.0
        nlist = max(16, int(4 * np.sqrt(n)) // 16 * 16)
        ivf = faiss.index_factory(128, f"IVF{nlist},PQ32,RFlat")
        base = reset_peak_rss()
        t = time.perf_counter()
        ivf.train(x[: min(n, 50 * nlist)])
        ivf.add(x)
        build = time.perf_counter() - t
        ps = faiss.ParameterSpace()
        ps.set_index_parameter(ivf, "nprobe", max(1, nlist // 32))
        ps.set_index_parameter(ivf, "k_factor_rf", 8)
        t = time.perf_counter()
        _, ids = ivf.search(q, 10)
        qps = queries / (time.perf_counter() - t)
        rec = float(np.mean([len(set(gt[r]) & set(ids[r])) / 10 for r in range(queries)]))
        rows.append({"gallery": n, "index": f"IVF{nlist},PQ32,RFlat nprobe={nlist // 32}",
                     "build_s": build, "rss_growth_mb": peak_rss_mb() - base, "qps": qps,
                     "recall_at_10": rec})
        print(rows[-2], rows[-1], sep="\n", flush=True)
        del x, flat, ivf
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", default=["batch", "ddp", "index"])
    p.add_argument("--batches", nargs="+", type=int, default=[256, 1024, 4096, 16384])
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--procs", nargs="+", type=int, default=[1, 2])
    p.add_argument("--galleries", nargs="+", type=int, default=[10_000, 100_000, 1_000_000])
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--json", default="scaling.json", help="Result file name.")
    args = p.parse_args()
    out: dict = {"args": vars(args), "machine": machine_info(1)}
    if "batch" in args.parts:
        out["batch"] = part_batch(args.batches, args.chunk)
        print(format_table([[r["batch"], r["grad_cache_chunk"] or "-", f"{r['seconds']:.3f}",
                             f"{r['peak_rss_growth_mb']:.0f}"] for r in out["batch"]],
                           ["batch", "grad cache chunk", "step s", "peak RSS growth MB"]))
    if "ddp" in args.parts:
        out["ddp"] = part_ddp(args.procs)
        print(format_table([[r["processes"], f"{r['seconds']:.1f}"] for r in out["ddp"]],
                           ["processes", "run s"]))
    if "index" in args.parts:
        out["index"] = part_index(args.galleries, args.queries)
        print(format_table([[r["gallery"], r["index"], f"{r['build_s']:.2f}",
                             f"{r['rss_growth_mb']:.0f}", f"{r['qps']:.0f}",
                             f"{r['recall_at_10']:.3f}"] for r in out["index"]],
                           ["gallery", "index", "build s", "RSS growth MB", "queries/s",
                            "recall@10"]))
    write_json(args.json, out)


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
