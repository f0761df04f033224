"""Verification, open-set identification and few-shot recognition of unseen classes.

Datasets (both zero-shot: the metric never saw classes 5-9):

* Fashion-MNIST (Debian ``dataset-fashion-mnist``): the run of
  ``configs/fashion_mnist_unseen.yaml`` (trained on classes 0-4 of the official training
  set); evaluated on classes 5-9 of the official test set (5,000 images).
* scikit-learn digits: the run of ``configs/digits_unseen.yaml`` (trained on classes
  0-4); evaluated on all images of classes 5-9 (896).

Representations: the learned embeddings (cosine), raw pixels L2-normalized (cosine), and
raw pixels as they are (Euclidean), as the field reports baselines.

Protocol, on each dataset and representation, with one seeded, stratified 50/50 split
of the unseen images into a *fit* half and a *test* half:

1. Verification: a :class:`~dmlkit.apps.Verifier` fits its threshold for FAR 1e-2 on
   pairs of the fit half (200,000 drawn when there are more) and is evaluated on pairs of
   the test half: EER, TAR@FAR=1e-2 with 95% bootstrap intervals (1,000 replicates), and
   the FAR its threshold actually gives on the test pairs.
2. Open-set identification: the first three unseen classes are enrolled (their fit-half
   images form the gallery), the other two are unknown. Queries: the test-half images of
   all five. Rank-1 and mAP on queries of enrolled classes; DIR@FAR=1e-2 (threshold set
   on the unknown queries' top scores); and the DIR and FAR at the threshold the
   :class:`~dmlkit.apps.Identifier` calibrated from its gallery alone (leave one identity
   out), which is what a deployment gets.
3. Few-shot: 5-way 1-shot and 5-shot accuracy (600 episodes, 15 queries per class, 95%
   interval) of :class:`~dmlkit.apps.FewShotClassifier` (prototypes) on all unseen
   images. 20-way episodes need 20 unseen classes; both datasets have 5, so they are
   reported as not possible (the kit refuses them with an error saying so).
4. The same jobs through the CLI (``dmlkit verify / identify / fewshot`` on the run and
   raw images), whose JSON must agree with the library numbers of the learned metric.

    python benchmarks/applications.py              # trains the two runs if missing
    python benchmarks/applications.py --bootstrap 200 --episodes 200   # quicker
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "applications.json"
DATASETS = {"fashion_mnist": "configs/fashion_mnist_unseen.yaml",
            "digits": "configs/digits_unseen.yaml"}
FAR = 1e-2


def ensure_run(name: str, config: str, runs: Path) -> Path:
    run_dir = runs / f"{name}_unseen"
    if not (run_dir / "model.pt").is_file():
        from dmlkit.config import Config
        from dmlkit.training import train_run

        t = time.time()
        train_run(Config.from_yaml(ROOT / config), run_dir, log=lambda *a: None)
        print(f"trained {run_dir} in {time.time() - t:.0f} s", flush=True)
    return run_dir


def representations(run_dir: Path):
    """``(images, labels, {name: (vectors, metric)})`` of the unseen classes."""
    from dmlkit.runs import build_splits, embed, load_run

    run = load_run(run_dir)
    _, heldout = build_splits(run.config)
    z, _ = embed(run.model, heldout)
    x = heldout.x.numpy()
    raw = x.reshape(len(x), -1).astype(np.float32)
    unit = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
    reps = {"learned": (z.numpy(), "cosine"), "raw L2-normalized": (unit, "cosine"),
            "raw": (raw, "euclidean")}
    return x, heldout.labels.numpy(), reps


def verification(v, fit, test, y, args) -> dict:
    from dmlkit.apps import Verifier

    kit = Verifier(metric=v[1], target_far=FAR, n_bootstrap=args.bootstrap, fars=(FAR,))
    kit.fit(v[0][fit], y[fit])
    out = kit.evaluate(v[0][test], y[test])
    return {"eer": out["eer"], "eer_ci95": out["ci95"]["eer"],
            "tar_at_far": out[f"tar_at_far_{FAR:g}"],
            "tar_ci95": out["ci95"][f"tar_at_far_{FAR:g}"], "auc": out["auc"],
            "test_far_at_fitted_threshold": out["far_at_threshold"],
            "test_tar_at_fitted_threshold": out["tar_at_threshold"],
            "fit_pairs": kit.n_pairs_, "test_pairs": out["num_pairs"]}


def identification(v, fit, test, y, mode: str) -> dict:
    from dmlkit.apps import Identifier
    from dmlkit.apps.identification_metrics import reid_metrics

    classes = np.unique(y)
    enrolled = classes[: (len(classes) + 1) // 2]
    gal = fit[np.isin(y[fit], enrolled)]
    kit = Identifier(mode=mode, metric=v[1], target_far=FAR).fit(v[0][gal], y[gal])
    out = kit.evaluate(v[0][test], y[test], fars=(FAR,))
    known = test[np.isin(y[test], enrolled)]
    ranked = reid_metrics(v[0][known], v[0][gal], y[known], y[gal], metric=v[1])
    return {"rank1": out["rank1"], "map": ranked["map"], "dir_at_far": out[f"dir_at_far_{FAR:g}"],
            "dir_at_calibrated": out["dir_at_threshold"],
            "far_at_calibrated": out["far_at_threshold"], "enrolled": enrolled.tolist(),
            "gallery": int(len(gal)), "known_queries": out["num_known"],
            "unknown_queries": out["num_unknown"]}


def few_shot(v, y, args) -> dict:
    from dmlkit.apps import FewShotClassifier

    out = {}
    for n_way in (5, 20):
        for k_shot in (1, 5):
            try:
                r = FewShotClassifier(metric=v[1]).evaluate_episodes(
                    v[0], y, n_way=n_way, k_shot=k_shot, episodes=args.episodes, seed=0)
                out[f"{n_way}way_{k_shot}shot"] = [r["accuracy"], r["ci95"]]
            except ValueError as err:
                out[f"{n_way}way_{k_shot}shot"] = str(err)
    return out


def cli_jobs(run_dir: Path, x, y, fit, test, args) -> dict:
    """The learned-metric jobs through ``dmlkit``; returns their JSON and wall times."""
    classes = np.unique(y)
    enrolled = classes[: (len(classes) + 1) // 2]
    gal = fit[np.isin(y[fit], enrolled)]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        np.savez(t / "gallery.npz", x=x[gal], labels=y[gal])
        np.savez(t / "query.npz", x=x[test], labels=y[test])
        np.savez(t / "fit.npz", x=x[fit], labels=y[fit])
        jobs = {
            # the library rows' split (every unseen class on both sides); `--data heldout`
            # alone would split by identity, a different protocol
            "verify": ["verify", str(run_dir), "--data", str(t / "query.npz"), "--calibrate",
                       str(t / "fit.npz"), "--target-far", str(FAR),
                       "--bootstrap", str(args.bootstrap)],
            "identify": ["identify", str(run_dir), "--gallery", str(t / "gallery.npz"),
                         "--query", str(t / "query.npz"), "--target-far", str(FAR)],
            "fewshot": ["fewshot", str(run_dir), "--episodes", "heldout", "--way", "5",
                        "--shot", "1,5", "--n-episodes", str(args.episodes)],
        }
        for name, argv in jobs.items():
            start = time.time()
            res = subprocess.run([sys.executable, "-m", "dmlkit.cli.main", *argv, "-o",
                                  str(t / f"{name}.json")], capture_output=True, text=True)
            if res.returncode != 0:
                raise SystemExit(f"dmlkit {name} failed:\n{res.stdout}\n{res.stderr}")
            out[name] = {"seconds": time.time() - start,
                         "result": json.loads((t / f"{name}.json").read_text())}
    return out


def scale_check(n: int, index: str, per_identity: int = 10, dim: int = 64,
                queries: int = 2_000) -> dict:
    """A gallery of ``n`` synthetic items (``per_identity`` per identity) in ``index``:
    times of enrolling (with calibration), identifying, enrolling one more
    identity and removing 100, and rank-1 of queries of enrolled identities."""
    import torch

    from dmlkit.apps import Identifier

    gen = torch.Generator().manual_seed(0)
    n_ids = n // per_identity
    centers = torch.randn(n_ids, dim, generator=gen)
    y = torch.arange(n_ids).repeat_interleave(per_identity)
    x = (centers[y] + 0.6 * torch.randn(n, dim, generator=gen)).numpy()
    qy = torch.randint(0, n_ids, (queries,), generator=gen)
    q = (centers[qy] + 0.6 * torch.randn(queries, dim, generator=gen)).numpy()
    out: dict = {"index": index, "items": n, "identities": n_ids, "dim": dim,
                 "queries": queries}
    t = time.time()
    ident = Identifier(index=index).fit(x, y.numpy())
    out["fit_seconds"] = time.time() - t
    t = time.time()
    pred = ident.predict(q)
    out["identify_seconds"] = time.time() - t
    out["accuracy_with_rejection"] = float((pred == qy.numpy()).mean())
    t = time.time()
    ident.enroll(x[:per_identity], np.full(per_identity, n_ids + 1))
    out["enroll_one_identity_seconds"] = time.time() - t
    t = time.time()
    ident.remove(np.arange(100))
    out["remove_100_identities_seconds"] = time.time() - t
    out["ntotal_after"] = ident.index_.ntotal
    print(f"scale: {out}", flush=True)
    return out


def fmt(value, ci=None) -> str:
    if isinstance(value, str):
        return "n/a"
    if ci is None:
        return f"{value:.3f}"
    lo, hi = ci if isinstance(ci, (list, tuple)) else (value - ci, value + ci)
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def main() -> None:
    from dmlkit.cli.recognition import split_rows
    from dmlkit.evaluation import write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "apps")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--scale", type=int, default=0, help="Only the scale check of an "
                        "Identifier with this many gallery items, added to the results file.")
    parser.add_argument("--scale-index", default="Flat", help="exact or a faiss factory.")
    parser.add_argument("--out", default=RESULTS.name,
                        help="file in benchmarks/results (an absolute path is used as is)")
    args = parser.parse_args()
    out = RESULTS.parent / args.out
    if args.scale:
        report = json.loads(out.read_text()) if out.is_file() else {}
        report.setdefault("scale", {})[args.scale_index] = scale_check(args.scale,
                                                                       args.scale_index)
        write_json(report, out)
        return
    report: dict = {"far": FAR, "bootstrap": args.bootstrap, "episodes": args.episodes,
                    "command": " ".join(["python", "benchmarks/applications.py", *sys.argv[1:]])}
    for name, config in DATASETS.items():
        run_dir = ensure_run(name, config, args.runs)
        x, y, reps = representations(run_dir)
        # items of every unseen class on both sides (`dmlkit verify --data` splits by identity)
        fit, test = split_rows(len(y), y, 0.5, 0)
        report[name] = {"run_dir": str(run_dir), "images": int(len(y))}
        for rep, v in reps.items():
            t = time.time()
            report[name][rep] = {
                "verification": verification(v, fit, test, y, args),
                "identification": identification(v, fit, test, y, "nearest"),
                "identification_prototype": identification(v, fit, test, y, "prototype"),
                "few_shot": few_shot(v, y, args)}
            print(f"{name} / {rep}: {time.time() - t:.1f} s", flush=True)
        if not args.skip_cli:
            report[name]["cli"] = cli_jobs(run_dir, x, y, fit, test, args)
        write_json(report, out)
    print_tables(report)
    write_json(report, out)
    print(f"wrote {out}")


def print_tables(report: dict) -> None:
    for name in DATASETS:
        r = report[name]
        reps = [k for k in r if isinstance(r[k], dict) and "verification" in r[k]]
        print(f"\n{name}, unseen classes 5-9 ({r['images']} images)")
        print(f"{'representation':20s} {'EER [95% CI]':26s} {'TAR@FAR=1e-2 [95% CI]':26s} "
              f"{'test FAR at fitted t':>20s}")
        for rep in reps:
            v = r[rep]["verification"]
            print(f"{rep:20s} {fmt(v['eer'], v['eer_ci95']):26s} "
                  f"{fmt(v['tar_at_far'], v['tar_ci95']):26s} "
                  f"{v['test_far_at_fitted_threshold']:>20.4f}")
        print(f"{'open set':20s} {'mode':10s} {'rank-1':>7s} {'item mAP':>8s} "
              f"{'DIR@FAR=1e-2':>13s} {'DIR at calibrated t':>20s} "
              f"{'FAR at calibrated t':>20s}")
        for rep in reps:
            for mode in ("identification", "identification_prototype"):
                i = r[rep][mode]
                label = "prototype" if mode.endswith("prototype") else "nearest"
                print(f"{rep:20s} {label:10s} {i['rank1']:7.3f} {i['map']:8.3f} "
                      f"{i['dir_at_far']:13.3f} {i['dir_at_calibrated']:20.3f} "
                      f"{i['far_at_calibrated']:20.3f}")
        keys = list(r[reps[0]]["few_shot"])
        print(f"{'few-shot':20s} " + " ".join(f"{k:22s}" for k in keys))
        for rep in reps:
            f = r[rep]["few_shot"]
            print(f"{rep:20s} " + " ".join(
                f"{fmt(f[k][0], f[k][1]) if isinstance(f[k], list) else 'n/a (5 classes)':22s}"
                for k in keys))
        if "cli" in r:
            c, lib = r["cli"], r["learned"]
            print("through the CLI (learned):  "
                  f"verify EER {c['verify']['result']['eer']:.4f} (library "
                  f"{lib['verification']['eer']:.4f}, {c['verify']['seconds']:.1f} s); "
                  f"identify rank-1 {c['identify']['result']['rank1']:.4f} (library "
                  f"{lib['identification']['rank1']:.4f}, {c['identify']['seconds']:.1f} s); "
                  f"fewshot 5w1s {c['fewshot']['result']['5way_1shot']['accuracy']:.4f} "
                  f"(library {lib['few_shot']['5way_1shot'][0]:.4f}, "
                  f"{c['fewshot']['seconds']:.1f} s)")


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
