"""Anomaly detection: dmlkit's detectors against the tools users would otherwise pick.

Protocols (one run):

1. One-class Fashion-MNIST: each class in turn is normal; detectors are fitted on that
   class's items of the official train split and score the whole test split (the nine
   other classes are the anomalies). Mean AUROC over the ten classes.
2. Shuttle (the ODDS version shipped as ``river/datasets/shuttle.csv.gz`` in the PyPI
   package ``river``; 7.2% anomalies): a seeded, stratified half is the training half;
   detectors are fitted on its normal rows (features standardized on them) and score the
   other half. AUROC and average precision.
3. Labelled normal classes (the metric-learning variant): Fashion-MNIST with nine
   classes normal and labelled, the tenth the anomaly, in turn; raw k-NN against k-NN in
   a metric trained on the nine classes (``embedder="learn"``). Mean AUROC.

Peers: raw-pixel k-NN (scikit-learn NearestNeighbors, mean distance to 5 neighbours),
IsolationForest, LocalOutlierFactor (novelty mode), PyOD's DeepSVDD and AutoEncoder.
Every detector sees the same data; deep models get a comparable number of epochs.

    python benchmarks/applications_anomaly.py               # all protocols
    python benchmarks/applications_anomaly.py --classes 0 1 --skip-labelled   # quicker
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

RESULTS = Path(__file__).parent / "results" / "applications_anomaly.json"


def shuttle() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("river")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("Shuttle needs the data file of river: pip install --no-deps river")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "shuttle.csv.gz"
    with gzip.open(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", skiprows=1)
    return rows[:, :-1].astype(np.float32), rows[:, -1].astype(np.int64)


def detectors(image_shape, epochs: int) -> dict:
    """name -> factory(X_normal) -> fitted object with a normality score function."""
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors

    from dmlkit.apps import DeepSVDD, MetricOutlierDetector

    def sk_knn(x):
        nn = NearestNeighbors(n_neighbors=5).fit(x)
        return lambda q: -nn.kneighbors(q)[0].mean(1)

    def pyod(cls, **kw):
        def fit(x):
            model = cls(**kw).fit(x)
            return lambda q: -model.decision_function(q)
        return fit

    def ours(make):
        def fit(x):
            model = make().fit(x)
            return model.score_samples
        return fit

    out = {
        "dmlkit knn": ours(lambda: MetricOutlierDetector("knn")),
        "dmlkit prototype": ours(lambda: MetricOutlierDetector("prototype")),
        "dmlkit mahalanobis": ours(lambda: MetricOutlierDetector("mahalanobis")),
        "dmlkit deep_svdd": ours(lambda: DeepSVDD(image_shape=image_shape, epochs=epochs)),
        "raw k-NN (sklearn)": sk_knn,
        "IsolationForest": lambda x: IsolationForest(random_state=0).fit(x).score_samples,
        "LOF": lambda x: LocalOutlierFactor(novelty=True).fit(x).score_samples,
    }
    try:
        from pyod.models.auto_encoder import AutoEncoder
        from pyod.models.deep_svdd import DeepSVDD as PyodDeepSVDD

        out["PyOD DeepSVDD"] = lambda x: pyod(
            PyodDeepSVDD, n_features=x.shape[1], epochs=epochs, verbose=0, random_state=0)(x)
        out["PyOD AutoEncoder"] = pyod(AutoEncoder, epoch_num=epochs, verbose=0)
    except ImportError:
        print("PyOD not installed (pip install pyod): its detectors are skipped")
    return out


def one_class_fmnist(classes, epochs: int) -> dict:
    from dmlkit.data import load_fashion_mnist

    tr, te = load_fashion_mnist("train"), load_fashion_mnist("test")
    xtr, ytr = tr.x.flatten(1).numpy(), tr.labels.numpy()
    xte, yte = te.x.flatten(1).numpy(), te.labels.numpy()
    table: dict[str, dict] = {}
    for name, fit in detectors((1, 28, 28), epochs).items():
        aucs, start = [], time.perf_counter()
        for c in classes:
            score = fit(xtr[ytr == c])
            aucs.append(roc_auc_score(yte != c, -score(xte)))
        table[name] = {"auroc": float(np.mean(aucs)), "per_class": [float(a) for a in aucs],
                       "seconds": time.perf_counter() - start}
        print(f"  {name:22s} mean AUROC {np.mean(aucs):.4f}  "
              f"({table[name]['seconds']:.0f} s)", flush=True)
    return table


def shuttle_protocol(epochs: int) -> dict:
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = shuttle()
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.5, stratify=y, random_state=0)
    scaler = StandardScaler().fit(xtr[ytr == 0])
    normal, test = scaler.transform(xtr[ytr == 0]), scaler.transform(xte)
    table: dict[str, dict] = {}
    for name, fit in detectors(None, epochs).items():
        start = time.perf_counter()
        s = -fit(normal)(test)
        table[name] = {"auroc": float(roc_auc_score(yte, s)),
                       "average_precision": float(average_precision_score(yte, s)),
                       "seconds": time.perf_counter() - start}
        print(f"  {name:22s} AUROC {table[name]['auroc']:.4f}  AP "
              f"{table[name]['average_precision']:.4f}  ({table[name]['seconds']:.0f} s)",
              flush=True)
    return table


def labelled_normal(classes, per_class: int) -> dict:
    from dmlkit.apps import MetricOutlierDetector
    from dmlkit.data import load_fashion_mnist

    tr, te = load_fashion_mnist("train"), load_fashion_mnist("test")
    rng = np.random.default_rng(0)
    keep = np.concatenate([rng.permutation(np.flatnonzero(tr.labels.numpy() == c))[:per_class]
                           for c in range(10)])
    xtr, ytr = tr.x.flatten(1).numpy()[keep], tr.labels.numpy()[keep]
    xte, yte = te.x.flatten(1).numpy(), te.labels.numpy()
    table: dict[str, list] = {"raw k-NN": [], "learned metric k-NN": [],
                              "learned metric prototype": []}
    for c in classes:
        normal = ytr != c
        raw = MetricOutlierDetector("knn").fit(xtr[normal])
        table["raw k-NN"].append(roc_auc_score(yte == c, -raw.score_samples(xte)))
        learned = MetricOutlierDetector("knn", embedder="learn").fit(xtr[normal], ytr[normal])
        table["learned metric k-NN"].append(roc_auc_score(yte == c, -learned.score_samples(xte)))
        proto = MetricOutlierDetector("prototype", embedder=learned.embedder_)
        proto.fit(xtr[normal], ytr[normal])
        table["learned metric prototype"].append(
            roc_auc_score(yte == c, -proto.score_samples(xte)))
        print(f"  anomaly class {c}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in table.items()),
              flush=True)
    return {k: {"auroc": float(np.mean(v)), "per_class": [float(a) for a in v]}
            for k, v in table.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="*", default=list(range(10)))
    parser.add_argument("--epochs", type=int, default=20, help="epochs of every deep model")
    parser.add_argument("--per-class", type=int, default=2000,
                        help="training items per class in the labelled-normal protocol")
    parser.add_argument("--skip-labelled", action="store_true")
    parser.add_argument("--only-labelled", action="store_true",
                        help="run only the labelled-normal protocol (own results file)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (small models run fastest on one)")
    parser.add_argument("--out", default=RESULTS.name,
                        help="file in benchmarks/results (an absolute path is used as is); "
                        "--only-labelled writes its stem + '_labelled.json' beside it")
    args = parser.parse_args()
    results = RESULTS.parent / args.out
    import torch

    torch.set_num_threads(args.threads)
    result: dict = {"epochs": args.epochs, "classes": args.classes}
    if args.only_labelled:
        print("Fashion-MNIST, nine labelled normal classes, the tenth anomalous")
        result["per_class"] = args.per_class
        result["fashion_mnist_labelled_normal"] = labelled_normal(args.classes, args.per_class)
        out = results.with_name(results.stem + "_labelled.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")
        return
    print("One-class Fashion-MNIST (mean AUROC over normal classes", args.classes, ")")
    result["fashion_mnist_one_class"] = one_class_fmnist(args.classes, args.epochs)
    print("Shuttle (fit on normal rows of a stratified half, score the other half)")
    result["shuttle"] = shuttle_protocol(args.epochs)
    if not args.skip_labelled:
        print("Fashion-MNIST, nine labelled normal classes, the tenth anomalous")
        result["fashion_mnist_labelled_normal"] = labelled_normal(args.classes, args.per_class)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=2))
    print(f"wrote {results}")


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
