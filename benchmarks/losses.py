"""Loss speed and peak memory: dmlkit against pytorch-metric-learning, side by side.

For every (loss, batch size, library) a fresh subprocess imports both libraries, builds
the same inputs from a fixed seed, caps its address space, resets the kernel's peak-RSS
counter and then times forward + backward (one warm-up call, then the median of several
repeats). Peak memory is the rise of the peak RSS (VmHWM / ru_maxrss, reset through
``/proc/self/clear_refs``) above the RSS just before the first call: it counts every
allocation torch makes during forward and backward, inputs excluded.

Inputs: ``B`` L2-normalized random embeddings of dimension ``--dim`` with
``requires_grad``, labels ``arange(B) // 4`` (``B / 4`` classes with 4 samples each, the
batch an ``MPerClassSampler(m=4)`` yields; proxy losses get ``num_classes = B / 4`` with
proxies copied from one seeded tensor so both libraries start from the same weights).
The loss value of the warm-up call of each side is compared before the timings count.

Usage::

    python benchmarks/losses.py                      # all losses, B in 256..16384
    python benchmarks/losses.py --sizes 256 1024 --losses contrastive ntxent --repeats 3
    python benchmarks/losses.py --mined [mined_losses.py options]   # miner + loss cases

``--mined`` runs the mined cases of ``mined_losses.py`` (every miner with its loss and
every tuple loss on mined pairs, as in training) with the options that follow it.

Writes ``benchmarks/results/losses.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from _common import format_table, machine_info, write_json

SIZES = [256, 1024, 4096, 16384]
PER_CLASS = 4
#: losses over every pair / triplet of the batch (the memory target applies to these)
ALL_TUPLE = {"contrastive", "triplet_all", "multi_similarity", "ntxent"}


# -- the cases: the same loss, same parameters, in both libraries --------------------------
@dataclass(frozen=True)
class Case:
    name: str
    description: str
    dmlkit: Callable[[int, int], tuple[Callable[..., Any], Any]]
    pml: Callable[[int, int], tuple[Callable[..., Any], Any]]
    #: layout of the seeded weight tensor copied into the loss: None, "CxD" or "DxC"
    proxies: bool = False


def _dml(name: str, **params: Any):
    from dmlkit.registry import LOSSES

    return LOSSES.build(name, **params)


def _plain(loss: Any) -> tuple[Callable[..., Any], Any]:
    return (lambda x, y: loss(x, y)), loss


def _dml_batch_hard(c: int, d: int):
    from dmlkit.registry import MINERS

    miner = MINERS.build("batch_hard")
    loss = _dml("triplet_margin", margin=0.05)
    return (lambda x, y: loss(x, y, indices=miner(x, y))), loss


def _pml_batch_hard(c: int, d: int):
    from pytorch_metric_learning import losses, miners

    miner = miners.BatchHardMiner()
    loss = losses.TripletMarginLoss(margin=0.05)
    return (lambda x, y: loss(x, y, miner(x, y))), loss


def _pml(cls_name: str, **params: Any):
    from pytorch_metric_learning import losses

    return getattr(losses, cls_name)(**params)


CASES: dict[str, Case] = {
    c.name: c
    for c in [
        Case(
            "contrastive",
            "all pairs, pos_margin=0, neg_margin=1, Euclidean",
            lambda c, d: _plain(_dml("contrastive", pos_margin=0.0, neg_margin=1.0)),
            lambda c, d: _plain(_pml("ContrastiveLoss", pos_margin=0.0, neg_margin=1.0)),
        ),
        Case(
            "triplet_all",
            "all triplets, margin=0.05, Euclidean",
            lambda c, d: _plain(_dml("triplet_margin", margin=0.05)),
            lambda c, d: _plain(_pml("TripletMarginLoss", margin=0.05)),
        ),
        Case(
            "triplet_batch_hard",
            "BatchHardMiner + TripletMarginLoss(margin=0.05), mining timed too",
            _dml_batch_hard,
            _pml_batch_hard,
        ),
        Case(
            "multi_similarity",
            "alpha=2, beta=50, base=0.5, cosine",
            lambda c, d: _plain(_dml("multi_similarity", alpha=2.0, beta=50.0, base=0.5)),
            lambda c, d: _plain(_pml("MultiSimilarityLoss", alpha=2, beta=50, base=0.5)),
        ),
        Case(
            "ntxent",
            "temperature=0.07, cosine, every positive pair an anchor",
            lambda c, d: _plain(_dml("ntxent", temperature=0.07)),
            lambda c, d: _plain(_pml("NTXentLoss", temperature=0.07)),
        ),
        Case(
            "arcface",
            "margin=28.6 deg, scale=64, num_classes=B/4",
            lambda c, d: _plain(
                _dml("arcface", num_classes=c, embedding_size=d, margin=28.6, scale=64.0)
            ),
            lambda c, d: _plain(
                _pml("ArcFaceLoss", num_classes=c, embedding_size=d, margin=28.6, scale=64)
            ),
            proxies=True,
        ),
        Case(
            "proxy_anchor",
            "margin=0.1, alpha=32, num_classes=B/4",
            lambda c, d: _plain(
                _dml("proxy_anchor", num_classes=c, embedding_size=d, margin=0.1, alpha=32.0)
            ),
            lambda c, d: _plain(
                _pml("ProxyAnchorLoss", num_classes=c, embedding_size=d, margin=0.1, alpha=32)
            ),
            proxies=True,
        ),
    ]
}


# -- the rest of the library's catalogue: histogram ... PNP (same parameters both sides) ----
def _pml_manifold(c: int, d: int):
    loss = _pml("ManifoldLoss", l=d, K=c)
    return (lambda x, y: loss(x, None, y)), loss  # meta-classes in the indices slot there


CATALOGUE_CASES = [
    Case(
        "histogram",
        "n_bins=100, cosine, all unordered pairs",
        lambda c, d: _plain(_dml("histogram")),
        lambda c, d: _plain(_pml("HistogramLoss")),
    ),
    Case(
        "ranked_list",
        "margin=0.4, Tn=1, Tp=0 (RLL-Simpler), Euclidean",
        lambda c, d: _plain(_dml("ranked_list", margin=0.4, Tn=1.0)),
        lambda c, d: _plain(_pml("RankedListLoss", margin=0.4, Tn=1.0)),
    ),
    Case(
        "tuplet_margin",
        "margin=5.73 deg, scale=64, cosine",
        lambda c, d: _plain(_dml("tuplet_margin")),
        lambda c, d: _plain(_pml("TupletMarginLoss")),
    ),
    Case(
        "snr_contrastive",
        "pos_margin=0, neg_margin=1, SNR distance",
        lambda c, d: _plain(_dml("signal_to_noise_ratio_contrastive")),
        lambda c, d: _plain(_pml("SignalToNoiseRatioContrastiveLoss")),
    ),
    Case(
        "nca",
        "softmax_scale=1, squared Euclidean",
        lambda c, d: _plain(_dml("nca")),
        lambda c, d: _plain(_pml("NCALoss")),
    ),
    Case(
        "pnp",
        "variant O, anneal=0.01, cosine",
        lambda c, d: _plain(_dml("pnp")),
        lambda c, d: _plain(_pml("PNPLoss")),
    ),
    Case(
        "large_margin_softmax",
        "margin=4, scale=1, num_classes=B/4",
        lambda c, d: _plain(_dml("large_margin_softmax", num_classes=c, embedding_size=d)),
        lambda c, d: _plain(_pml("LargeMarginSoftmaxLoss", num_classes=c, embedding_size=d)),
        proxies=True,
    ),
    Case(
        "p2s_grad",
        "num_classes=B/4",
        lambda c, d: _plain(_dml("p2s_grad", descriptors_dim=d, num_classes=c)),
        lambda c, d: _plain(_pml("P2SGradLoss", descriptors_dim=d, num_classes=c)),
        proxies=True,
    ),
    Case(
        "manifold",
        "K=B/4 proxies, meta-class = label, lambdaC=1, alpha=0.8",
        lambda c, d: _plain(_dml("manifold", l=d, K=c)),
        _pml_manifold,
        proxies=True,
    ),
]
CASES.update({c.name: c for c in CATALOGUE_CASES})


# -- more of the catalogue: dynamic soft margin ... multiple losses (same parameters) ---------
def _pml_dynamic_soft_margin(c: int, d: int):
    loss = _pml("DynamicSoftMarginLoss")

    def step(x, y):
        loss.hist_ = loss.hist_.detach()  # its stored histogram keeps the last graph
        return loss(x, y)

    return step, loss


def _two_views(loss: Any, pml: bool) -> tuple[Callable[..., Any], Any]:
    """First half of the batch as view 1, second half as view 2 (no labels)."""

    def step(x, y):
        h = x.shape[0] // 2
        return loss(x[:h], ref_emb=x[h:]) if pml else loss(x[:h], ref_embeddings=x[h:])

    return step, loss


def _dml_multiple(c: int, d: int):
    from dmlkit.registry import MINERS

    loss = _dml("multiple_losses", losses=[_dml("contrastive"), _dml("triplet_margin",
                margin=0.1)], miners=[None, MINERS.build("multi_similarity")],
                weights=[1.0, 0.5])  # fmt: skip
    return _plain(loss)


def _pml_multiple(c: int, d: int):
    from pytorch_metric_learning import miners

    loss = _pml("MultipleLosses", losses=[_pml("ContrastiveLoss"), _pml("TripletMarginLoss",
                margin=0.1)], miners=[None, miners.MultiSimilarityMiner()],
                weights=[1.0, 0.5])  # fmt: skip
    return _plain(loss)


MORE_CASES = [
    Case(
        "dynamic_soft_margin",
        "all triplets, min_val=-2, num_bins=10, momentum=0.01",
        lambda c, d: _plain(_dml("dynamic_soft_margin")),
        _pml_dynamic_soft_margin,
    ),
    Case(
        "intra_pair_variance",
        "all pairs, pos_eps=neg_eps=0.01, cosine",
        lambda c, d: _plain(_dml("intra_pair_variance")),
        lambda c, d: _plain(_pml("IntraPairVarianceLoss")),
    ),
    Case(
        "instance",
        "gamma=64, cosine, (B, B) cross-entropy",
        lambda c, d: _plain(_dml("instance")),
        lambda c, d: _plain(_pml("InstanceLoss")),
    ),
    Case(
        "vicreg",
        "two views = the batch's halves, lambda=mu=25, nu=1",
        lambda c, d: _two_views(_dml("vicreg"), pml=False),
        lambda c, d: _two_views(_pml("VICRegLoss"), pml=True),
    ),
    Case(
        "threshold_consistent_margin",
        "all pairs, margins 0.9 / 0.5, cosine",
        lambda c, d: _plain(_dml("threshold_consistent_margin")),
        lambda c, d: _plain(_pml("ThresholdConsistentMarginLoss")),
    ),
    Case(
        "smooth_ap",
        "temperature=0.01, groups of B/4 (pytorch-metric-learning's blocks)",
        lambda c, d: _plain(_dml("smooth_ap")),
        lambda c, d: _plain(_pml("SmoothAPLoss")),
    ),
    Case(
        "multiple_losses",
        "contrastive + 0.5 x triplet(0.1) on multi-similarity-mined tuples",
        _dml_multiple,
        _pml_multiple,
    ),
]
CASES.update({c.name: c for c in MORE_CASES})


# -- worker: one (loss, B, library) in a fresh process -------------------------------------
def _copy_weights(module: Any, weights: Any) -> None:
    """Copy the seeded ``(C, D)`` weights into the loss's single parameter.

    A ``(D, C)`` parameter (pytorch-metric-learning's ``ArcFaceLoss.W``) gets the
    transpose; which layout applies is read from the shape, so ``C != D`` is required.
    """
    params = list(module.parameters())
    if len(params) != 1:
        raise RuntimeError(
            f"expected one weight tensor in {type(module).__name__}, got {len(params)}"
        )
    p = params[0]
    c, d = weights.shape
    if c == d:
        raise RuntimeError(
            "num_classes == dim makes the weight layout ambiguous; change B or --dim"
        )
    src = weights if tuple(p.shape) == (c, d) else weights.T
    if tuple(src.shape) != tuple(p.shape):
        raise RuntimeError(f"weight shape {tuple(p.shape)} fits neither {(c, d)} nor {(d, c)}")
    with __import__("torch").no_grad():
        p.copy_(src)


class _Side:
    """One library's loss on the shared inputs: ``call()`` runs forward + backward."""

    def __init__(self, spec: dict[str, Any], lib: str, inputs: tuple[Any, Any, Any]) -> None:
        x0, labels, weights = inputs
        case = CASES[spec["loss"]]
        n_classes, dim = weights.shape
        self.step, self.module = (case.dmlkit if lib == "dmlkit" else case.pml)(n_classes, dim)
        if case.proxies:
            _copy_weights(self.module, weights)
        self.x = x0.clone().requires_grad_(True)
        self.labels = labels

    def call(self) -> tuple[float, float]:
        self.x.grad = None
        self.module.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss = self.step(self.x, self.labels)
        loss.backward()
        elapsed = time.perf_counter() - t0
        return float(loss.detach()), elapsed


def _setup(spec: dict[str, Any]) -> tuple[dict[str, Any], tuple[Any, Any, Any]]:
    import pytorch_metric_learning.losses  # noqa: F401
    import pytorch_metric_learning.miners  # noqa: F401
    import torch
    import torch.nn.functional as F
    from _common import cap_address_space, rss_mb

    import dmlkit.losses  # noqa: F401  (both libraries loaded in every worker: same baseline)
    import dmlkit.miners  # noqa: F401

    torch.set_num_threads(spec["threads"])
    info: dict[str, Any] = {"idle_rss_mb": rss_mb()}
    info["as_limit_gb"] = cap_address_space(spec["mem_cap_gb"])
    b, dim = spec["B"], spec["dim"]
    g = torch.Generator().manual_seed(spec["seed"])
    x0 = F.normalize(torch.randn(b, dim, generator=g), dim=1)  # (B, D)
    labels = torch.arange(b) // PER_CLASS  # (B,)
    weights = torch.randn(max(1, b // PER_CLASS), dim, generator=g)  # (C, D)
    return info, (x0, labels, weights)


def _failure(e: BaseException) -> dict[str, Any]:
    msg = str(e)
    memory = isinstance(e, MemoryError) or "alloc" in msg.lower() or "memory" in msg.lower()
    return {"status": "fail (mem cap)" if memory else "error", "error": msg[:300]}


def memory_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS of one library's forward + backward, alone in this process.

    ``cold_peak_mb``: first call (one-time initialisations included). ``peak_mb``: a
    later call, after ``malloc_trim`` handed freed heap back, so memory the allocator
    kept from the first call is not mistaken for free headroom.
    """
    import ctypes
    import gc

    from _common import peak_rss_mb, reset_peak_rss

    out, inputs = _setup(spec)
    try:
        side = _Side(spec, spec["lib"], inputs)
    except Exception as e:  # a loss missing from the library, a bad parameter name
        return {**out, "status": "unavailable", "error": f"{type(e).__name__}: {e}"}
    trim = ctypes.CDLL("libc.so.6").malloc_trim
    gc.collect()
    base = reset_peak_rss()
    try:
        value, first = side.call()
        out.update(value=value, first_s=first, cold_peak_mb=peak_rss_mb() - base)
        gc.collect()
        trim(0)
        base = reset_peak_rss()
        side.call()
        out["peak_mb"] = peak_rss_mb() - base
    except (MemoryError, RuntimeError) as e:
        return {**out, **_failure(e), "peak_mb_at_failure": peak_rss_mb() - base}
    out["status"] = "ok"
    return out


def timing_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Forward + backward times of the libraries in ``spec["libs"]``, interleaved.

    Both sides live in one process and alternate call by call (the order flips every
    round), so load from other processes on the machine hits both alike.
    """
    out, inputs = _setup(spec)
    sides = {lib: _Side(spec, lib, inputs) for lib in spec["libs"]}
    values = {lib: side.call()[0] for lib, side in sides.items()}  # warm-up + value check
    times: dict[str, list[float]] = {lib: [] for lib in sides}
    order = list(sides)
    for r in range(spec["repeats"]):
        for lib in order if r % 2 == 0 else order[::-1]:
            times[lib].append(sides[lib].call()[1])
    out["values"] = values
    out["times_s"] = times
    return out


def launch(mode: str, spec: dict[str, Any], time_cap: float) -> dict[str, Any]:
    """Run one worker in a fresh interpreter; a kill at ``time_cap`` is "skipped (time cap)"."""
    cmd = [sys.executable, __file__, "--worker", mode, json.dumps(spec)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=time_cap)
    except subprocess.TimeoutExpired:
        return {"status": "skipped (time cap)", "wall_s": time.perf_counter() - t0}
    wall = time.perf_counter() - t0
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT ") :])
            res["wall_s"] = wall
            res.setdefault("status", "ok")
            return res
    tail = (proc.stderr or proc.stdout)[-300:]
    return {"status": f"fail (exit {proc.returncode})", "error": tail, "wall_s": wall}


def measure(spec: dict[str, Any], args: argparse.Namespace, skip: dict[str, str]) -> dict[str, Any]:
    """Memory of each library (own processes), then their interleaved timings."""
    res: dict[str, dict[str, Any]] = {}
    for lib in ("dmlkit", "pml"):
        if lib in skip:
            res[lib] = {"status": skip[lib]}
        else:
            res[lib] = launch("memory", {**spec, "lib": lib}, args.time_cap)
    ok = [lib for lib in res if res[lib]["status"] == "ok"]
    if ok:
        slowest = max(res[lib]["first_s"] for lib in ok)
        repeats = max(1, min(args.repeats, int(args.budget_s / max(slowest, 1e-9) / len(ok))))
        timing = launch("timing", {**spec, "libs": ok, "repeats": repeats}, args.time_cap)
        for lib in ok:
            if timing.get("status") != "ok":
                res[lib].update(status=f"timing {timing['status']}", error=timing.get("error"))
                continue
            t = timing["times_s"][lib]
            res[lib].update(times_s=t, median_s=statistics.median(t), min_s=min(t), repeats=len(t))
            res[lib]["timing_value"] = timing["values"][lib]
    return res


# -- driver ------------------------------------------------------------------------------
def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den


def _ms(res: dict[str, Any]) -> float | None:
    return res["median_s"] * 1e3 if res.get("status") == "ok" else None


def _mb(res: dict[str, Any]) -> float | None:
    return res["peak_mb"] if res.get("status") == "ok" else None


def _cell(res: dict[str, Any], value: float | None) -> Any:
    return value if value is not None else res.get("status", "?")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    ap.add_argument("--losses", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats after one warm-up")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=20.0,
        help="fewer repeats (at least 1) when the warm-up says they would exceed this",
    )
    ap.add_argument(
        "--time-cap",
        type=float,
        default=120.0,
        help="seconds per (loss, B, library) process, start-up included",
    )
    ap.add_argument(
        "--mem-cap-gb",
        type=float,
        default=8.0,
        help="RLIMIT_AS headroom above the idle worker's address space",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="losses.json")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    if "--mined" in argv:  # the miner + loss cases live in mined_losses.py
        import mined_losses

        return mined_losses.main([a for a in argv if a != "--mined"])
    args = ap.parse_args(argv)

    if args.worker:
        mode, spec = args.worker[0], json.loads(args.worker[1])
        result = memory_worker(spec) if mode == "memory" else timing_worker(spec)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    info = machine_info(args.threads)
    print(f"torch.set_num_threads({args.threads}); {info['cpu_count']} CPUs; torch {info['torch']}")
    print(
        "memory: peak RSS rise (VmHWM reset via /proc/self/clear_refs) during a warm "
        "forward+backward, one fresh process per (loss, B, library); address space capped "
        f"at idle + {args.mem_cap_gb} GB (RLIMIT_AS); time cap {args.time_cap:.0f} s per process"
    )
    print(
        "time: median of interleaved dmlkit/PML calls in one process, after one warm-up; "
        f"labels arange(B) // {PER_CLASS} (B/{PER_CLASS} classes); dim={args.dim}\n",
        flush=True,
    )

    records: list[dict[str, Any]] = []
    failed_at: dict[tuple[str, str], int] = {}
    for name in args.losses:
        for b in sorted(args.sizes):
            spec = {
                "loss": name,
                "B": b,
                "dim": args.dim,
                "seed": args.seed,
                "mem_cap_gb": args.mem_cap_gb,
                "threads": args.threads,
            }
            skip = {
                lib: f"skipped (failed at B={failed_at[name, lib]})"
                for lib in ("dmlkit", "pml")
                if (name, lib) in failed_at
            }
            res = measure(spec, args, skip)
            for lib in ("dmlkit", "pml"):
                if res[lib]["status"].startswith(("fail", "skipped (time")):
                    failed_at[name, lib] = b
            d, p = res["dmlkit"], res["pml"]
            rel = None
            if "value" in d and "value" in p:
                rel = abs(d["value"] - p["value"]) / max(abs(p["value"]), 1e-12)
            rec = {
                "loss": name,
                "B": b,
                "dmlkit": d,
                "pml": p,
                "value_rel_diff": rel,
                "speed_ratio": _ratio(_ms(p), _ms(d)),
                "memory_ratio": _ratio(_mb(d), _mb(p)),
            }
            records.append(rec)
            print(
                f"{name:>18} B={b:<6} dmlkit {_cell(d, _ms(d))} ms {_cell(d, _mb(d))} MB | "
                f"pml {_cell(p, _ms(p))} ms {_cell(p, _mb(p))} MB | value rel diff "
                f"{'-' if rel is None else f'{rel:.1e}'}",
                flush=True,
            )
            for lib, r in res.items():
                if r.get("error"):
                    print(f"    {lib}: {r['status']}: {r['error'][:200]}", flush=True)

    rows = [
        [
            r["loss"],
            r["B"],
            _cell(r["dmlkit"], _ms(r["dmlkit"])),
            _cell(r["pml"], _ms(r["pml"])),
            r["speed_ratio"],
            _cell(r["dmlkit"], _mb(r["dmlkit"])),
            _cell(r["pml"], _mb(r["pml"])),
            r["memory_ratio"],
            None if r["value_rel_diff"] is None else f"{r['value_rel_diff']:.0e}",
        ]
        for r in records
    ]
    print()
    print(
        format_table(
            rows,
            [
                "loss",
                "B",
                "dmlkit ms",
                "PML ms",
                "speed x (PML/dmlkit)",
                "dmlkit MB",
                "PML MB",
                "mem ratio (dmlkit/PML)",
                "value rel diff",
            ],
        )
    )
    summary = summarize(records)
    print("\nsummary:")
    for key, value in summary.items():
        print(f"  {key}: {value}")
    path = write_json(
        args.out,
        {
            "info": info,
            "args": {k: v for k, v in vars(args).items() if k != "worker"},
            "per_class": PER_CLASS,
            "records": records,
            "summary": summary,
        },
    )
    print(f"\nwrote {path}")
    return 0


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    def ok(r: dict[str, Any], lib: str) -> bool:
        return r[lib].get("status") == "ok"

    at_1024 = [r["speed_ratio"] for r in records if r["B"] == 1024 and r["speed_ratio"] is not None]
    # losses where only dmlkit finishes at B=1024 count as above any target
    with_fails = at_1024 + [
        float("inf") for r in records if r["B"] == 1024 and ok(r, "dmlkit") and not ok(r, "pml")
    ]
    mem = {
        f"{r['loss']}@{r['B']}": (
            round(r["memory_ratio"], 3)
            if r["memory_ratio"] is not None
            else f"dmlkit {r['dmlkit']['status']}, PML {r['pml']['status']}"
        )
        for r in records
        if r["loss"] in ALL_TUPLE
    }
    # ratios of a few MB are allocator noise: judge memory where PML needs >= 64 MB or fails
    judged = [
        r
        for r in records
        if r["loss"] in ALL_TUPLE
        and ok(r, "dmlkit")
        and ((_mb(r["pml"]) or 0) >= 64 or not ok(r, "pml"))
    ]
    mem_ok = all(not ok(r, "pml") or r["memory_ratio"] <= 0.5 for r in judged)
    pml_only = [
        f"{r['loss']}@{r['B']} (dmlkit: {r['dmlkit']['status']})"
        for r in records
        if ok(r, "pml") and not ok(r, "dmlkit")
    ]
    neither = [
        f"{r['loss']}@{r['B']} (dmlkit: {r['dmlkit']['status']}, PML: {r['pml']['status']})"
        for r in records
        if not ok(r, "pml") and not ok(r, "dmlkit")
    ]
    bad_values = [
        f"{r['loss']}@{r['B']}: {r['value_rel_diff']:.1e}"
        for r in records
        if r["value_rel_diff"] is not None and r["value_rel_diff"] > 1e-4
    ]
    med = statistics.median(at_1024) if at_1024 else None
    med_f = statistics.median(with_fails) if with_fails else None
    return {
        "median_speed_ratio_at_1024 (both run)": None if med is None else round(med, 3),
        "median_speed_ratio_at_1024 (PML failures count as wins)": (
            None if med_f is None else (round(med_f, 3) if med_f != float("inf") else "inf")
        ),
        "speed_target_met (>= 2x at B=1024, both run)": None if med is None else med >= 2.0,
        "all_tuple_memory_ratios": mem,
        "memory_target_met (<= 0.5 where dmlkit runs and PML needs >= 64 MB or fails)": (
            mem_ok if judged else None
        ),
        "pml_runs_dmlkit_fails": pml_only,
        "neither_finishes": neither,
        "values_disagreeing (rel diff > 1e-4)": bad_values,
    }


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
