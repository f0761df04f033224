"""Miner + loss, forward + backward, as in training: dmlkit against pytorch-metric-learning.

Every miner of the library with its usual loss, and every tuple loss on the pairs of
a multi-similarity miner, at ``B`` = 160, 1024 and 4096 (``--sizes``). One step is what
a training step does with them: mine on the embeddings, compute the loss on the mined
indices, backpropagate. Both libraries run in one fresh process per (case, B) and
alternate call by call (the order flips every round) after one warm-up call, whose
loss values are compared; the table gives median times and their ratio.

Inputs: ``B`` embeddings of dimension ``--dim`` (64) with ``requires_grad``, labels of
``--per-class`` (32) samples per class (5 classes x 32 at B = 160: the m-per-class
recipe). The embeddings sit around unit class centres with unit-norm noise
(``normalize(c_y + z)``, within-class cosine about 0.5), so the miners select part of
the tuples as they do mid-training rather than all of them.

Bounded time: a combination whose pytorch-metric-learning side would list more than
``--max-tuples`` (50M) tuples (its triplets, its all-triplets ``(B, B, B)`` mask, or the
``(P, N)`` match matrix that joins mined pairs into triplets) runs dmlkit alone and says
so. Randomized miners (distance-weighted) draw different tuples in the two libraries:
their value check feeds dmlkit's tuples to both losses. The quadruplet miner and loss
have no pytorch-metric-learning counterpart: dmlkit alone.

Usage::

    python benchmarks/mined_losses.py                    # all cases, B = 160, 1024, 4096
    python benchmarks/mined_losses.py --sizes 160 --cases ms_triplet tm_all_triplet

Writes ``benchmarks/results/mined_losses.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from _common import format_table, machine_info, write_json

SIZES = [160, 1024, 4096]


@dataclass(frozen=True)
class Case:
    """A miner and a loss, with their parameters in both libraries (PML class names)."""

    name: str
    miner: str
    miner_kw: dict[str, Any]
    loss: str
    loss_kw: dict[str, Any]
    pml_miner: str | None
    pml_loss: str | None
    pml_miner_kw: dict[str, Any] = field(default_factory=dict)
    pml_loss_kw: dict[str, Any] = field(default_factory=dict)
    random: bool = False
    #: "trained": embeddings around class centres; "init": random (an untrained network)
    embeddings: str = "trained"


def _same(name, miner, mkw, loss, lkw, pml_miner, pml_loss, **extra) -> Case:
    return Case(name, miner, mkw, loss, lkw, pml_miner, pml_loss, dict(mkw), dict(lkw), **extra)


MS = ("multi_similarity", {"epsilon": 0.1}, "MultiSimilarityMiner")
CASES: dict[str, Case] = {
    c.name: c
    for c in [
        # the miners, each with its usual loss
        _same(
            "tm_all_triplet",
            "triplet_margin",
            {"margin": 0.2, "type_of_triplets": "all"},
            "triplet_margin",
            {"margin": 0.2},
            "TripletMarginMiner",
            "TripletMarginLoss",
        ),
        _same(
            "tm_semihard_triplet",
            "triplet_margin",
            {"margin": 0.2, "type_of_triplets": "semihard"},
            "triplet_margin",
            {"margin": 0.2},
            "TripletMarginMiner",
            "TripletMarginLoss",
        ),
        _same(
            "tm_hard_triplet",
            "triplet_margin",
            {"margin": 0.2, "type_of_triplets": "hard"},
            "triplet_margin",
            {"margin": 0.2},
            "TripletMarginMiner",
            "TripletMarginLoss",
        ),
        _same(
            "ms_triplet",
            MS[0],
            MS[1],
            "triplet_margin",
            {"margin": 0.1},
            MS[2],
            "TripletMarginLoss",
        ),
        _same(
            "ms_multi_similarity",
            MS[0],
            MS[1],
            "multi_similarity",
            {},
            MS[2],
            "MultiSimilarityLoss",
        ),
        _same("ms_contrastive", MS[0], MS[1], "contrastive", {}, MS[2], "ContrastiveLoss"),
        _same(
            "pair_margin_contrastive",
            "pair_margin",
            {"pos_margin": 0.2, "neg_margin": 0.8},
            "contrastive",
            {},
            "PairMarginMiner",
            "ContrastiveLoss",
        ),
        _same(
            "batch_hard_triplet",
            "batch_hard",
            {},
            "triplet_margin",
            {"margin": 0.2},
            "BatchHardMiner",
            "TripletMarginLoss",
        ),
        _same(
            "batch_easy_hard_triplet",
            "batch_easy_hard",
            {},
            "triplet_margin",
            {"margin": 0.2},
            "BatchEasyHardMiner",
            "TripletMarginLoss",
        ),
        _same(
            "distance_weighted_margin",
            "distance_weighted",
            {"cutoff": 0.5, "nonzero_loss_cutoff": 1.4},
            "margin",
            {"margin": 0.2},
            "DistanceWeightedMiner",
            "MarginLoss",
            random=True,
        ),
        Case("quadruplet_quadruplet", "quadruplet", {}, "quadruplet", {}, None, None),
        # every other tuple loss on the multi-similarity miner's pairs
        _same("ms_margin", MS[0], MS[1], "margin", {"margin": 0.2}, MS[2], "MarginLoss"),
        _same("ms_circle", MS[0], MS[1], "circle", {}, MS[2], "CircleLoss"),
        _same(
            "ms_lifted_structure",
            MS[0],
            MS[1],
            "lifted_structure",
            {},
            MS[2],
            "LiftedStructureLoss",
        ),
        _same(
            "ms_generalized_lifted",
            MS[0],
            MS[1],
            "generalized_lifted_structure",
            {},
            MS[2],
            "GeneralizedLiftedStructureLoss",
        ),
        _same("ms_ntxent", MS[0], MS[1], "ntxent", {}, MS[2], "NTXentLoss"),
        _same("ms_supcon", MS[0], MS[1], "supcon", {}, MS[2], "SupConLoss"),
        _same("ms_tuplet_margin", MS[0], MS[1], "tuplet_margin", {}, MS[2], "TupletMarginLoss"),
        _same(
            "ms_intra_pair_variance",
            MS[0],
            MS[1],
            "intra_pair_variance",
            {},
            MS[2],
            "IntraPairVarianceLoss",
        ),
        _same(
            "ms_snr_contrastive",
            MS[0],
            MS[1],
            "signal_to_noise_ratio_contrastive",
            {},
            MS[2],
            "SignalToNoiseRatioContrastiveLoss",
        ),
        _same("ms_angular", MS[0], MS[1], "angular", {}, MS[2], "AngularLoss"),
        _same(
            "ms_threshold_consistent",
            MS[0],
            MS[1],
            "threshold_consistent_margin",
            {},
            MS[2],
            "ThresholdConsistentMarginLoss",
        ),
    ]
}

#: losses that join mined pairs into triplets in pytorch-metric-learning
TRIPLET_LOSSES = {"triplet_margin", "margin", "angular", "quadruplet"}


# -- worker ------------------------------------------------------------------------------
def _inputs(spec: dict[str, Any]):
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(spec["seed"])
    b, dim = spec["B"], spec["dim"]
    labels = torch.arange(b) // spec["per_class"]  # (B,)
    centres = F.normalize(torch.randn(int(labels.max()) + 1, dim, generator=g), dim=1)
    noise = torch.randn(b, dim, generator=g) / dim**0.5  # (B, D), norm about 1
    if CASES[spec["case"]].embeddings == "init":
        return F.normalize(noise, dim=1), labels
    return F.normalize(centres[labels] + noise, dim=1), labels


def _pml_tuples(case: Case, idx: Any, b: int) -> int:
    """Tuples (or mask entries) pytorch-metric-learning would create for this case."""
    if case.miner == "triplet_margin":
        return b**3  # get_all_triplets_indices: a (B, B, B) mask
    if len(idx) == 4 and case.loss in TRIPLET_LOSSES:
        return idx[0].numel() * idx[2].numel()  # the (P, N) match matrix
    return max(int(t.numel()) for t in idx)


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from pytorch_metric_learning import losses as pl
    from pytorch_metric_learning import miners as pm

    from dmlkit.registry import LOSSES, MINERS

    torch.set_num_threads(spec["threads"])
    case = CASES[spec["case"]]
    x0, labels = _inputs(spec)
    d_miner = MINERS.build(case.miner, **case.miner_kw)
    d_loss = LOSSES.build(case.loss, **case.loss_kw)
    out: dict[str, Any] = {}
    with torch.no_grad():
        idx = d_miner(x0, labels)
    out["tuples"] = [int(t.numel()) for t in idx]
    sides: dict[str, Any] = {}

    def dml_step(x):
        return d_loss(x, labels, indices=d_miner(x, labels))

    sides["dmlkit"] = dml_step
    pml_ok = case.pml_miner is not None and not spec.get("dmlkit_only")
    if pml_ok:
        estimate = _pml_tuples(case, idx, spec["B"])
        out["pml_tuples_estimate"] = estimate
        if estimate > spec["max_tuples"]:
            out["pml_status"] = f"skipped (would create {estimate / 1e6:.0f}M tuples)"
            pml_ok = False
    elif case.pml_loss is None:
        out["pml_status"] = "no counterpart"
    if pml_ok:
        p_miner = getattr(pm, case.pml_miner)(**case.pml_miner_kw)
        p_loss = getattr(pl, case.pml_loss)(**case.pml_loss_kw)

        def pml_step(x):
            return p_loss(x, labels, p_miner(x, labels))

        sides["pml"] = pml_step
        if case.random:  # compare the losses on the same (dmlkit's) tuples
            x = x0.clone().requires_grad_(True)
            ref_idx = tuple(t.clone() for t in idx)
            out["value_check"] = "both losses on dmlkit's mined tuples"
            out["values"] = {
                "dmlkit": float(d_loss(x, labels, indices=idx).detach()),
                "pml": float(p_loss(x, labels, ref_idx).detach()),
            }

    def call(step) -> tuple[float, float]:
        x = x0.clone().requires_grad_(True)
        t0 = time.perf_counter()
        loss = step(x)
        loss.backward()
        return float(loss.detach()), time.perf_counter() - t0

    first: dict[str, tuple[float, float]] = {}
    for lib, step in list(sides.items()):  # warm-up and values
        try:
            first[lib] = call(step)
        except (RuntimeError, MemoryError) as err:  # e.g. an allocation of tens of GB
            if lib == "dmlkit" or "allocate" not in str(err):
                raise
            what = str(err).split("you tried to")[-1][:60]
            out["pml_status"] = f"fail (out of memory: {what.strip()})"
            del sides[lib]
            out.pop("values", None)
    if "values" not in out:
        out["values"] = {lib: v for lib, (v, _) in first.items()}
    slowest = max(t for _, t in first.values())
    repeats = max(3, min(spec["repeats"], int(spec["budget_s"] / max(slowest, 1e-6) / len(sides))))
    times: dict[str, list[float]] = {lib: [] for lib in sides}
    order = list(sides)
    for r in range(repeats):
        for lib in order if r % 2 == 0 else order[::-1]:
            times[lib].append(call(sides[lib])[1])
    out["times_s"] = times
    return out


def launch(spec: dict[str, Any], time_cap: float) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=time_cap)
    except subprocess.TimeoutExpired:
        return {"status": f"skipped (over {time_cap:.0f} s)"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return {"status": "ok", **json.loads(line[len("RESULT ") :])}
    return {"status": f"fail (exit {proc.returncode})", "error": (proc.stderr or "")[-400:]}


# -- driver ------------------------------------------------------------------------------
def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    both = [r for r in records if r.get("speedup") is not None]
    out: dict[str, Any] = {}
    for b in sorted({r["B"] for r in records}):
        s = [r["speedup"] for r in both if r["B"] == b]
        out[f"median_speedup_B{b}"] = round(statistics.median(s), 2) if s else None
        out[f"min_speedup_B{b}"] = round(min(s), 2) if s else None
    out["slower_than_pml"] = [f"{r['case']}@{r['B']}" for r in both if r["speedup"] < 1.0]
    out["values_disagreeing (rel diff > 1e-5)"] = [
        f"{r['case']}@{r['B']}: {r['rel_diff']:.1e}"
        for r in records
        if r.get("rel_diff") is not None and r["rel_diff"] > 1e-5
    ]
    out["pml_not_run"] = {
        f"{r['case']}@{r['B']}": r["pml_status"] for r in records if r.get("pml_status")
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--per-class", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15, help="most timed rounds per case")
    ap.add_argument("--budget-s", type=float, default=6.0, help="timed seconds per case")
    ap.add_argument("--time-cap", type=float, default=240.0, help="seconds per process")
    ap.add_argument("--max-tuples", type=float, default=50e6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="mined_losses.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0

    info = machine_info(args.threads)
    print(
        f"miner + loss forward + backward, dim={args.dim}, {args.per_class} per class, "
        f"torch threads={args.threads}; median of interleaved calls after one warm-up",
        flush=True,
    )
    records: list[dict[str, Any]] = []
    for b in args.sizes:
        for name in args.cases:
            spec = {
                "case": name,
                "B": b,
                "dim": args.dim,
                "per_class": args.per_class,
                "repeats": args.repeats,
                "budget_s": args.budget_s,
                "threads": args.threads,
                "seed": args.seed,
                "max_tuples": args.max_tuples,
            }
            if CASES[name].miner == "triplet_margin" and b**3 > 40 * args.max_tuples:
                # both libraries' triplet-margin miners test every (a, p, n) of the batch
                res = {"status": f"skipped (the miner scans B^3 = {b**3 / 1e9:.0f}G triplets)"}
            else:
                res = launch(spec, args.time_cap)
                if res["status"].startswith("skipped (over"):  # again, dmlkit alone
                    res = launch({**spec, "dmlkit_only": True}, args.time_cap)
                    if res["status"] == "ok":
                        res["pml_status"] = f"over the {args.time_cap:.0f} s time cap"
            rec: dict[str, Any] = {"case": name, "B": b, "status": res["status"]}
            if res["status"] == "ok":
                t = {lib: statistics.median(v) * 1e3 for lib, v in res["times_s"].items()}
                vals = res["values"]
                rec.update(
                    dmlkit_ms=t["dmlkit"],
                    pml_ms=t.get("pml"),
                    tuples=res["tuples"],
                    pml_status=res.get("pml_status"),
                    values=vals,
                    value_check=res.get("value_check", "each library's own miner"),
                    repeats=len(res["times_s"]["dmlkit"]),
                )
                if "pml" in vals:
                    rec["rel_diff"] = abs(vals["dmlkit"] - vals["pml"]) / max(
                        abs(vals["pml"]), 1e-12
                    )
                if "pml" in t:
                    rec["speedup"] = t["pml"] / t["dmlkit"]
            else:
                rec["error"] = res.get("error")
            records.append(rec)
            write_json(args.out, {"info": info, "args": vars(args), "records": records})
            print(
                f"{name:>26} B={b:<5} dmlkit {rec.get('dmlkit_ms', rec['status'])} ms | pml "
                f"{rec.get('pml_ms') or rec.get('pml_status') or rec['status']} ms | x"
                f"{rec.get('speedup')} | rel diff {rec.get('rel_diff')}",
                flush=True,
            )
            if rec.get("error"):
                print("   ", rec["error"][-300:], flush=True)
    rows = [
        [
            r["case"],
            r["B"],
            r.get("dmlkit_ms", r["status"]),
            r.get("pml_ms") or r.get("pml_status") or r["status"],
            r.get("speedup"),
            None if r.get("rel_diff") is None else f"{r['rel_diff']:.0e}",
            "/".join(str(k) for k in r.get("tuples", [])),
        ]
        for r in records
    ]
    print()
    print(
        format_table(
            rows,
            [
                "case",
                "B",
                "dmlkit ms",
                "PML ms",
                "speedup (PML/dmlkit)",
                "value rel diff",
                "mined tuple sizes",
            ],
        )
    )
    summary = summarize(records)
    print("\nsummary:")
    for k, v in summary.items():
        print(f"  {k}: {v}")
    path = write_json(
        args.out, {"info": info, "args": vars(args), "records": records, "summary": summary}
    )
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
