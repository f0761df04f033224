"""End-to-end training speed: dmlkit's Trainer against a plain pytorch-metric-learning loop.

Recipes:

* ``pml_recipe``: the field's common one. Fashion-MNIST classes 0-4 (28 x 28), an
  m-per-class sampler of 5 classes x 32 (batch 160), ``SmallCNN`` (64-d),
  ``TripletMarginLoss(margin=0.1)`` on ``MultiSimilarityMiner(epsilon=0.1)`` pairs,
  Adam (lr 1e-3);
* every shipped ``configs/*.yaml`` with class labels and a model trained end to end
  (its data, model, loss, miner, sampler and optimizer as configured). Configs on a
  frozen pretrained backbone, on weak pairs / triplets, or with a sampler that mines
  with the model have no plain-loop counterpart: they are listed and skipped.

Both sides train the same network from the same initial weights on the same tensors,
``--iters`` steps per timed round: dmlkit through ``Trainer.train_epoch`` (sampler,
batch fetch, autocast context, miner, loss, finiteness check, optimizer and scheduler
steps, running loss), PML as its users write it (``MPerClassSampler`` with the same
``m`` and batch size, a ``DataLoader`` over a ``TensorDataset``, miner, loss,
``zero_grad``, ``backward``, ``step``). Rounds alternate between the two (order flipped
every round); the table gives the median iterations/s.

Where the time goes: the same steps once more per library with a timer around each
phase (data, model forward, miner, loss forward, backward, optimizer), median ms per
phase.

Usage::

    python benchmarks/training_speed.py                  # PML recipe + configs
    python benchmarks/training_speed.py --recipes pml_recipe --iters 20 --rounds 5

Writes ``benchmarks/results/training_speed.json``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from itertools import islice
from pathlib import Path
from typing import Any

from _common import format_table, machine_info, write_json

ROOT = Path(__file__).resolve().parents[1]

#: dmlkit registry name -> (PML class, parameter renames) for the plain loop
PML_LOSSES = {"triplet_margin": "TripletMarginLoss", "multi_similarity": "MultiSimilarityLoss",
              "contrastive": "ContrastiveLoss"}  # fmt: skip
PML_MINERS = {"batch_hard": "BatchHardMiner", "multi_similarity": "MultiSimilarityMiner",
              "triplet_margin": "TripletMarginMiner", "pair_margin": "PairMarginMiner"}  # fmt: skip


PHASES = ("data", "forward", "miner", "loss", "backward", "optimizer")


class _Limited:
    """The first ``k`` batches of a batch sampler, as a sampler of ``k`` batches."""

    def __init__(self, sampler: Any, k: int) -> None:
        self.sampler, self.k = sampler, k

    def __iter__(self):
        return islice(iter(self.sampler), self.k)

    def __len__(self) -> int:
        return self.k

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


def _pml_recipe_config() -> Any:
    from dmlkit.config.schema import Config

    return Config.from_dict(
        {
            "name": "pml_recipe",
            "data": {"name": "fashion_mnist", "part": "train", "heldout_part": "test",
                     "split": "classes", "train_classes": [0, 1, 2, 3, 4],
                     "test_classes": [5, 6, 7, 8, 9], "seed": 0},
            "model": {"name": "small_cnn", "in_channels": 1, "dim": 64, "width": 32},
            "loss": {"name": "triplet_margin", "margin": 0.1},
            "miner": {"name": "multi_similarity", "epsilon": 0.1},
            "sampler": {"name": "m_per_class", "m": 32, "batch_size": 160},
            "optimizer": {"name": "adam", "lr": 0.001},
            "schedule": {"name": "none"},
            "training": {"epochs": 1, "seed": 0, "num_threads": 1},
        }
    )  # fmt: skip


def _load(name: str) -> tuple[Any, str | None]:
    """The recipe's config, or why it has no plain-loop counterpart."""
    from dmlkit.config.schema import load_config

    if name == "pml_recipe":
        return _pml_recipe_config(), None
    config = load_config(ROOT / "configs" / f"{name}.yaml")
    if config.data.kind != "labels":
        return config, f"weak supervision (data.kind={config.data.kind})"
    if config.model.get("mode") == "frozen":
        return config, "frozen pretrained backbone (features cached, no CNN step)"
    sampler = (config.sampler or {}).get("name")
    if sampler != "m_per_class":
        return config, f"sampler {sampler!r} has no PML counterpart"
    if config.loss["name"] not in PML_LOSSES:
        return config, f"loss {config.loss['name']!r} not in the plain loop's table"
    if config.miner is not None and config.miner["name"] not in PML_MINERS:
        return config, f"miner {config.miner['name']!r} not in the plain loop's table"
    return config, None


def _setup(config: Any, iters: int) -> dict[str, Any]:
    import torch
    from pytorch_metric_learning import losses as pl
    from pytorch_metric_learning import miners as pm
    from pytorch_metric_learning import samplers as ps

    from dmlkit.training.build import build_sampler, resolve_config
    from dmlkit.training.run import build_splits
    from dmlkit.training.trainer import Trainer

    train, _ = build_splits(config)
    resolved = resolve_config(config, train.x[0], int(train.labels.max()) + 1)
    sampler = build_sampler(resolved, train.labels, len(train), train)
    trainer = Trainer(resolved, train, sampler=_Limited(sampler, iters), log=None)
    model = copy.deepcopy(trainer.model)  # the same network and initial weights
    loss_kw = {k: v for k, v in resolved.loss.items() if k != "name"}
    p_loss = getattr(pl, PML_LOSSES[resolved.loss["name"]])(**loss_kw)
    p_miner = None
    if resolved.miner is not None:
        miner_kw = {k: v for k, v in resolved.miner.items() if k != "name"}
        p_miner = getattr(pm, PML_MINERS[resolved.miner["name"]])(**miner_kw)
    spec = resolved.sampler
    labels = train.labels.numpy()
    p_sampler = ps.MPerClassSampler(
        labels, m=spec["m"], batch_size=spec["batch_size"],
        length_before_new_iter=iters * spec["batch_size"],
    )  # fmt: skip
    x, y = torch.as_tensor(train.x), torch.as_tensor(train.labels)
    dataset = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=spec["batch_size"], sampler=p_sampler, drop_last=True
    )
    opt_cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}
    p_opt = opt_cls[resolved.optimizer.name](model.parameters(), lr=resolved.optimizer.lr)
    return {"trainer": trainer, "model": model, "loss": p_loss, "miner": p_miner,
            "loader": loader, "opt": p_opt, "iters": iters}  # fmt: skip


def _dmlkit_round(s: dict[str, Any], epoch: int) -> float:
    t0 = time.perf_counter()
    s["trainer"].train_epoch(epoch)
    return s["iters"] / (time.perf_counter() - t0)


def _pml_round(s: dict[str, Any]) -> float:
    model, loss_fn, miner, opt = s["model"], s["loss"], s["miner"], s["opt"]
    model.train()
    t0, n = time.perf_counter(), 0
    for x, y in s["loader"]:
        emb = model(x)
        loss = loss_fn(emb, y, miner(emb, y)) if miner is not None else loss_fn(emb, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += 1
    return n / (time.perf_counter() - t0)


def _phases(s: dict[str, Any], lib: str, steps: int) -> dict[str, float]:
    """Median ms per phase over ``steps`` steps, each phase timed on its own."""
    import torch

    tr = s["trainer"]
    if lib == "dmlkit":
        model, opt, miner, loss_fn = tr.model, tr.optimizer, tr.miner, tr.loss
        batches = (tr.fetch(b) for b in tr.sampler)
    else:
        model, opt, miner, loss_fn = s["model"], s["opt"], s["miner"], s["loss"]
        batches = iter(s["loader"])
    out: dict[str, list[float]] = {k: [] for k in PHASES}
    for _ in range(steps):
        t = [time.perf_counter()]
        try:
            x, y = next(batches)[:2]
        except StopIteration:
            break
        t.append(time.perf_counter())
        emb = model(x)
        t.append(time.perf_counter())
        with torch.no_grad():
            idx = miner(emb, y) if miner is not None else None
        t.append(time.perf_counter())
        if lib == "dmlkit":
            loss = loss_fn(emb, y, indices=idx)
        else:
            loss = loss_fn(emb, y, idx) if idx is not None else loss_fn(emb, y)
        t.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t.append(time.perf_counter())
        opt.step()
        t.append(time.perf_counter())
        for k, (a, b) in zip(out, zip(t, t[1:], strict=False), strict=True):
            out[k].append((b - a) * 1e3)
    return {k: round(statistics.median(v), 3) for k, v in out.items() if v}


def run_recipe(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    config, reason = _load(name)
    if reason is not None:
        return {"recipe": name, "status": f"skipped: {reason}"}
    torch.set_num_threads(config.training.num_threads or args.threads)
    s = _setup(config, args.iters)
    _dmlkit_round(s, 0)  # warm-up of both
    _pml_round(s)
    rates: dict[str, list[float]] = {"dmlkit": [], "pml": []}
    for r in range(args.rounds):
        order = ["dmlkit", "pml"] if r % 2 == 0 else ["pml", "dmlkit"]
        for lib in order:
            rates[lib].append(_dmlkit_round(s, r + 1) if lib == "dmlkit" else _pml_round(s))
    med = {lib: statistics.median(v) for lib, v in rates.items()}
    phases = {lib: _phases(s, lib, args.iters) for lib in ("dmlkit", "pml")}
    spec = config.sampler
    return {
        "recipe": name, "status": "ok", "its_per_s": med, "rates": rates,
        "ratio": med["dmlkit"] / med["pml"], "phases_ms": phases,
        "setup": f"{config.model['name']}, {config.loss['name']}"
        + (f" + {config.miner['name']} miner" if config.miner else "")
        + f", m={spec['m']} x {spec['batch_size'] // spec['m']} classes",
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    configs = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    ap.add_argument("--recipes", nargs="+", default=["pml_recipe", *configs])
    ap.add_argument("--iters", type=int, default=15, help="training steps per timed round")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per library")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="training_speed.json")
    args = ap.parse_args(argv)
    info = machine_info(args.threads)
    records = []
    for name in args.recipes:
        rec = run_recipe(name, args)
        records.append(rec)
        if rec["status"] == "ok":
            print(
                f"{name}: dmlkit {rec['its_per_s']['dmlkit']:.2f} it/s, "
                f"PML {rec['its_per_s']['pml']:.2f} it/s (x{rec['ratio']:.2f}); phases ms "
                f"dmlkit {rec['phases_ms']['dmlkit']} | PML {rec['phases_ms']['pml']}",
                flush=True,
            )
        else:
            print(f"{name}: {rec['status']}", flush=True)
    ok = [r for r in records if r["status"] == "ok"]
    print()
    print(format_table(
        [[r["recipe"], r["setup"], r["its_per_s"]["dmlkit"], r["its_per_s"]["pml"], r["ratio"]]
         for r in ok],
        ["recipe", "setup", "dmlkit it/s", "PML it/s", "dmlkit / PML"],
    ))  # fmt: skip
    phase_rows = []
    for r in ok:
        for lib in ("dmlkit", "pml"):
            p = r["phases_ms"][lib]
            phase_rows.append([r["recipe"], lib, *(p.get(k) for k in PHASES)])
    print()
    print(format_table(phase_rows, ["recipe", "library", "data ms", "forward ms", "miner ms",
                                    "loss ms", "backward ms", "optimizer ms"]))  # fmt: skip
    for r in records:
        if r["status"] != "ok":
            print(f"  {r['recipe']}: {r['status']}")
    path = write_json(args.out, {"info": info, "args": vars(args), "records": records})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
