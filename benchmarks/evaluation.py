"""Retrieval metrics: dmlkit against pytorch-metric-learning's AccuracyCalculator.

Both compute Precision@1, R-Precision and MAP@R, leave-one-out, on the same embeddings
in the same process: dmlkit with ``retrieval_metrics(x, y)`` **with its defaults**
(which also give Recall@1/2/4/8 and Precision@1/2/4/8; exact kNN by threshold filtering,
:func:`dmlkit.functional.exact_topk`, on large sets),
pytorch-metric-learning with ``AccuracyCalculator(k="max_bin_count")`` (faiss
``IndexFlatL2``, its default). The data has class structure: ``n`` points of dimension
``--dim`` in ``n / per_class`` classes, ``center[class] + noise``.

Usage::

    python benchmarks/evaluation.py                         # 1k, 10k, 50k, 100k
    python benchmarks/evaluation.py --sizes 300000          # one run: ~5 minutes
    python benchmarks/evaluation.py --sizes 10000 --repeats 3
    python benchmarks/evaluation.py --sizes 300000 --queries 30000   # 30k queries, 300k gallery

Writes ``benchmarks/results/evaluation.json``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch
from _common import RESULTS_DIR, format_table, machine_info, write_json

#: size -> number of classes
CLASSES = {1_000: 10, 10_000: 100, 50_000: 500, 100_000: 1000, 300_000: 1000}
#: sizes run by default (300k is asked for with --sizes: one run takes minutes)
DEFAULT_SIZES = [1_000, 10_000, 50_000, 100_000]
KEYS = {"precision_at_1": "precision_at_1", "r_precision": "r_precision",
        "map_at_r": "mean_average_precision_at_r"}


def make_data(n: int, dim: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    labels = labels[torch.randperm(n, generator=g)]
    centers = torch.randn(classes, dim, generator=g)
    x = centers[labels] + 2.0 * torch.randn(n, dim, generator=g)  # (n, dim)
    return x.float(), labels


def run_dmlkit(x: torch.Tensor, y: torch.Tensor, nq: int) -> dict[str, float]:
    from dmlkit.evaluation import retrieval_metrics

    if nq >= x.shape[0]:  # leave-one-out, defaults
        r = retrieval_metrics(x, y)
    else:  # the first nq items query the whole set, each skipping itself
        r = retrieval_metrics(x[:nq], y[:nq], x, y, ref_includes_query=True)
    return {k: r[k] for k in KEYS}


def run_pml(x: torch.Tensor, y: torch.Tensor, nq: int) -> dict[str, float]:
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(include=tuple(KEYS.values()), k="max_bin_count",
                              device=torch.device("cpu"))
    if nq >= x.shape[0]:
        r = calc.get_accuracy(x, y)
    else:
        r = calc.get_accuracy(x[:nq], y[:nq], x, y, ref_includes_query=True)
    return {k: r[v] for k, v in KEYS.items()}


def timed(fn, *args) -> tuple[float, dict[str, float]]:
    gc.collect()
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--queries", type=int, default=None,
                        help="queries per size (the first ones; default: all, leave-one-out)")
    parser.add_argument("--out", default="evaluation.json", help="file in benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    # imports and first calls outside the timings (scikit-learn, faiss, torch kernels);
    # 5000 points are enough for dmlkit's threshold-filtering path
    x0, y0 = make_data(5000, args.dim, 50, args.seed)
    run_dmlkit(x0, y0, 5000)
    run_pml(x0, y0, 5000)
    rows, records = [], []
    for n in args.sizes:
        classes = CLASSES.get(n, max(2, n // 100))
        x, y = make_data(n, args.dim, classes, args.seed)
        nq = min(n, args.queries or n)
        t_ours, t_pml = [], []
        for rep in range(args.repeats):  # alternate the order to spread machine noise
            order = [("dmlkit", run_dmlkit), ("pml", run_pml)]
            for name, fn in order if rep % 2 == 0 else order[::-1]:
                seconds, values = timed(fn, x, y, nq)
                (t_ours if name == "dmlkit" else t_pml).append(seconds)
                if name == "dmlkit":
                    ours = values
                else:
                    theirs = values
        diff = max(abs(ours[k] - theirs[k]) for k in KEYS)
        a, b = statistics.median(t_ours), statistics.median(t_pml)
        rec = {"n": n, "queries": nq, "dim": args.dim, "classes": classes, "dmlkit_s": t_ours,
               "pml_s": t_pml, "speedup": b / a, "dmlkit": ours, "pml": theirs,
               "max_abs_diff": diff}
        records.append(rec)
        rows.append([n, nq, classes, a, b, b / a, ours["precision_at_1"], theirs["precision_at_1"],
                     ours["r_precision"], theirs["r_precision"], ours["map_at_r"],
                     theirs["map_at_r"], diff])
        write_json(args.out, {"machine": machine_info(args.threads), "args": vars(args),
                              "results": records})  # after every size
        print(f"n={n}, queries={nq}: dmlkit {a:.2f} s, pml {b:.2f} s, x{b / a:.2f}, "
              f"max |diff| {diff:.2e}", flush=True)
    headers = ["n", "queries", "classes", "dmlkit s", "pml s", "pml/dmlkit", "P@1 dmlkit",
               "P@1 pml", "RP dmlkit", "RP pml", "MAP@R dmlkit", "MAP@R pml", "max |diff|"]
    print(format_table(rows, headers))
    print(f"wrote {RESULTS_DIR / args.out}")


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
