"""Classical metric learning: dmlkit vs metric-learn vs scikit-learn, kNN accuracy and fit time.

On iris and digits (standardized on the training part, stratified 50/50 splits, several
seeds) every learner is fitted on the training part and scored by 3-NN accuracy on the
test part; fit time is wall clock. dmlkit and scikit-learn run in this process;
metric-learn 0.7 needs scikit-learn < 1.6, so it runs in its own virtual environment
(``--ml-python``, default ``/tmp/ml-venv/bin/python``) as one subprocess per fit that
answers in JSON. Without that interpreter the metric-learn columns are skipped::

    python -m venv /tmp/ml-venv
    /tmp/ml-venv/bin/pip install "scikit-learn<1.6" metric-learn numpy

``--methods ... mlkr`` adds MLKR (class labels as regression targets; not in the
default set). Everything runs single-threaded (OMP/OpenBLAS/MKL and torch threads = 1) so the shared
machine's load affects all libraries alike. Also reproduces scikit-learn's NCA example
on iris (3-NN, test_size=0.7, stratified, random_state=42: 0.9333 raw, 0.9619 NCA).

    python benchmarks/classical.py [--seeds 3] [--repeats 3] [--datasets iris digits]

NCA is fitted by dmlkit (its float32 default, and ``precision="float64"`` as ``dmlkit-fp64``) and
scikit-learn in turn ``--repeats`` times per seed, keeping each one's fastest fit, so
the ratio is taken under the same load.

Writes ``benchmarks/results/classical.json``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

METHODS = ("nca", "lmnn", "itml", "lfda", "mlkr")
NCA_MAX_ITER = 100  # the same L-BFGS budget for every NCA and MLKR implementation
ML_INSTALL = (
    "python -m venv /tmp/ml-venv && /tmp/ml-venv/bin/pip install 'scikit-learn<1.6' "
    "metric-learn numpy"
)


def knn_accuracy(Ztr: np.ndarray, ytr: np.ndarray, Zte: np.ndarray, yte: np.ndarray) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    return float(KNeighborsClassifier(n_neighbors=3).fit(Ztr, ytr).score(Zte, yte))


def timed_fit(make: Any, Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray,
              yte: np.ndarray) -> dict[str, Any]:
    """Fit, time and score one learner; errors become ``{"error": ...}``."""
    try:
        est = make()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            start = time.perf_counter()
            est.fit(Xtr, ytr)
            seconds = time.perf_counter() - start
            acc = knn_accuracy(est.transform(Xtr), ytr, est.transform(Xte), yte)
        if not np.isfinite(est.transform(Xte[:5])).all():
            raise ValueError("non-finite transform")
        n_iter = getattr(est, "n_iter_", None)
        return {"accuracy": acc, "fit_s": seconds,
                "n_iter": None if n_iter is None else int(n_iter)}
    except Exception as err:  # noqa: BLE001 - a failing peer is a result, not a crash
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"}


# -- metric-learn worker (runs inside the metric-learn venv; no dmlkit, no torch) -----------
def ml_factory(method: str, seed: int) -> Any:
    import metric_learn as ml

    if method == "nca":
        return lambda: ml.NCA(max_iter=NCA_MAX_ITER, random_state=seed)
    if method == "lmnn":
        return lambda: ml.LMNN(n_neighbors=3, random_state=seed)
    if method == "itml":
        return lambda: ml.ITML_Supervised(random_state=seed)
    if method == "mlkr":
        return lambda: ml.MLKR(max_iter=NCA_MAX_ITER, random_state=seed)
    return lambda: ml.LFDA()


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import metric_learn  # noqa: F401  (imported before timing)

    with np.load(spec["data"], allow_pickle=False) as d:
        key = spec["key"]
        Xtr, ytr, Xte, yte = (d[f"{key}/{p}"] for p in ("Xtr", "ytr", "Xte", "yte"))
    return timed_fit(ml_factory(spec["method"], spec["seed"]), Xtr, ytr, Xte, yte)


def run_ml(python: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [python, __file__, "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"error": f"worker failed: {proc.stderr.strip().splitlines()[-1:]}"}


# -- main ----------------------------------------------------------------------------------
def dmlkit_factory(method: str, seed: int) -> Any:
    from dmlkit.classical import LFDA, LMNN, MLKR, NCA, ITMLSupervised

    if method == "nca":
        return lambda: NCA(max_iter=NCA_MAX_ITER, random_state=seed, device="cpu")
    if method == "lmnn":
        return lambda: LMNN(n_neighbors=3, random_state=seed, device="cpu")
    if method == "itml":
        return lambda: ITMLSupervised(random_state=seed)
    if method == "mlkr":  # class labels read as regression targets, as metric-learn shows
        return lambda: MLKR(max_iter=NCA_MAX_ITER, random_state=seed, device="cpu")
    return lambda: LFDA(device="cpu")


def nca_runs(seed: int, repeats: int, Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray,
             yte: np.ndarray) -> dict[str, dict[str, Any]]:
    """dmlkit NCA (float32 default, float64) and scikit-learn's, fitted ``repeats`` times in turn.

    Interleaving puts the three under the same machine load; each keeps its fastest fit
    (fits are deterministic, so accuracy and ``n_iter`` are the same in every repeat).
    """
    from sklearn.neighbors import NeighborhoodComponentsAnalysis

    from dmlkit.classical import NCA

    makers = {
        "dmlkit": dmlkit_factory("nca", seed),
        "dmlkit-fp64": lambda: NCA(max_iter=NCA_MAX_ITER, random_state=seed, device="cpu",
                                   precision="float64"),
        "sklearn": lambda: NeighborhoodComponentsAnalysis(max_iter=NCA_MAX_ITER,
                                                          random_state=seed),
    }
    best: dict[str, dict[str, Any]] = {}
    for _ in range(repeats):
        for impl, make in makers.items():
            res = timed_fit(make, Xtr, ytr, Xte, yte)
            if impl not in best or res.get("fit_s", np.inf) < best[impl].get("fit_s", np.inf):
                best[impl] = res
    return best


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets

    return getattr(datasets, f"load_{name}")(return_X_y=True)


def nca_example() -> dict[str, float]:
    """scikit-learn's NCA example on iris: 3-NN raw vs after NCA (no scaling)."""
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import NeighborhoodComponentsAnalysis

    from dmlkit.classical import NCA

    X, y = load("iris")
    Xtr, Xte, ytr, yte = train_test_split(X, y, stratify=y, test_size=0.7, random_state=42)
    out = {"raw": knn_accuracy(Xtr, ytr, Xte, yte)}
    for name, est in (("sklearn_nca", NeighborhoodComponentsAnalysis(random_state=42)),
                      ("dmlkit_nca", NCA(random_state=42, device="cpu"))):
        est.fit(Xtr, ytr)
        out[name] = knn_accuracy(est.transform(Xtr), ytr, est.transform(Xte), yte)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3,
                    help="interleaved NCA fits per seed and implementation (fastest kept)")
    ap.add_argument("--datasets", nargs="+", default=["iris", "digits"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS[:4]), choices=METHODS)
    ap.add_argument("--ml-python", default="/tmp/ml-venv/bin/python")
    ap.add_argument("--timeout", type=float, default=900.0, help="per metric-learn fit")
    ap.add_argument("--out", default="classical.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return

    import torch
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import format_table, machine_info, write_json

    torch.set_num_threads(1)
    have_ml = Path(args.ml_python).is_file()
    if not have_ml:
        print(f"metric-learn skipped: {args.ml_python} not found (create it: {ML_INSTALL})")
    example = nca_example()
    print("scikit-learn NCA example (iris, 3-NN, test_size=0.7, random_state=42): "
          f"raw {example['raw']:.4f}, scikit-learn NCA {example['sklearn_nca']:.4f}, "
          f"dmlkit NCA {example['dmlkit_nca']:.4f}  (published: 0.9333, 0.9619)")

    splits: dict[str, np.ndarray] = {}
    for name in args.datasets:
        X, y = load(name)
        for seed in range(args.seeds):
            Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.5, stratify=y,
                                                  random_state=seed)
            scaler = StandardScaler().fit(Xtr)
            key = f"{name}-{seed}"
            splits.update({f"{key}/Xtr": scaler.transform(Xtr), f"{key}/ytr": ytr,
                           f"{key}/Xte": scaler.transform(Xte), f"{key}/yte": yte})
    tmp = Path(tempfile.mkdtemp()) / "splits.npz"
    np.savez(tmp, **splits)
    # warm torch up once so one-time initialisation is not charged to the first fit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dmlkit_factory("nca", 0)().set_params(max_iter=2).fit(np.eye(4)[[0, 1, 2, 3] * 3],
                                                               [0, 1] * 6)

    records: list[dict[str, Any]] = []
    for name in args.datasets:
        for seed in range(args.seeds):
            key = f"{name}-{seed}"
            Xtr, ytr, Xte, yte = (splits[f"{key}/{p}"] for p in ("Xtr", "ytr", "Xte", "yte"))
            base = {"dataset": name, "seed": seed}
            records.append({**base, "method": "euclidean", "impl": "raw",
                            "accuracy": knn_accuracy(Xtr, ytr, Xte, yte), "fit_s": 0.0})
            for method in args.methods:
                if method == "nca":
                    runs = nca_runs(seed, args.repeats, Xtr, ytr, Xte, yte)
                else:
                    runs = {"dmlkit": timed_fit(dmlkit_factory(method, seed), Xtr, ytr, Xte,
                                                yte)}
                if have_ml:
                    spec = {"data": str(tmp), "key": key, "method": method, "seed": seed}
                    runs["metric-learn"] = run_ml(args.ml_python, spec, args.timeout)
                for impl, res in runs.items():
                    records.append({**base, "method": method, "impl": impl, **res})
                    shown = res.get("error") or (
                        f"acc {res['accuracy']:.4f}  {res['fit_s']:.2f} s  n_iter {res['n_iter']}")
                    print(f"  {key:<9} {method:<5} {impl:<12} {shown}", flush=True)

    rows, summary = [], []
    for name in args.datasets:
        for method in ("euclidean", *args.methods):
            mine = [r for r in records if r["dataset"] == name and r["method"] == method
                    and r["impl"] in ("dmlkit", "raw")]
            t_mine = float(np.median([r["fit_s"] for r in mine]))
            for impl in ("raw", "dmlkit", "dmlkit-fp64", "sklearn", "metric-learn"):
                rs = [r for r in records if r["dataset"] == name and r["method"] == method
                      and r["impl"] == impl]
                if not rs:
                    continue
                ok = [r for r in rs if "error" not in r]
                acc = [r["accuracy"] for r in ok]
                t = float(np.median([r["fit_s"] for r in ok])) if ok else float("nan")
                entry = {
                    "dataset": name, "method": method, "impl": impl, "runs": len(rs),
                    "failed": len(rs) - len(ok),
                    "accuracy_mean": float(np.mean(acc)) if acc else None,
                    "accuracy_std": float(np.std(acc)) if acc else None,
                    "fit_s_median": t,
                    "time_vs_dmlkit": t / t_mine if impl not in ("dmlkit", "raw") and ok
                    else None,
                    "errors": sorted({r["error"] for r in rs if "error" in r}),
                }
                summary.append(entry)
                rows.append([name, method, impl,
                             f"{entry['accuracy_mean']:.4f} ± {entry['accuracy_std']:.4f}"
                             if acc else "failed", f"{t:.3f}" if ok else "-",
                             f"{entry['time_vs_dmlkit']:.2f}x" if entry["time_vs_dmlkit"] else "-",
                             f"{len(ok)}/{len(rs)}"])
    print()
    print(format_table(rows, ["dataset", "method", "impl", "3-NN accuracy (mean ± std)",
                              "fit s (median)", "time / dmlkit", "ok runs"]))
    for e in summary:
        if e["errors"]:
            print(f"  {e['dataset']} {e['method']} {e['impl']}: {e['errors'][0]}")
    path = write_json(args.out, {
        "machine": machine_info(1), "seeds": args.seeds, "nca_repeats": args.repeats,
        "test_size": 0.5,
        "metric_learn": have_ml, "sklearn_nca_example": example,
        "summary": summary, "records": records,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
