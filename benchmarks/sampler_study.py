"""dmlkit's MPerClassSampler against pytorch-metric-learning's, on unseen classes.

Protocol: train on classes 0-4, evaluate leave-one-out MAP@R (and P@1, R-Precision) on
classes 5-9, for scikit-learn's digits (8x8; all images of the classes) and Fashion-MNIST
(28x28; ``--fmnist-train`` images per class from the official training set, and
``--fmnist-test`` per class from the official test set, first ones in file order).

Everything but the sampler is shared: the same network (dmlkit ``SmallCNN``), the same
initial weights for a seed (``torch.manual_seed(seed)`` before building it), the same
loss and miner (``TripletMarginLoss(margin=0.1)`` on the triplets of
``MultiSimilarityMiner(epsilon=0.1)``: pytorch-metric-learning's miner, and the loss over
every (anchor, positive, negative) the miner's pairs form, averaged over the non-zero
terms, computed here as one ``(B, B, B)`` masked tensor and checked equal to PML's
``TripletMarginLoss`` on the first batch of every run, because PML's own conversion of
pairs to triplets takes over a second per batch on 2 cores), Adam, and the **same number
of iterations**; only the stream of batches differs:

* ``dmlkit``: ``MPerClassSampler(labels, m, batch_size, seed=seed)`` (a batch sampler;
  ``set_epoch`` at each of its epochs of ``len(labels) // batch_size`` batches);
* ``pml``: ``pytorch_metric_learning.samplers.MPerClassSampler(labels, m, batch_size,
  length_before_new_iter=len(labels))`` behind ``DataLoader(batch_size=...)``, with
  ``numpy.random.seed(seed)`` (it draws from numpy's global generator).

Besides the metrics, the script counts what the batches of each sampler look like
(classes per batch, distinct items seen, repeats), with PML's default epoch length too.

Usage::

    python benchmarks/sampler_study.py                       # 5 seeds, both datasets
    python benchmarks/sampler_study.py --datasets digits --seeds 0 1

Writes ``benchmarks/results/sampler_study.json`` (after every run).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from _common import RESULTS_DIR, format_table, machine_info, write_json

from dmlkit.evaluation import retrieval_metrics
from dmlkit.models.cnn import SmallCNN
from dmlkit.samplers import MPerClassSampler

KEYS = ("map_at_r", "r_precision", "precision_at_1")


def load(name: str, n_train: int, n_test: int) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)``: classes 0-4 to train, 5-9 to test."""
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.from_numpy(d.images).float()[:, None] / 16.0  # (n, 1, 8, 8)
        y = torch.from_numpy(d.target).long()
        return x[y < 5], y[y < 5], x[y >= 5], y[y >= 5]
    from dmlkit.data.idx import load_fashion_mnist

    def part(which: str, classes: range, per_class: int):
        data = load_fashion_mnist(which)
        x, y = data.x, data.labels
        keep = torch.cat([(y == c).nonzero().squeeze(1)[:per_class] for c in classes])
        keep = keep.sort().values
        return x[keep].float().view(-1, 1, 28, 28) / 255.0, y[keep].long()

    return (*part("train", range(5), n_train), *part("test", range(5, 10), n_test))


def batches(kind: str, labels: torch.Tensor, m: int, batch_size: int, seed: int,
            iterations: int, pml_length: int | None = None):
    """The first ``iterations`` batches (index lists) of one sampler."""
    if kind == "dmlkit":
        sampler = MPerClassSampler(labels, m=m, batch_size=batch_size, seed=seed)
        out, epoch = [], 0
        while len(out) < iterations:
            sampler.set_epoch(epoch)
            out.extend(list(sampler))
            epoch += 1
        return out[:iterations]
    from pytorch_metric_learning.samplers import MPerClassSampler as PMLSampler

    np.random.seed(seed)
    sampler = PMLSampler(labels, m=m, batch_size=batch_size,
                         length_before_new_iter=pml_length or len(labels))
    out = []
    while len(out) < iterations:
        flat = list(iter(sampler))
        out.extend(flat[i : i + batch_size] for i in range(0, len(flat), batch_size))
    return out[:iterations]


def triplet_loss_on_pairs(emb: torch.Tensor, pairs, margin: float) -> torch.Tensor:
    """Triplet margin loss over every triplet the miner's pairs form (anchor in both a
    positive and a negative pair), mean over the non-zero terms (PML's convention)."""
    a1, p, a2, n = pairs
    b = emb.shape[0]
    e = torch.nn.functional.normalize(emb, dim=1)
    d = torch.cdist(e, e)  # (B, B)
    pos = torch.zeros(b, b, dtype=torch.bool)
    neg = torch.zeros(b, b, dtype=torch.bool)
    pos[a1, p] = True
    neg[a2, n] = True
    valid = pos[:, :, None] & neg[:, None, :]  # (B, B, B) anchor, positive, negative
    terms = torch.relu(d[:, :, None] - d[:, None, :] + margin)[valid]  # (T,)
    nonzero = terms > 0
    if not bool(nonzero.any()):
        return emb.sum() * 0.0
    return terms[nonzero].mean()


def train_and_score(data, kind: str, seed: int, args) -> dict[str, float]:
    from pytorch_metric_learning import losses, miners

    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(seed)
    model = SmallCNN(in_channels=1, image_size=x_tr.shape[-1], dim=64, width=args.width)
    loss_fn = losses.TripletMarginLoss(margin=0.1)
    miner = miners.MultiSimilarityMiner(epsilon=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    model.train()
    for step, idx in enumerate(batches(kind, y_tr, args.m, args.batch_size, seed,
                                       args.iterations)):
        idx_t = torch.as_tensor(idx)
        emb = model(x_tr[idx_t])  # (B, 64)
        labels = y_tr[idx_t]
        pairs = miner(emb, labels)
        loss = triplet_loss_on_pairs(emb, pairs, 0.1)
        if step == 0:  # the same loss as PML's
            want = loss_fn(emb, labels, pairs)
            if abs(loss.item() - want.item()) > 1e-5:
                raise RuntimeError(f"loss {loss.item()} differs from PML's {want.item()}")
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        emb = torch.cat([model(x_te[i : i + 512]) for i in range(0, len(x_te), 512)])
    res = retrieval_metrics(emb, y_te)
    return {k: res[k] for k in KEYS}


def batch_statistics(labels: torch.Tensor, m: int, batch_size: int, seed: int,
                     iterations: int) -> dict[str, dict[str, float]]:
    """How the batches of each sampler cover the data, over the run's iterations and
    over one epoch (dmlkit: ``n // batch_size`` batches; PML: its default 100,000
    items)."""
    n = len(labels)
    out = {}
    per_epoch = max(1, n // batch_size)
    for kind, length in (("dmlkit", None), ("pml", None), ("pml default epoch", 100_000)):
        sampler_kind = "pml" if kind.startswith("pml") else "dmlkit"
        epoch = per_epoch if length is None else length // batch_size
        run = batches(sampler_kind, labels, m, batch_size, seed, iterations, length)
        first = batches(sampler_kind, labels, m, batch_size, seed, per_epoch, length)
        flat = np.concatenate([np.asarray(b) for b in run])
        counts = np.bincount(flat, minlength=n)
        first_flat = np.concatenate([np.asarray(b) for b in first])
        within = [len(b) - len(set(b)) for b in run]
        out[kind] = {
            "epoch_batches": epoch,
            "classes_per_batch": float(np.mean([len(set(labels[b].tolist())) for b in run])),
            "repeats_within_batch": float(np.mean(within)),
            "distinct_in_first_n_over_b_batches": len(set(first_flat.tolist())) / n,
            "items_never_drawn_in_run": float((counts == 0).mean()),
            "draws_per_item_sd": float(counts.std()),
            "draws_per_item_max": int(counts.max()),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "fashion_mnist"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=160)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--fmnist-train", type=int, default=600, help="images per class")
    parser.add_argument("--fmnist-test", type=int, default=400, help="images per class")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--kinds", nargs="+", default=["dmlkit", "pml"])
    parser.add_argument("--out", default="sampler_study.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record = {"machine": machine_info(args.threads), "args": vars(args), "runs": [],
              "batch_statistics": {}}
    rows = []
    for name in args.datasets:
        data = load(name, args.fmnist_train, args.fmnist_test)
        record["batch_statistics"][name] = batch_statistics(
            data[1], args.m, args.batch_size, 0, args.iterations)
        print(f"{name}: {len(data[1])} train images (classes 0-4), {len(data[3])} test "
              f"(classes 5-9)", flush=True)
        scores: dict[str, list[float]] = {k: [] for k in args.kinds}
        for seed in args.seeds:
            for kind in args.kinds if seed % 2 == 0 else args.kinds[::-1]:
                start = time.perf_counter()
                res = train_and_score(data, kind, seed, args)
                seconds = time.perf_counter() - start
                scores[kind].append(res["map_at_r"])
                record["runs"].append({"dataset": name, "sampler": kind, "seed": seed,
                                       "seconds": seconds, **res})
                write_json(args.out, record)
                print(f"  {name} {kind:<6} seed {seed}: MAP@R {res['map_at_r']:.4f} "
                      f"P@1 {res['precision_at_1']:.4f} ({seconds:.0f} s)", flush=True)
        if set(args.kinds) == {"dmlkit", "pml"}:
            diffs = [a - b for a, b in zip(scores["dmlkit"], scores["pml"], strict=True)]
            mean_d = statistics.mean(diffs)
            sd_d = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
            rows.append([name, statistics.mean(scores["dmlkit"]),
                         statistics.stdev(scores["dmlkit"]) if len(diffs) > 1 else 0.0,
                         statistics.mean(scores["pml"]),
                         statistics.stdev(scores["pml"]) if len(diffs) > 1 else 0.0,
                         mean_d, sd_d / len(diffs) ** 0.5, sum(d > 0 for d in diffs)])
    if rows:
        print(format_table(rows, ["dataset", "dmlkit MAP@R", "sd", "pml MAP@R", "sd",
                                  "mean diff (dmlkit-pml)", "se", "seeds dmlkit ahead"]))
    for name, stats in record["batch_statistics"].items():
        print(f"\n{name} batches:")
        keys = list(next(iter(stats.values())))
        print(format_table([[k, *[stats[s][k] for s in stats]] for k in keys],
                           ["", *stats]))
    print(f"wrote {RESULTS_DIR / args.out}")


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
