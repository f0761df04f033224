"""Recommendation on MovieLens-100K: collaborative metric learning against its peers.

Data: ``ml-100k.inter`` as shipped in the PyPI wheel ``recbole==1.2.1``
(``pip install --no-deps recbole==1.2.1``; only the file is read). Every rating counts as
an implicit interaction. Split: leave-last-out by timestamp (each user's latest
interaction is the test item; the rest train). Metrics over all 943 users, ranking the
whole catalogue minus the user's training items: Recall@10 (= hit rate with one test
item), NDCG@10 and catalogue coverage of the top-10 lists.

Peers, on the same split and seeds: popularity (most-interacted unseen items), and
Bayesian personalized ranking (BPR) and alternating least squares (ALS) from the
``implicit`` package (test-only dependency), 64 factors as CML's 64 dimensions.
Hyperparameters of CML (``--margin`` and the rest) were chosen on a validation split
made the same way inside the training part (each user's second-latest interaction);
the peers run with their package defaults except the factor count.

    python benchmarks/recommendation.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "recommendation.json"


def popularity(train_users, train_items, users, k):
    items, counts = np.unique(train_items, return_counts=True)
    ranked = items[np.argsort(-counts, kind="stable")]
    seen: dict[str, set] = {}
    for u, i in zip(train_users, train_items, strict=False):
        seen.setdefault(u, set()).add(i)
    out = []
    for u in users:
        s = seen.get(u, set())
        out.append([i for i in ranked[: k + len(s)] if i not in s][:k])
    return np.array(out)


def implicit_model(kind, train_users, train_items, users, k, seed, factors):
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking

    uids, u = np.unique(train_users, return_inverse=True)
    iids, i = np.unique(train_items, return_inverse=True)
    matrix = sp.csr_matrix((np.ones(len(u), dtype=np.float32), (u, i)),
                           shape=(len(uids), len(iids)))
    matrix.data[:] = 1.0  # duplicates count once
    model = (AlternatingLeastSquares(factors=factors, random_state=seed) if kind == "als"
             else BayesianPersonalizedRanking(factors=factors, random_state=seed))
    model.fit(matrix, show_progress=False)
    rows = np.searchsorted(uids, users)
    ids, _ = model.recommend(rows, matrix[rows], N=k, filter_already_liked_items=True)
    return iids[ids]


def main() -> None:
    from dmlkit.apps import CMLRecommender
    from dmlkit.data.interactions import leave_last_out, movielens_100k_path, read_interactions
    from dmlkit.evaluation.recommendation import recommendation_metrics

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--margin", type=float, default=1.0)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--schedule", default="cosine", choices=["constant", "cosine"])
    parser.add_argument("--validate", action="store_true",
                        help="score on each user's second-latest training interaction instead "
                             "of the test one (the held-out test interactions are not read)")
    parser.add_argument("--only", nargs="*", default=None, help="method names to run")
    parser.add_argument("--out", default=RESULTS.name,
                        help="file in benchmarks/results (an absolute path is used as is)")
    args = parser.parse_args()

    data = read_interactions(movielens_100k_path())
    train, test = leave_last_out(data)
    if args.validate:  # model selection never sees the test interactions
        train, test = leave_last_out(train)
    order = np.argsort(test.users, kind="stable")
    users, relevant = test.users[order], [[i] for i in test.items[order]]
    n_items = len(np.unique(data.items))
    print(f"MovieLens-100K: {len(data)} interactions, {len(np.unique(data.users))} users, "
          f"{n_items} items; {len(test)} test interactions (leave-last-out)")
    methods = {
        "popularity": lambda seed: popularity(train.users, train.items, users, args.k),
        "BPR (implicit)": lambda seed: implicit_model(
            "bpr", train.users, train.items, users, args.k, seed, args.dim),
        "ALS (implicit)": lambda seed: implicit_model(
            "als", train.users, train.items, users, args.k, seed, args.dim),
        "CML (dmlkit)": lambda seed: CMLRecommender(
            dim=args.dim, margin=args.margin, epochs=args.epochs, random_state=seed,
            schedule=args.schedule).fit(train.users, train.items).recommend(users, args.k),
    }
    table: dict[str, dict] = {}
    for name, run in methods.items():
        if args.only and not any(o in name for o in args.only):
            continue
        runs = []
        for seed in args.seeds:
            start = time.perf_counter()
            m = recommendation_metrics(run(seed), relevant, n_items, args.k)
            m["seconds"] = time.perf_counter() - start
            runs.append(m)
        keys = [f"recall_at_{args.k}", f"ndcg_at_{args.k}", f"coverage_at_{args.k}", "seconds"]
        table[name] = {key: {"mean": float(np.mean([r[key] for r in runs])),
                             "std": float(np.std([r[key] for r in runs]))} for key in keys}
        row = "  ".join(f"{key} {table[name][key]['mean']:.4f}±{table[name][key]['std']:.4f}"
                        for key in keys[:3])
        print(f"{name:16s} {row}  ({table[name]['seconds']['mean']:.0f} s/seed)", flush=True)
    if args.validate or args.only:
        return  # model selection / partial runs do not replace the results file
    out = RESULTS.parent / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": table}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
