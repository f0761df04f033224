"""Miner speed and peak memory: dmlkit against pytorch-metric-learning, side by side;
and offline hard-negative mining over a dataset against a full-matrix search and faiss.

Every case runs in a fresh subprocess (so peak RSS is its own): it builds the same
seeded inputs for both libraries (``B`` random embeddings of dimension ``--dim``, labels
``arange(B) // 4``), resets the kernel's peak-RSS counter, runs the miner once (warm-up,
whose output sizes are compared across libraries), then reports the median time of
``--repeats`` calls and the rise of peak RSS above the RSS before the first call.

``--compare-src DIR`` adds a third side, ``before``: the same dmlkit case run from another
source tree (``DIR`` holds the ``dmlkit`` package, e.g. an earlier version unpacked with
``git archive``), its output checked against the current one (same tuples, same order,
through an order-sensitive digest). ``--mmap-threshold`` fixes glibc's mmap threshold
in the children so that freed blocks leave the RSS and the peak tracks live tensors;
``--cap-gb`` caps each child's address space so that an oversized case fails instead
of exhausting the machine; ``--sides`` runs a subset of the sides (e.g. dmlkit alone at
a size the others cannot reach). Ratios are printed against PML and ``before``, and
``peak / out`` is dmlkit's peak over the bytes of the index tensors it returns.

Offline cases embed nothing: they mine the 10 hardest negatives of each of ``N`` random
items (100 classes) with :func:`dmlkit.training.offline_mining.hardest_negatives`
(chunked), with a dense ``(N, N)`` masked top-k in torch, and, as a speed reference for
the plain search without the class mask, with faiss ``IndexFlatL2`` (k = 10).

Usage::

    python benchmarks/miners.py                       # B in 256 1024 4096, N = 20000
    python benchmarks/miners.py --sizes 256 --offline 5000 --repeats 3
    python benchmarks/miners.py --miners angular hdc --offline --out miners_catalogue.json
    python benchmarks/miners.py --miners multi_similarity --sizes 4096 8192 --offline \
        --repeats 1 --mmap-threshold 131072 --cap-gb 8 --compare-src /tmp/before/src

Writes ``benchmarks/results/miners.json``.
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

MINERS = {
    # name: (dmlkit registry name and params, PML class name and params, output kind)
    "batch_easy_hard": (("batch_easy_hard", {}), ("BatchEasyHardMiner", {})),
    "pair_margin": (("pair_margin", {}), ("PairMarginMiner", {})),
    "multi_similarity": (("multi_similarity", {}), ("MultiSimilarityMiner", {})),
    "distance_weighted": (("distance_weighted", {}), ("DistanceWeightedMiner", {})),
    # the rest of the catalogue (outputs of the random uniform-histogram draws differ,
    # their sizes do not)
    "triplet_margin_semihard": (
        ("triplet_margin", {"type_of_triplets": "semihard"}),
        ("TripletMarginMiner", {"type_of_triplets": "semihard"}),
    ),
    "angular": (("angular", {}), ("AngularMiner", {})),
    "hdc": (("hdc", {}), ("HDCMiner", {})),
    "uniform_histogram": (("uniform_histogram", {}), ("UniformHistogramMiner", {})),
}


def run_case(payload: dict[str, Any]) -> dict[str, Any]:
    """Child process: one (case, size, side); prints a JSON line."""
    import torch
    from _common import peak_rss_mb, reset_peak_rss

    torch.set_num_threads(payload["threads"])
    if payload.get("src"):  # the ``before`` side: dmlkit must come from that tree
        import dmlkit

        if not os.path.realpath(dmlkit.__file__).startswith(os.path.realpath(payload["src"])):
            raise RuntimeError(f"dmlkit imported from {dmlkit.__file__}, not {payload['src']}")
    g = torch.Generator().manual_seed(0)
    size, dim = payload["size"], payload["dim"]
    if payload["kind"] == "miner":
        x = torch.randn(size, dim, generator=g)
        y = torch.arange(size) // 4
        ours, theirs = MINERS[payload["case"]]
        if payload["side"] in ("dmlkit", "before"):
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

    if payload.get("cap_gb"):
        from _common import cap_address_space

        cap_address_space(payload["cap_gb"])
    base = reset_peak_rss()
    out = call()
    peak = peak_rss_mb() - base
    tensors = list(out) if isinstance(out, tuple) else [torch.as_tensor(out)]
    sizes = [int(t.shape[0]) for t in tensors]
    out_mb = sum(t.numel() * t.element_size() for t in tensors) / 2**20
    digest = [_digest(t) for t in tensors]
    del out, tensors
    times = []
    for _ in range(payload["repeats"]):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "peak_mb": peak, "sizes": sizes,
            "out_mb": out_mb, "digest": digest}  # fmt: skip


def _digest(t: Any) -> int:
    """An order-sensitive checksum of an index tensor, in blocks (bounded memory)."""
    import torch

    flat, total, step = t.reshape(-1).long(), 0, 1 << 20
    for a in range(0, flat.numel(), step):
        w = torch.arange(a, min(a + step, flat.numel())) % 1009 + 1  # (b,)
        total = (total + int((flat[a : a + step] * w).sum())) % (1 << 61)
    return total


def spawn(payload: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(payload)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
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


def _ratio(res: dict[str, Any], num: str, den: str, key: str) -> float:
    """``res[num][key] / res[den][key]``, NaN when either side is missing or failed."""
    a, b = res.get(num, {}), res.get(den, {})
    if key not in a or key not in b or not b[key]:
        return float("nan")
    return a[key] / b[key]


def _versus_before(res: dict[str, Any]) -> str:
    """Whether dmlkit's output equals the ``before`` side's (same tuples, same order)."""
    ours, before = res.get("dmlkit", {}), res.get("before")
    if before is None:
        return ""
    if "error" in ours or "error" in before:
        return "error: " + str(ours.get("error") or before.get("error"))
    return "same" if ours["digest"] == before["digest"] else "DIFFERENT"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--offline", type=int, nargs="*", default=[20000])
    parser.add_argument("--miners", nargs="+", default=list(MINERS), choices=list(MINERS))
    parser.add_argument("--out", default="miners.json")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sides", nargs="+", default=["dmlkit", "pml", "before"],
                        choices=["dmlkit", "pml", "before"])  # fmt: skip
    parser.add_argument(
        "--compare-src",
        default=None,
        help="source tree of another dmlkit version, run as side 'before'",
    )
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        default=None,
        help="glibc MALLOC_MMAP_THRESHOLD_ for the children, bytes",
    )
    parser.add_argument(
        "--cap-gb",
        type=float,
        default=None,
        help="address space each child may add after building its inputs",
    )
    parser.add_argument("--child", type=str, default=None)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(run_case(json.loads(args.child))))
        return
    common = {"dim": args.dim, "repeats": args.repeats, "threads": args.threads,
              "cap_gb": args.cap_gb}  # fmt: skip
    env = dict(os.environ)
    if args.mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    sides = [s for s in args.sides if s != "before" or args.compare_src]
    before_env = {**env, "PYTHONPATH": os.pathsep.join(
        p for p in (args.compare_src, env.get("PYTHONPATH")) if p)}  # fmt: skip
    rows, records = [], []
    for case in args.miners:
        for size in args.sizes:
            res = {}
            for side in sides:
                payload = {**common, "kind": "miner", "case": case, "size": size, "side": side}
                if side == "before":
                    res[side] = spawn({**payload, "src": args.compare_src}, before_env)
                else:
                    res[side] = spawn(payload, env)
            records.append({"case": case, "size": size, **res})
            ms = {k: v.get("seconds", float("nan")) * 1e3 for k, v in res.items()}
            mb = {k: v.get("peak_mb", "error") for k, v in res.items()}
            ours = res.get("dmlkit", {})
            sizes = (
                _compare_sizes(ours, res["pml"]) if "pml" in res and "dmlkit" in res
                else str(ours.get("sizes", ours.get("error", "")))
            )  # fmt: skip
            rows.append([
                case, size,
                ms.get("dmlkit"), ms.get("pml"), ms.get("before"),
                _ratio(res, "dmlkit", "pml", "seconds"),
                _ratio(res, "dmlkit", "before", "seconds"),
                mb.get("dmlkit"), mb.get("pml"), mb.get("before"),
                _ratio(res, "dmlkit", "pml", "peak_mb"),
                _ratio(res, "dmlkit", "before", "peak_mb"),
                ours.get("out_mb"),
                ours["peak_mb"] / ours["out_mb"] if ours.get("out_mb") else float("nan"),
                sizes, _versus_before(res),
            ])  # fmt: skip
    print(format_table(rows, [
        "miner", "B", "dmlkit ms", "pml ms", "before ms", "ms / pml", "ms / before",
        "dmlkit MB", "pml MB", "before MB", "MB / pml", "MB / before", "out MB",
        "peak / out", "output sizes", "vs before",
    ]))  # fmt: skip
    off_rows = []
    for size in args.offline:
        res = {
            side: spawn({**common, "dim": 64, "kind": "offline", "size": size, "side": side}, env)
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
    from _common import run_main

    run_main(main)
