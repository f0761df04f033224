"""Nearest-neighbour search: dmlkit's ExactIndex against faiss Flat / IVF / HNSW.

A gallery of ``--gallery`` vectors (default 1M, dimension 128) with cluster structure
(``center[cluster] + noise``, 1000 clusters) and ``--queries`` queries from the same
distribution. Each index is built once (build time includes training), then searched
for the ``k = 10`` nearest neighbours of every query; queries/s is the median of
``--repeats`` searches. Recall@10 is measured against ExactIndex (the reference); the
Flat row also checks that faiss's exact index returns the same neighbours.

``--flat-only`` instead times ExactIndex against faiss's exact flat index of the same
metric (``IndexFlatL2``; ``IndexFlatIP``, on L2-normalized vectors for cosine) on the
same threads, alternating the two ``--repeats`` times (the order flipping each repeat, so
machine load hits both alike), and reports the ratio of the medians and of each pair.

Usage::

    python benchmarks/index.py                          # 1M gallery
    python benchmarks/index.py --gallery 100000 --queries 500 --skip HNSW32
    python benchmarks/index.py --flat-only --gallery 200000 --repeats 7 --metrics l2 ip cosine

Writes ``benchmarks/results/index.json`` (``index_flat.json`` with ``--flat-only``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from _common import format_table, machine_info, write_json

#: factory -> the search-parameter settings tried on the one built index
FACTORIES = {"Flat": [{}], "IVF1024,Flat": [{"nprobe": 8}, {"nprobe": 32}],
             "HNSW32": [{"ef_search": 32}, {"ef_search": 128}]}


def make_data(n: int, q: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((1000, dim)).astype(np.float32)
    gallery = centers[rng.integers(0, 1000, n)] + rng.standard_normal((n, dim), np.float32)
    queries = centers[rng.integers(0, 1000, q)] + rng.standard_normal((q, dim), np.float32)
    return gallery, queries


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = [len(np.intersect1d(a, b)) for a, b in zip(found, truth, strict=True)]
    return float(np.mean(hits) / truth.shape[1])


def build(index, gallery) -> float:
    t = time.perf_counter()
    index.add(gallery)
    return time.perf_counter() - t


def search(index, queries, k, repeats) -> tuple[float, np.ndarray]:
    times, ids = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        _, ids = index.search(queries, k)
        times.append(time.perf_counter() - t)
    return queries.shape[0] / statistics.median(times), ids


def flat_comparison(args, gallery: np.ndarray, queries: np.ndarray) -> None:
    """ExactIndex vs faiss's flat index of each metric, interleaved, same threads."""
    import faiss

    from dmlkit.index import ExactIndex

    rows, records = [], []
    for metric in args.metrics:
        ours = ExactIndex(args.dim, metric)
        ours.add(gallery)
        g = gallery
        if metric == "cosine":
            g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
        flat = faiss.IndexFlatL2(args.dim) if metric == "l2" else faiss.IndexFlatIP(args.dim)
        flat.add(g)

        def run_faiss(q=queries, flat=flat, metric=metric):
            if metric == "cosine":
                q = q / np.linalg.norm(q, axis=1, keepdims=True)
            return flat.search(q, args.k)

        runs = [("exact", lambda ours=ours: ours.search(queries, args.k)), ("faiss", run_faiss)]
        runs[0][1](), runs[1][1]()  # warm-up (first-call costs, page faults)
        times: dict[str, list[float]] = {"exact": [], "faiss": []}
        found: dict[str, np.ndarray] = {}
        for rep in range(args.repeats):
            for name, fn in runs if rep % 2 == 0 else runs[::-1]:
                t = time.perf_counter()
                _, found[name] = fn()
                times[name].append(time.perf_counter() - t)
        pair = [a / b for a, b in zip(times["exact"], times["faiss"], strict=True)]
        ratio = statistics.median(times["exact"]) / statistics.median(times["faiss"])
        same = float((found["exact"] == found["faiss"]).mean())
        rec = recall(found["exact"], found["faiss"])
        records.append({"metric": metric, "exact_s": times["exact"], "faiss_s": times["faiss"],
                        "ratio_of_medians": ratio, "pair_ratios": pair,
                        "identical_ids": same, "recall_vs_faiss": rec})
        rows.append([metric, statistics.median(times["exact"]), statistics.median(times["faiss"]),
                     ratio, statistics.median(pair), min(pair), max(pair), same])
        print(f"{metric}: exact/faiss {ratio:.3f} (pairs {min(pair):.2f}-{max(pair):.2f}), "
              f"identical ids {same:.5f}", flush=True)
    print(format_table(rows, ["metric", "exact s", "faiss s", "exact/faiss (medians)",
                              "median pair ratio", "min", "max", "identical ids"]))
    path = write_json(args.out, {"machine": machine_info(args.threads),
                                 "args": vars(args), "results": records})
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gallery", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], help="factories to leave out")
    parser.add_argument("--flat-only", action="store_true",
                        help="only ExactIndex vs faiss's flat index, interleaved")
    parser.add_argument("--metrics", nargs="+", default=["l2"], choices=["l2", "ip", "cosine"],
                        help="metrics of --flat-only")
    parser.add_argument("--out", default=None,
                        help="file in benchmarks/results (an absolute path is used as is); "
                        "default index.json, index_flat.json with --flat-only")
    args = parser.parse_args()
    if args.out is None:
        args.out = "index_flat.json" if args.flat_only else "index.json"
    torch.set_num_threads(args.threads)
    import faiss

    from dmlkit.index import ExactIndex, FaissIndex

    faiss.omp_set_num_threads(args.threads)
    gallery, queries = make_data(args.gallery, args.queries, args.dim, 0)
    if args.flat_only:
        flat_comparison(args, gallery, queries)
        return
    rows, records = [], []
    exact = ExactIndex(args.dim, "l2")
    seconds = build(exact, gallery)
    qps, truth = search(exact, queries, args.k, args.repeats)
    rows.append(["ExactIndex (torch)", "", seconds, qps, 1.0])
    records.append({"index": "exact", "build_s": seconds, "qps": qps, "recall_at_10": 1.0})
    print(f"exact: {qps:.0f} q/s", flush=True)
    del exact
    for factory, settings in FACTORIES.items():
        if factory in args.skip:
            continue
        index = FaissIndex(args.dim, "l2", factory)
        seconds = build(index, gallery)
        for params in settings:
            if params:
                index.nprobe, index.ef_search = params.get("nprobe"), params.get("ef_search")
                index._apply_search_params()
            qps, ids = search(index, queries, args.k, args.repeats)
            r = recall(ids, truth)
            label = ", ".join(f"{k}={v}" for k, v in params.items())
            rows.append([f"faiss {factory}", label, seconds, qps, r])
            records.append({"index": factory, "params": params, "build_s": seconds, "qps": qps,
                            "recall_at_10": r, "identical_ids": float((ids == truth).mean())})
            print(f"{factory} {label}: {qps:.0f} q/s, recall@10 {r:.4f}, build {seconds:.1f} s",
                  flush=True)
        del index
    print(format_table(rows, ["index", "params", "build s", "queries/s", "recall@10"]))
    path = write_json(args.out, {"machine": machine_info(args.threads), "args": vars(args),
                                 "results": records})
    print(f"wrote {path}")


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
