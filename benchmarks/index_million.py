"""A 1M x 128 gallery built from an on-disk embedding store into IVF-PQ, in bounded memory.

The gallery is embedding-like, not separable noise: ``--clusters`` Gaussian clusters on
the unit sphere, each spread along its own random 16-dimensional subspace (low intrinsic
dimension, as trained embeddings have) plus isotropic noise, with clusters overlapping
heavily (IVF-Flat at nprobe=1 misses true neighbours, see ``ivf_flat_nprobe1_recall``).
Queries are fresh draws from the same clusters (not gallery items). Vectors are
L2-normalized; search is squared L2 (= cosine ranking).

Each stage runs in its own spawned process, so its peak RSS (``resource.getrusage``,
``ru_maxrss``) is its own:

1. ``write``: the gallery streams into an :class:`~dmlkit.index.store.EmbeddingStore`
   (a memory-mapped ``.npy``) in chunks; a rerun resumes.
2. ``build``: :func:`~dmlkit.index.store.build_index_from_store` trains IVF-PQ on a
   ``--train-size`` sample and adds the store chunk by chunk.
3. ``exact``: faiss ``IndexFlatL2`` over the whole gallery (in RAM): ground truth and the
   exact queries/s.
4. ``search``: the built index, read back, swept over nprobe (and refine k_factor):
   recall@10 against exact and queries/s on the same queries.

Usage::

    python benchmarks/index_million.py                       # 1M x 128
    python benchmarks/index_million.py --gallery 100000       # quick

Writes ``benchmarks/results/index_million.json``.
"""

from __future__ import annotations

import argparse
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from _common import format_table, machine_info, write_json

SUB = 16  # intrinsic dimension of each cluster


def _clusters(n_clusters: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    bases = rng.normal(size=(n_clusters, SUB, dim)).astype(np.float32) / np.sqrt(dim)
    return centers, bases


def draw(n: int, dim: int, n_clusters: int, seed: int, chunk_seed: int,
         spread: float = 0.25) -> np.ndarray:
    """``(n, dim)`` float32 unit vectors from the clustered distribution."""
    centers, bases = _clusters(n_clusters, dim, seed)
    rng = np.random.default_rng([seed, chunk_seed])
    c = rng.integers(0, n_clusters, n)
    z = rng.normal(size=(n, 1, SUB)).astype(np.float32) * spread
    x = centers[c] + 0.03 * rng.normal(size=(n, dim)).astype(np.float32)
    for k in np.unique(c):  # per cluster: its own subspace, (m, SUB) @ (SUB, dim)
        rows = np.flatnonzero(c == k)
        x[rows] += z[rows, 0] @ bases[k]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage_write(a: dict) -> dict:
    from dmlkit.index.store import embed_to_store

    t = time.perf_counter()
    store = embed_to_store(
        lambda s, e: draw(e - s, a["dim"], a["clusters"], a["seed"], s), a["gallery"],
        a["dim"], a["store"], chunk_size=a["chunk"], source={"synthetic": a["seed"]})
    return {"rows": store.rows_done, "seconds": time.perf_counter() - t, "peak_rss_mb": _rss_mb()}


def stage_build(a: dict) -> dict:
    import faiss

    from dmlkit.index.store import build_index_from_store

    faiss.omp_set_num_threads(a["threads"])
    t = time.perf_counter()
    index = build_index_from_store(a["store"], a["factory"], "l2", train_size=a["train_size"],
                                   chunk_size=a["chunk"], show_progress=True)
    seconds = time.perf_counter() - t
    faiss.write_index(index.index, a["index_file"])
    return {"seconds": seconds, "ntotal": index.ntotal, "peak_rss_mb": _rss_mb(),
            "index_mb": Path(a["index_file"]).stat().st_size / 2**20}


def _queries(a: dict) -> np.ndarray:
    return draw(a["queries"], a["dim"], a["clusters"], a["seed"], 10**9)


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def stage_exact(a: dict) -> dict:
    import faiss

    from dmlkit.index.store import EmbeddingStore

    faiss.omp_set_num_threads(a["threads"])
    flat = faiss.IndexFlatL2(a["dim"])
    for _, emb, _ in EmbeddingStore.open(a["store"]).chunks(a["chunk"]):
        flat.add(emb)
    q = _queries(a)
    _, gt = flat.search(q, 10)
    sec = _timed(lambda: flat.search(q, 10), a["repeats"])
    np.save(a["gt_file"], gt)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(a["dim"]), a["dim"], 256)
    emb = EmbeddingStore.open(a["store"]).embeddings
    ivf.train(np.ascontiguousarray(emb[:: max(1, emb.shape[0] // 20000)]))
    sub = np.ascontiguousarray(emb[:100_000])  # nprobe=1 recall on a 100k slice
    ivf.add(sub)
    ref = faiss.IndexFlatL2(a["dim"])
    ref.add(sub)
    _, g = ref.search(q, 10)
    _, i = ivf.search(q, 10)
    rec1 = float(np.mean([len(set(g[r]) & set(i[r])) / 10 for r in range(len(q))]))
    return {"qps": len(q) / sec, "seconds": sec, "peak_rss_mb": _rss_mb(),
            "ivf_flat_nprobe1_recall": rec1}


def stage_search(a: dict) -> dict:
    import faiss

    faiss.omp_set_num_threads(a["threads"])
    index = faiss.read_index(a["index_file"])
    q, gt = _queries(a), np.load(a["gt_file"])
    rows = []
    for nprobe, k_factor in a["sweep"]:
        ps = faiss.ParameterSpace()
        ps.set_index_parameter(index, "nprobe", nprobe)
        if k_factor:
            ps.set_index_parameter(index, "k_factor_rf", k_factor)
        _, ids = index.search(q, 10)
        recall = float(np.mean([len(set(gt[r]) & set(ids[r])) / 10 for r in range(len(q))]))
        sec = _timed(lambda: index.search(q, 10), a["repeats"])  # noqa: B023
        rows.append({"nprobe": nprobe, "k_factor": k_factor, "recall_at_10": recall,
                     "qps": len(q) / sec})
    return {"rows": rows, "peak_rss_mb": _rss_mb()}


def _run(fn, a: dict) -> dict:
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, a).result()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gallery", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--clusters", type=int, default=2000)
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--factory", default="IVF1024,PQ32,RFlat")
    p.add_argument("--train-size", type=int, default=60_000)
    p.add_argument("--chunk", type=int, default=65536)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sweep", default="8:0,8:4,16:4,32:4,32:8",
                   help="nprobe:k_factor pairs (k_factor 0 = not set).")
    p.add_argument("--workdir", default="/tmp/dmlkit_index_million")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="index_million.json",
                   help="file in benchmarks/results (an absolute path is used as is)")
    args = p.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    a = {**vars(args), "store": str(work / f"store_{args.gallery}_{args.seed}"),
         "index_file": str(work / "ivfpq.faiss"), "gt_file": str(work / "gt.npy"),
         "sweep": [tuple(int(v) for v in s.split(":")) for s in args.sweep.split(",")]}
    out = {"args": {k: v for k, v in a.items() if k != "sweep"},
           "machine": machine_info(args.threads)}
    for name, fn in (("write", stage_write), ("build", stage_build), ("exact", stage_exact),
                     ("search", stage_search)):
        print(f"stage {name} ...", flush=True)
        out[name] = _run(fn, a)
        print({k: v for k, v in out[name].items() if k != "rows"}, flush=True)
    exact_qps = out["exact"]["qps"]
    table = [[r["nprobe"], r["k_factor"], f"{r['recall_at_10']:.4f}", f"{r['qps']:.0f}",
              f"{r['qps'] / exact_qps:.1f}x"] for r in out["search"]["rows"]]
    table.append(["exact (IndexFlatL2)", "-", "1.0000", f"{exact_qps:.0f}", "1.0x"])
    print(format_table(table, ["nprobe", "k_factor", "recall@10", "queries/s", "vs exact"]))
    for name in ("write", "build", "exact", "search"):
        print(f"{name}: peak RSS {out[name]['peak_rss_mb']:.0f} MB"
              + (f", {out[name]['seconds']:.1f} s" if "seconds" in out[name] else ""))
    print(f"IVF256-Flat nprobe=1 recall@10 on a 100k slice: "
          f"{out['exact']['ivf_flat_nprobe1_recall']:.3f} (below 1: clusters overlap)")
    print(f"wrote {write_json(args.out, out)}")


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
