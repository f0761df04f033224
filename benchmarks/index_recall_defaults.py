"""Recall@10 of approximate indexes at faiss's default search breadth and at the breadth
`dmlkit index build` tunes (dmlkit.index.calibrate), on real data.

Data: scikit-learn's digits (1797 x 64) and Fashion-MNIST's test part (10000 x 784,
Debian's dataset-fashion-mnist), raw pixels, each row L2-normalized. Recall is measured
by `calibrate` (up to 1000 indexed items as queries, against ExactIndex) and checked on
a disjoint slice of items with a numpy brute-force reference; query time is reported as
a ratio to the untuned index in the same run.

    python benchmarks/index_recall_defaults.py
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, write_json  # noqa: E402

from dmlkit.index import FaissIndex  # noqa: E402
from dmlkit.index.calibrate import calibrate, recall_at_k  # noqa: E402


def datasets() -> dict[str, np.ndarray]:
    from dmlkit.data import load_digits

    out = {"digits": load_digits().x.reshape(-1, 64).numpy()}
    try:
        from dmlkit.data.idx import load_fashion_mnist

        out["fashion_mnist_test"] = load_fashion_mnist("test").x.reshape(10000, -1).numpy()
    except (FileNotFoundError, ValueError) as err:
        print(f"skipping Fashion-MNIST: {err}")
    return {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in out.items()}


def brute_top(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    d = (q * q).sum(1)[:, None] - 2 * q @ x.T + (x * x).sum(1)[None, :]  # (nq, n)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def timed_search(index: FaissIndex, q: np.ndarray, k: int, repeats: int = 5
                 ) -> tuple[np.ndarray, float]:
    """Ids and the fastest of ``repeats`` searches (the machine is shared)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        _, ids = index.search(q, k)
        best = min(best, time.perf_counter() - start)
    return ids, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="index_recall_defaults.json",
                        help="file in benchmarks/results (an absolute path is used as is)")
    args = parser.parse_args()
    rows, records = [], []
    for name, x in datasets().items():
        x = np.ascontiguousarray(x, dtype=np.float32)
        check = x[1::7][:300]  # independent check queries
        want = brute_top(x, check, 10)
        for factory in ("IVF256,Flat", f"IVF{int(np.sqrt(len(x)))},Flat", "HNSW32"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the few-training-points note
                base = FaissIndex(x.shape[1], "l2", factory)
                base.add(x)
            knob = "nprobe" if "IVF" in factory else "ef_search"
            default = 1 if knob == "nprobe" else 16
            setattr(base, knob, default)
            base._apply_search_params()
            ids0, t0 = timed_search(base, check, 10)
            r0 = recall_at_k(ids0, want)
            setattr(base, knob, None)
            tuned = calibrate(base, x)
            ids1, t1 = timed_search(base, check, 10)
            r1 = recall_at_k(ids1, want)
            rows.append([name, factory, f"{knob}={default}", round(r0, 4),
                         f"{knob}={tuned[knob]}", round(tuned["recall_at_k"], 4),
                         round(r1, 4), round(t1 / t0, 2)])
            records.append({"data": name, "n": len(x), "dim": x.shape[1], "factory": factory,
                            "knob": knob, "default": default, "recall_default": r0,
                            "tuned": tuned[knob], "recall_tuned_calibration":
                            tuned["recall_at_k"], "recall_tuned_check": r1,
                            "time_ratio_tuned_over_default": t1 / t0})
    headers = ["data", "factory", "faiss default", "recall@10", "tuned", "recall@10 (calib.)",
               "recall@10 (check)", "query time x"]
    print(format_table(rows, headers))
    print(f"wrote {write_json(args.out, {'rows': records})}")


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
