"""Generalization to unseen classes: dmlkit's recipes against the field's baselines.

Protocols (train on five classes, evaluate leave-one-out retrieval on the other five,
never seen in training): digits 0-4 -> 5-9 and 5-9 -> 0-4 (scikit-learn's 8x8 digits),
Fashion-MNIST 0-4 -> 5-9 and 5-9 -> 0-4 (official train split -> official test split;
Debian's dataset-fashion-mnist).

Methods, each on the same held-out images:

- raw pixels, L2-normalized (the field's baseline) and as they are;
- the pretrained backbone's features with no training (the recipe's backbone settings);
- dmlkit recipes: ``configs/unseen_classes.yaml`` (``default``) and named variants,
  trained by ``dmlkit.training.train_run`` with the protocol's data block; the time
  counts everything (the first seed of a protocol starts from an empty feature cache);
- pytorch-metric-learning's standard recipe (TripletMarginLoss margin 0.1 +
  MultiSimilarityMiner epsilon 0.1, m-per-class sampling m = 4, batch 20 (5 classes x
  4; its examples use 32, more than 5 classes allow), weight decay 1e-4, as in its
  examples), three ways:

  * as its examples train a pretrained network (the target's peer): the same
    pretrained CNN at the same input size, all of it fine-tuned (Adam 1e-5) under a
    linear 64-d embedder (Adam 1e-4), on random resized crops and flips, for the
    wall-clock time of the default recipe's cold first run (features computed
    included), on every seed;
  * on the default recipe's own model (frozen backbone, cached features, residual
    head), Adam 1e-4, for the time the default recipe took on the same seed: its loss
    and miner against dmlkit's, all else equal;
  * (``--pml-scratch``) on dmlkit's small CNN from random weights, same budget.

``--validate`` swaps each protocol for class-disjoint folds inside its five training
classes (two held out, three trained on; three folds): recipes are chosen there, never
on the test classes. ``--splits other`` swaps the four protocols for class splits no
choice of the recipe looked at (even -> odd, odd -> even, 0,1,3,6,9 -> the rest, on both
datasets).

    python benchmarks/generalization.py                      # everything, 3 seeds
    python benchmarks/generalization.py --validate --recipes default no_uniformity
    python benchmarks/generalization.py --splits other --recipes default no_uniformity
"""

from __future__ import annotations

import argparse
import atexit
import copy
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, machine_info, write_json  # noqa: E402

from dmlkit.config.schema import Config  # noqa: E402
from dmlkit.data.load import split_dataset  # noqa: E402
from dmlkit.evaluation import retrieval_metrics  # noqa: E402
from dmlkit.functional.distances import l2_normalize  # noqa: E402
from dmlkit.training import train_run  # noqa: E402
from dmlkit.training.build import build_model, resolve_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("precision_at_1", "r_precision", "map_at_r")
LOW, HIGH = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
#: ``--splits``: "standard" is the four protocols above; "other" are class splits used for
#: no choice of the recipe (a check on protocols the recipe was never looked at on)
SPLITS: dict[str, list[tuple[list[int], list[int]]]] = {
    "standard": [(LOW, HIGH), (HIGH, LOW)],
    "other": [([0, 2, 4, 6, 8], [1, 3, 5, 7, 9]), ([1, 3, 5, 7, 9], [0, 2, 4, 6, 8]),
              ([0, 1, 3, 6, 9], [2, 4, 5, 7, 8])],
}

#: the network of "pml standard, CNN from scratch" (image side and channels from the data)
SCRATCH_CNN = {"name": "small_cnn", "dim": 128, "width": 32}

#: pytorch-metric-learning's recipe as its examples run it (the whole network fine-tuned)
EXAMPLES = "pml standard, network fine-tuned as in its examples"

#: recipe name -> overrides of configs/unseen_classes.yaml (dotted keys)
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    "lr_1e-3": {"optimizer.lr": 1e-3},
    "no_pixels": {"model.pixels": 0},
    "head_tap_only": {"model.taps": [16], "model.grid_taps": [], "model.pixels": 0},
    "linear_head": {"model.head_type": "linear", "model.dim": 128},
    "triplet_ms_miner": {"loss": {"name": "triplet_margin", "margin": 0.1},
                         "miner": {"name": "multi_similarity", "epsilon": 0.1}},
    "epochs_2x": {"training.epochs": "2x"},
    "no_uniformity": {"training.uniformity_weight": 0.0},
    "uniformity_0.3": {"training.uniformity_weight": 0.3},
    "anchor_60": {"training.anchor_weight": 60.0},
    # blocks 7 and 10 pooled globally, as before the 2 x 2 grid (the default since)
    "no_grid": {"model.grid_taps": []},
    # the features of 64 x 64 and 96 x 96 inputs averaged (model.scales)
    "scales_96": {"model.scales": [96]},
    # the backbone's last 3 blocks train too (at 0.1x the rate), on augmented images
    "finetune_aug": {"model.mode": "finetune", "model.trainable_blocks": 3,
                     "data.augment": {"crop_scale": [0.7, 1.0], "degrees": 10,
                                      "translate": 0.05}},
}  # fmt: skip


def protocol_data(
    name: str, train: list[int], test: list[int], per_class: int, heldout: int | None = None
) -> dict:
    if name == "digits":
        return {"name": "digits", "split": "classes", "train_classes": train,
                "test_classes": test, "seed": 0}  # fmt: skip
    return {"name": "fashion_mnist", "part": "train", "heldout_part": "test",
            "split": "classes", "train_classes": train, "test_classes": test,
            "max_per_class": per_class, "max_heldout_per_class": heldout,
            "seed": 0}  # fmt: skip


def protocols(
    validate: bool, per_class: int, only: list[str] | None, heldout: int | None = None,
    splits: str = "standard",
) -> dict[str, dict]:
    """Protocol name -> data block (``--validate``: folds inside the training classes)."""
    out: dict[str, dict] = {}
    for source, short in (("digits", "digits"), ("fashion_mnist", "fmnist")):
        for a, b in SPLITS[splits]:
            name = (f"{short} {a[0]}-{a[-1]} -> {b[0]}-{b[-1]}" if splits == "standard"
                    else f"{short} {a} -> {b}")
            if only and not any(o in name for o in only):
                continue
            if not validate:
                out[name] = protocol_data(source, a, b, per_class, heldout)
                continue
            for val in (a[3:], a[:2], a[1:3]):
                out[f"{name} | val {val}"] = fold_data(source, a, val, per_class)
    return out


def fold_data(source: str, classes: list[int], val: list[int], per_class: int) -> dict:
    """A class-disjoint fold inside the training ``classes``: train on all but ``val``,
    evaluate on ``val``, both from the training part."""
    rest = [c for c in classes if c not in val]
    data = protocol_data(source, rest, val, per_class)
    data.pop("heldout_part", None)
    data["max_heldout_per_class"] = per_class if source != "digits" else None
    return data


def set_key(raw: dict, key: str, value: Any) -> None:
    *path, last = key.split(".")
    node = raw
    for part in path:
        node = node.setdefault(part, {})
    if value == "2x":
        value = 2 * node[last]
    node[last] = value


def recipe_config(base: dict, recipe: str, data: dict, seed: int) -> Config:
    raw = copy.deepcopy(base)
    raw["data"] = copy.deepcopy(data)
    for key, value in RECIPES[recipe].items():
        if "." in key:
            set_key(raw, key, copy.deepcopy(value))
        else:
            raw[key] = copy.deepcopy(value)
    raw["training"]["seed"] = seed
    return Config.from_dict(raw)


def pick(metrics: dict) -> dict[str, float]:
    return {k: float(metrics[k]) for k in KEYS}


def baselines(config: Config, heldout: Any, train: Any) -> dict[str, dict]:
    """Raw pixels (L2 / as is) and the untrained pretrained features on ``heldout``."""
    raw = heldout.x.flatten(1).float()  # (n, C*H*W)
    out = {"raw pixels (L2)": pick(retrieval_metrics(l2_normalize(raw), heldout.labels)),
           "raw pixels (as is)": pick(retrieval_metrics(raw, heldout.labels))}  # fmt: skip
    emb = embed(untrained_model(config, train), heldout.x)
    out["pretrained, untrained"] = pick(retrieval_metrics(emb, heldout.labels))
    if config.model.get("name") == "efficientnet_lite0":  # the backbone's usual output alone
        model = untrained_model(config, train, taps=[16], grid_taps=[], pixels=0)
        emb = embed(model, heldout.x)
        out["pretrained head features (1280-d), untrained"] = pick(
            retrieval_metrics(emb, heldout.labels))
    return out


def untrained_model(config: Config, train: Any, **spec: Any) -> torch.nn.Module:
    """The config's model with no head (``head_type: none``; ``spec`` overrides), eval."""
    cfg = copy.deepcopy(config)
    cfg.model = dict(config.model, head_type="none", **spec)
    return build_model(resolve_config(cfg, train.x[0], 10)).eval()


def embed(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Embeddings of ``x`` in batches of 256 (frozen backbones read the feature cache)."""
    with torch.no_grad():
        return torch.cat([model(x[i : i + 256]) for i in range(0, len(x), 256)])


def pml_standard(
    config: Config, train: Any, heldout: Any, seconds: float, seed: int, scratch: bool = False
) -> dict:
    """pytorch-metric-learning's standard recipe on the default recipe's network (cached
    features: the frozen backbone is not re-run), or with ``scratch`` on dmlkit's small
    CNN from random weights, for ``seconds`` of wall-clock."""
    torch.manual_seed(seed)
    if scratch:
        config = copy.deepcopy(config)
        config.model = dict(SCRATCH_CNN)
    model = build_model(resolve_config(config, train.x[0], 10))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4, weight_decay=1e-4)
    return _pml_loop(model, opt, train, heldout, seconds, augment=None)


def pml_examples(config: Config, train: Any, heldout: Any, seconds: float, seed: int) -> dict:
    """pytorch-metric-learning's standard recipe as its examples train a pretrained
    network: the whole backbone fine-tuned (Adam 1e-5) under a linear 64-d embedder
    (Adam 1e-4), weight decay 1e-4, random resized crops (area 0.16-1, ratio 3/4-4/3)
    and horizontal flips; the same pretrained network and input size as the recipe
    (its batch norms keep their ImageNet statistics, as in every dmlkit mode)."""
    from dmlkit.data.augment_ops import AugmentPolicy

    torch.manual_seed(seed)
    config = copy.deepcopy(config)
    config.model = dict(config.model, mode="finetune", trainable_blocks=None, taps=[16],
                        grid_taps=[], pixels=0, head_type="linear", dim=64, normalize=False,
                        backbone_lr_scale=0.1)  # fmt: skip
    model = build_model(resolve_config(config, train.x[0], 10))
    opt = torch.optim.Adam(model.param_groups(1e-4), weight_decay=1e-4)
    policy = AugmentPolicy(crop_scale=(0.16, 1.0), crop_ratio=(0.75, 1.33), hflip=True)
    gen = torch.Generator().manual_seed(seed)
    return _pml_loop(model, opt, train, heldout, seconds, augment=lambda x: policy(x, gen))


def _pml_loop(model: Any, opt: Any, train: Any, heldout: Any, seconds: float,
              augment: Any) -> dict:  # fmt: skip
    """TripletMarginLoss(0.1) on MultiSimilarityMiner(0.1) tuples, m-per-class batches,
    for ``seconds`` of wall-clock; then leave-one-out retrieval on ``heldout``."""
    from pytorch_metric_learning import losses, miners, samplers

    from dmlkit.models.pretrained.feature_cache import cached_features

    frozen = getattr(model, "mode", None) == "frozen"
    x = cached_features(model, train.x) if frozen else train.x
    if augment is not None and x.dim() != 4:
        raise ValueError(f"augmentation needs (n, C, H, W) images, got {tuple(x.shape)}")
    loss_fn = losses.TripletMarginLoss(margin=0.1)
    miner = miners.MultiSimilarityMiner(epsilon=0.1)
    m = 4
    batch = min(32, m * train.num_classes)  # the sampler needs m x classes >= batch
    sampler = samplers.MPerClassSampler(train.labels, m=m, batch_size=batch,
                                        length_before_new_iter=len(train))  # fmt: skip
    start, epochs, steps = time.perf_counter(), 0, 0
    model.train()
    while time.perf_counter() - start < seconds:
        order = torch.tensor(list(iter(sampler)))
        for i in range(0, len(order) - batch + 1, batch):
            idx = order[i : i + batch]
            xb = x[idx] if augment is None else augment(x[idx])
            emb = model(xb)
            loss = loss_fn(emb, train.labels[idx], miner(emb, train.labels[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if time.perf_counter() - start >= seconds:
                break
        epochs += 1
    out = pick(retrieval_metrics(embed(model.eval(), heldout.x), heldout.labels))
    out["epochs"], out["steps"] = epochs, steps
    return out


def summarize(values: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in KEYS:
        xs = [v[key] for v in values]
        out[key] = statistics.fmean(xs)
        out[key + "_std"] = statistics.stdev(xs) if len(xs) > 1 else 0.0
    out["map_at_r_per_seed"] = [round(v["map_at_r"], 4) for v in values]
    if "seconds" in values[0]:
        out["seconds"] = [round(v["seconds"], 1) for v in values]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "unseen_classes.yaml"))
    parser.add_argument("--recipes", nargs="+", default=["default"], choices=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--protocols", nargs="+", default=None, help="substrings of names")
    parser.add_argument("--per-class", type=int, default=1000,
                        help="Fashion-MNIST training images per class (test split: all)")
    parser.add_argument("--heldout-per-class", type=int, default=None,
                        help="Fashion-MNIST test images per class (default: all 1,000)")
    parser.add_argument("--validate", action="store_true")
    parser.add_argument("--splits", choices=list(SPLITS), default="standard",
                        help="'other': even -> odd, odd -> even, 0,1,3,6,9 -> the rest")
    parser.add_argument("--no-pml", action="store_true")
    parser.add_argument("--no-pml-examples", action="store_true",
                        help="skip pytorch-metric-learning's recipe fine-tuning the network")
    parser.add_argument("--no-pml-model", action="store_true",
                        help="skip pytorch-metric-learning's loss on the recipe's own model")
    parser.add_argument("--pml-scratch", action="store_true",
                        help="also pytorch-metric-learning's recipe on a small CNN from scratch")
    parser.add_argument("--budgets", default=None,
                        help='JSON {protocol substring: seconds}: skip the recipes, run only '
                             'the pytorch-metric-learning rows with these budgets')
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import yaml

    base = yaml.safe_load(Path(args.config).read_text())
    results: dict[str, Any] = {"args": vars(args), "machine": machine_info(args.threads),
                               "protocols": {}}  # fmt: skip
    rows = []
    for pname, data in protocols(args.validate, args.per_class, args.protocols,
                                 args.heldout_per_class, args.splits).items():
        cache = tempfile.mkdtemp(prefix="dmlkit-features-")  # cold cache per protocol
        atexit.register(shutil.rmtree, cache, ignore_errors=True)  # (removed at exit)
        base_p = copy.deepcopy(base)
        if base_p["model"]["name"] == "efficientnet_lite0":
            base_p["model"]["cache_dir"] = cache
        cfg0 = recipe_config(base_p, "default", data, 0)
        train, heldout = split_dataset(cfg0.data)
        print(f"== {pname}: train {len(train)} ({train.num_classes} classes), "
              f"held out {len(heldout)} ({heldout.num_classes} classes)", flush=True)  # fmt: skip
        entry: dict[str, Any] = baselines(cfg0, heldout, train)
        runs: dict[str, list[dict]] = {}
        budgets = json.loads(args.budgets) if args.budgets else None
        for seed in args.seeds if budgets else []:
            budget = next(v for k, v in budgets.items() if k in pname)
            cfg = recipe_config(base_p, "default", data, seed)
            for label, scratch in (("pml standard", False), ("pml standard, CNN from scratch",
                                                             True)):  # fmt: skip
                if scratch == args.pml_scratch:
                    pml = pml_standard(cfg, train, heldout, budget, seed, scratch)
                    runs.setdefault(label, []).append(pml | {"seconds": budget})
                    print(f"  {label} seed {seed}: MAP@R {pml['map_at_r']:.4f} "
                          f"({pml['epochs']} epochs in {budget:.0f} s)", flush=True)  # fmt: skip
        for recipe in args.recipes if not budgets else []:
            cfg = recipe_config(base_p, recipe, data, 0)
            if cfg.model != cfg0.model and cfg.model.get("name") == "efficientnet_lite0":
                emb = embed(untrained_model(cfg, train), heldout.x)  # its own features
                entry[f"{recipe}, untrained"] = pick(retrieval_metrics(emb, heldout.labels))
            for seed in args.seeds:
                cfg = recipe_config(base_p, recipe, data, seed)
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    result = train_run(cfg, Path(tmp) / "run", log=lambda _m: None)
                    seconds = time.perf_counter() - start
                rec = pick(result.metrics) | {"seconds": seconds}
                runs.setdefault(recipe, []).append(rec)
                print(f"  {recipe} seed {seed}: MAP@R {rec['map_at_r']:.4f} ({seconds:.0f} s)",
                      flush=True)  # fmt: skip
                if recipe == "default" and not args.no_pml:
                    budget = runs["default"][-1]["seconds"]  # this seed's time
                    if not args.no_pml_model:
                        pml = pml_standard(cfg, train, heldout, budget, seed) | {
                            "seconds": budget}
                        runs.setdefault("pml standard", []).append(pml)
                        print(f"  pml standard seed {seed}: MAP@R {pml['map_at_r']:.4f} "
                              f"({pml['epochs']} epochs in {budget:.0f} s)", flush=True)
                    if not args.no_pml_examples:  # a user's first run: the cold time
                        cold = runs["default"][0]["seconds"]
                        pml = pml_examples(cfg, train, heldout, cold, seed) | {"seconds": cold}
                        runs.setdefault(EXAMPLES, []).append(pml)
                        print(f"  {EXAMPLES} seed {seed}: MAP@R {pml['map_at_r']:.4f} "
                              f"({pml['steps']} steps in {cold:.0f} s)", flush=True)  # fmt: skip
                    if args.pml_scratch:
                        pml = pml_standard(cfg, train, heldout, budget, seed, scratch=True)
                        label = "pml standard, CNN from scratch"
                        runs.setdefault(label, []).append(pml | {"seconds": budget})
                        print(f"  {label} seed {seed}: MAP@R {pml['map_at_r']:.4f} "
                              f"({pml['epochs']} epochs)", flush=True)  # fmt: skip
        entry.update({name: summarize(v) for name, v in runs.items()})
        results["protocols"][pname] = entry
        write_json(args.out or "generalization_partial.json", results)  # after each protocol
        for method, m in entry.items():
            rows.append([pname, method, m["precision_at_1"], m["r_precision"], m["map_at_r"],
                         m.get("map_at_r_std", 0.0), m.get("seconds", "-")])  # fmt: skip
    table = format_table(rows, ["protocol", "method", "P@1", "R-Prec", "MAP@R", "MAP@R sd",
                                "seconds (per seed)"])  # fmt: skip
    print(table)
    default = "generalization_validation.json" if args.validate else "generalization.json"
    name = args.out or default
    print("wrote", write_json(name, results | {"table": table}))
    print(json.dumps({p: {m: round(v["map_at_r"], 4) for m, v in e.items()}
                      for p, e in results["protocols"].items()}, indent=1))  # fmt: skip


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
