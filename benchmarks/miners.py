"""Miner speed and peak memory: dmlkit against pytorch-metric-learning, side by side;
and offline hard-negative mining over a dataset against a full-matrix search and faiss.

Every case runs in a fresh subprocess (so peak RSS is its own): it builds the same
seeded inputs for both libraries (``B`` random embeddings of dimension ``--dim``, labels
``arange(B) // 4``), resets the kernel's peak-RSS counter, runs the miner once (warm-up,
whose output sizes are compared across libraries), then reports the median time of
``--repeats`` calls and the rise of peak RSS above the RSS before the first call.

Offline cases embed nothing: they mine the 10 hardest negatives of each of ``N`` random
items (100 classes) with :func:`dmlkit.training.offline_mining.hardest_negatives`
(chunked), with a dense ``(N, N)`` masked top-k in torch, and, as a speed reference for
the plain search without the class mask, with faiss ``IndexFlatL2`` (k = 10).

Usage::

    python benchmarks/miners.py                       # B in 256 1024 4096, N = 20000
    python benchmarks/miners.py --sizes 256 --offline 5000 --repeats 3
    python benchmarks/miners.py --miners angular hdc --offline --out miners_catalogue.json

Writes ``benchmarks/results/miners.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

from _common import format_table, machine_info, write_json

MINERS = {
    # name: (dmlkit registry name and params, PML class name and params, output kind)
    "batch_easy_hard": (("batch_easy_hard", {}), ("BatchEasyHardMiner", {})),
    "pair_margin": (("pair_margin", {}), ("PairMarginMiner", {})),
    "multi_similarity": (("multi_similarity", {}), ("MultiSimilarityMiner", {})),
    "distance_weighted": (("distance_weighted", {}), ("DistanceWeightedMiner", {})),
    # the rest of the catalogue (outputs of the random uniform-histogram draws differ,
    # their sizes do not)
    "triplet_margin_semihard": (("triplet_margin", {"type_of_triplets": "semihard"}),
                                ("TripletMarginMiner", {"type_of_triplets": "semihard"})),
    "angular": (("angular", {}), ("AngularMiner", {})),
    "hdc": (("hdc", {}), ("HDCMiner", {})),
    "uniform_histogram": (("uniform_histogram", {}), ("UniformHistogramMiner", {})),
}


def run_case(payload: dict[str, Any]) -> dict[str, Any]:
    """Child process: one (case, size, side); prints a JSON line."""
    import torch
    from _common import peak_rss_mb, reset_peak_rss

    torch.set_num_threads(payload["threads"])
    g = torch.Generator().manual_seed(0)
    size, dim = payload["size"], payload["dim"]
    if payload["kind"] == "miner":
        x = torch.randn(size, dim, generator=g)
        y = torch.arange(size) // 4
        ours, theirs = MINERS[payload["case"]]
        if payload["side"] == "dmlkit":
            from dmlkit.registry import MINERS as REG

            miner = REG.build(ours[0], **ours[1])
        else:
            from pytorch_metric_learning import miners

            torch.manual_seed(0)
            miner = getattr(miners, theirs[0])(**theirs[1])

        def call():
            return miner(x, y)
    else:
        x = torch.randn(size, dim, generator=g)
        y = torch.arange(size) % 100
        if payload["side"] == "dmlkit":
            from dmlkit.training.offline_mining import hardest_negatives

            def call():
                return hardest_negatives(x, y, 10)[1]
        elif payload["side"] == "dense":
            xn = torch.nn.functional.normalize(x, dim=1)

            def call():
                d = torch.cdist(xn, xn)  # (N, N)
                d.masked_fill_(y[:, None] == y[None, :], float("inf"))
                return d.topk(10, dim=1, largest=False).indices
        else:
            import faiss

            faiss.omp_set_num_threads(payload["threads"])
            xn = torch.nn.functional.normalize(x, dim=1).numpy()

            def call():
                index = faiss.IndexFlatL2(dim)
                index.add(xn)
                return index.search(xn, 10)[1]
    base = reset_peak_rss()
    out = call()
    peak = peak_rss_mb() - base
    sizes = [len(t) for t in out] if isinstance(out, tuple) else [int(out.shape[0])]
    times = []
    for _ in range(payload["repeats"]):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "peak_mb": peak, "sizes": sizes}


def spawn(payload: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(payload)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _compare_sizes(ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    """Output tuple sizes of both sides (``=`` when equal), or an error."""
    if "error" in ours or "error" in theirs:
        return str(ours.get("error") or theirs.get("error"))
    same = " = " if ours["sizes"] == theirs["sizes"] else " vs "
    return str(ours["sizes"]) + same + str(theirs["sizes"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--offline", type=int, nargs="*", default=[20000])
    parser.add_argument("--miners", nargs="+", default=list(MINERS), choices=list(MINERS))
    parser.add_argument("--out", default="miners.json")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=str, default=None)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(run_case(json.loads(args.child))))
        return
    common = {"dim": args.dim, "repeats": args.repeats, "threads": args.threads}
    rows, records = [], []
    for case in args.miners:
        for size in args.sizes:
            res = {
                side: spawn({**common, "kind": "miner", "case": case, "size": size, "side": side})
                for side in ("dmlkit", "pml")
            }
            records.append({"case": case, "size": size, **res})
            ours, theirs = res["dmlkit"], res["pml"]
            ok = "error" not in ours and "error" not in theirs
            rows.append([
                case, size,
                ours.get("seconds", float("nan")) * 1e3, theirs.get("seconds", float("nan")) * 1e3,
                ours["seconds"] / theirs["seconds"] if ok else float("nan"),
                ours.get("peak_mb"), theirs.get("peak_mb"),
                _compare_sizes(ours, theirs),
            ])  # fmt: skip
    print(format_table(rows, ["miner", "B", "dmlkit ms", "pml ms", "ratio", "dmlkit MB",
                              "pml MB", "output sizes"]))  # fmt: skip
    off_rows = []
    for size in args.offline:
        res = {
            side: spawn({**common, "dim": 64, "kind": "offline", "size": size, "side": side})
            for side in ("dmlkit", "dense", "faiss")
        }
        records.append({"case": "offline_hardest_negatives", "size": size, **res})
        for side, r in res.items():
            off_rows.append([side, size, r.get("seconds", float("nan")), r.get("peak_mb"),
                             r.get("error", "")])  # fmt: skip
    print()
    print(format_table(off_rows, ["offline k=10", "N", "seconds", "peak MB", "error"]))
    path = write_json(args.out, {"machine": machine_info(args.threads), "results": records})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
