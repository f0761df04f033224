"""Train a text run: a sentence encoder fine-tuned on labelled sentences, pairs or triplets.

``data.name: stsb`` trains on the STS benchmark's train pairs and holds out its test
pairs (``data.heldout_part``, default ``test``); ``data.name: text`` reads ``data.path``
(:mod:`dmlkit.data.text`): labelled sentences (``data.kind: labels``, held out by
``split: classes`` (unseen classes) or ``stratified``), scored pairs (``kind: pairs``,
a seeded ``test_fraction`` held out) or triplets (``kind: triplets``, columns anchor,
positive, negative; a seeded ``test_fraction`` held out). Pair runs train on the positive
pairs (``score >= data.min_score``) with in-batch negatives; triplet runs on the given
triplets with any tuple loss (weak supervision, no miner); labelled runs on class
labels, through any configured sampler and miner. Held-out triplets report
``triplet_accuracy``, how often ``cos(anchor, positive) > cos(anchor, negative)``.
The pretrained encoder is evaluated on the held-out data before training
(``"baseline"`` in metrics.json, saved at once in ``baseline.json`` so that a resumed run
keeps it), the fine-tuned one after. Checkpoints keep checksums of the texts trained on
(:mod:`~dmlkit.training.data_fingerprint`): a resume on changed data is refused.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmlkit.config.schema import TEXT_SOURCES, Config
from dmlkit.data.splits import named_ids
from dmlkit.data.text import (
    TextDataset,
    TextPairDataset,
    TextTripletDataset,
    load_stsb,
    read_labelled_sentences,
    read_scored_pairs,
    read_text_triplets,
)
from dmlkit.evaluation.evaluate import write_json
from dmlkit.text.evaluate import MIN_STS_PAIRS, text_heldout_metrics
from dmlkit.training.build import resolve_config
from dmlkit.training.checkpoint import atomic_save
from dmlkit.training.class_rows import run_class_ids
from dmlkit.training.data_fingerprint import LazyFingerprint, check_resume_data
from dmlkit.training.run import CONFIG_FILE, METRICS_FILE, MODEL_FILE, RunResult
from dmlkit.training.run_dir import (
    check_resume,
    claim_run_dir,
    created_here,
    no_checkpoint_error,
)
from dmlkit.training.trainer import CHECKPOINT, Trainer

TextData = TextDataset | TextPairDataset | TextTripletDataset
#: the pretrained encoder's held-out metrics, written before training so that a resumed
#: run reports them too (metrics.json's ``"baseline"``)
BASELINE_FILE = "baseline.json"


def build_text_splits(config: Config) -> tuple[TextData, TextData]:
    """The ``(train, heldout)`` text data of a config (training pairs: all, not only positives)."""
    dc = config.data
    if dc.name not in TEXT_SOURCES:
        raise ValueError(f"data.name must be one of {list(TEXT_SOURCES)} here, got {dc.name!r}")
    if dc.name == "stsb":
        if dc.kind != "pairs":
            raise ValueError(
                f"STS-B holds scored sentence pairs: data.kind 'pairs', not {dc.kind!r}")
        min_score = 4.0 if dc.min_score is None else dc.min_score
        held_part = dc.heldout_part or "test"
        if held_part == "all" or dc.part == "all":
            raise ValueError("STS-B parts are 'train' and 'test' (part / heldout_part)")
        if held_part == dc.part:  # (its held-out scores would be of the pairs trained on)
            raise ValueError(
                f"data.part and data.heldout_part are both {held_part!r} (heldout_part "
                "defaults to 'test'): the held-out pairs would be the training pairs; set "
                "data.heldout_part to another part (train on 'train', hold out 'test')")
        return (load_stsb(dc.part, dc.path, min_score), load_stsb(held_part, dc.path, min_score))
    min_score = 1.0 if dc.min_score is None else dc.min_score
    rng = np.random.default_rng(dc.seed)
    if dc.kind in ("pairs", "triplets"):
        tuples: TextPairDataset | TextTripletDataset = (
            read_scored_pairs(dc.path, min_score) if dc.kind == "pairs"  # type: ignore[arg-type]
            else read_text_triplets(dc.path))  # type: ignore[arg-type]
        order = rng.permutation(len(tuples))
        n_test = int(round(dc.test_fraction * len(tuples)))
        if not 0 < n_test < len(tuples):
            raise ValueError(f"{len(tuples)} {dc.kind} cannot be split with test_fraction "
                             f"{dc.test_fraction}")
        if dc.kind == "pairs" and n_test < MIN_STS_PAIRS:  # (Spearman of the held-out)
            raise ValueError(
                f"data.test_fraction {dc.test_fraction} holds out {n_test} of {len(tuples)} "
                f"pairs of {dc.path}; scoring them needs at least {MIN_STS_PAIRS}: raise "
                "data.test_fraction, or add pairs")
        return tuples.subset(order[n_test:]), tuples.subset(order[:n_test])
    if dc.kind != "labels":
        raise ValueError(f"text data.kind must be 'labels', 'pairs' or 'triplets', got "
                         f"{dc.kind!r}")
    data = read_labelled_sentences(dc.path)  # type: ignore[arg-type]
    if dc.split == "classes":
        train_classes = set(_class_ids(dc.train_classes or [], data, "train_classes"))
        test = (_class_ids(dc.test_classes, data, "test_classes") if dc.test_classes
                else [c for c in data.classes if c not in train_classes])
        _check_class_sets(data, train_classes if dc.train_classes is not None else None,
                          set(test))
        train, heldout = data.split_classes(test)
        if dc.train_classes is not None:
            train = train.subset(np.flatnonzero(np.isin(train.labels.numpy(),
                                                        list(train_classes))))
    else:
        held = []
        for c in data.classes:
            rows = np.flatnonzero(data.labels.numpy() == c)
            held.extend(rng.permutation(rows)[: int(round(dc.test_fraction * len(rows)))])
        mask = np.zeros(len(data), dtype=bool)
        mask[held] = True
        train, heldout = data.subset(np.flatnonzero(~mask)), data.subset(np.flatnonzero(mask))
    if len(train) == 0 or len(heldout) == 0:
        raise ValueError(f"the split of {dc.path} leaves {len(train)} training and "
                         f"{len(heldout)} held-out sentences")
    if len(train.classes) < 2:  # no negatives: it would train nothing and report full marks
        names = train.class_names or []
        only = train.classes[0]
        raise ValueError(
            f"the training sentences of {dc.path} hold one class ("
            + (f"{only}: {names[only]!r}" if 0 <= only < len(names) else str(only))
            + "); metric learning needs at least 2 classes (items of other classes are "
            "the negatives it learns from)"
            + ("; give more data.train_classes" if dc.split == "classes" else ""))
    return train, heldout


def _check_class_sets(data: Any, train: set[int] | None, test: set[int]) -> None:
    """The rules of :func:`~dmlkit.data.splits.class_split`: classes of the data, the two
    sides apart, and training classes enough to learn from."""
    present = set(data.classes)

    def named(ids: Any) -> str:
        return named_ids(sorted(ids), data.class_names)

    for key, ids in (("train_classes", train), ("test_classes", test)):
        missing = sorted((ids or set()) - present)
        if missing:
            raise ValueError(f"data.{key} {missing} are not in the data (classes: "
                             f"{named(present)})")
    if train is not None and train & test:
        raise ValueError(f"data.train_classes and data.test_classes overlap on "
                         f"{named(train & test)}")


def _class_ids(classes: list[Any], data: Any, key: str) -> list[int]:
    """Class ids of ``data.train_classes`` / ``test_classes``: ids, or the class names a
    labelled file uses (its ids are those names in sorted order); an integer that is
    also a class name of another id is refused as ambiguous, and a string where the
    labels are plain ids (no names), as for ``.npz`` data without ``class_names``."""
    names = data.class_names or []
    out = []
    for c in classes:
        if isinstance(c, str):
            if data.class_names is None:  # (as npz data without class_names refuses it)
                given = [int(v) if isinstance(v, str) and v.isascii() and v.isdigit() else v
                         for v in classes]
                raise ValueError(
                    f"data.{key} names the class {c!r}, but the labels are class ids "
                    f"{sorted(data.classes)}; write them as integers ({key}: {given})")
            if c not in names:
                raise ValueError(f"data.{key}: no class named {c!r}; the classes are {names}")
            out.append(names.index(c))
        else:
            c = int(c)
            if str(c) in names and names.index(str(c)) != c:  # (labels read as names)
                where = f"the id of class {names[c]!r}" if 0 <= c < len(names) else "no id"
                raise ValueError(
                    f"data.{key}: {c} is {where}, but a class is named {str(c)!r} (id "
                    f"{names.index(str(c))}): the file's labels are class names, so write "
                    f"them as strings ({str(c)!r}) or give the ids of the sorted names")
            out.append(c)
    return out


def train_text_run(
    config: Config, out_dir: str | Path, *, resume: bool = False, log: Any = print,
    callbacks: tuple = (),
) -> RunResult:
    """:func:`~dmlkit.training.train_run` for text configs: writes a complete run directory.

    As there, the run holds ``out_dir`` alone while it trains
    (:func:`~dmlkit.training.run_dir.claim_run_dir`), and a resume is refused when the
    config, the checkpoint or the training data differ from what the run started with.
    """
    from dmlkit.training.device import check_device
    from dmlkit.training.distributed import world_size_from_env

    start = time.perf_counter()
    out_dir = Path(out_dir)
    if world_size_from_env() > 1:
        raise ValueError("text runs train in one process; start them without torchrun")
    check_device(config.training.device, "training.device")
    if resume and not (out_dir / CHECKPOINT).is_file():
        raise no_checkpoint_error(out_dir)
    if config.training.val_fraction > 0 or config.training.val_classes is not None:
        raise ValueError("text runs do not validate during training: leave "
                         "training.val_fraction and training.val_classes unset")
    with claim_run_dir(out_dir, resume=resume):
        checkpoint = check_resume(config, out_dir) if resume else None  # (read once)
        return _train_text(config, out_dir, checkpoint, log, callbacks, start)


def text_fingerprint(train: TextData, heldout: TextData) -> LazyFingerprint:
    """The checksums of a text run's data as loaded (:func:`build_text_splits`), kept in
    its checkpoints (:mod:`~dmlkit.training.data_fingerprint`); hashed when first used."""
    return LazyFingerprint(text_parts(train, heldout))


def text_parts(train: TextData, heldout: TextData, split: str | None = None) -> dict[str, Any]:
    """The named parts of a text run's data that :func:`text_fingerprint` hashes: all, or
    those of ``split`` (``"train"`` or ``"heldout"``)."""
    if isinstance(train, TextDataset):
        parts = {"the training texts": train.texts, "the training labels": train.labels,
                 "the held-out split": _columns(heldout)}
    else:
        kind = "pairs" if isinstance(train, TextPairDataset) else "triplets"
        parts = {f"the training {kind}": _columns(train),
                 f"the held-out {kind}": _columns(heldout)}
    if split is None:
        return parts
    return {k: v for k, v in parts.items() if ("held-out" in k) == (split == "heldout")}


def _columns(data: TextData) -> list[Any]:
    """The texts (and labels or scores) of ``data``, as hashed."""
    if isinstance(data, TextPairDataset):
        return [data.first, data.second, data.scores]
    if isinstance(data, TextTripletDataset):
        return [data.anchor, data.positive, data.negative]
    return [data.texts, data.labels]


def _train_text(config: Config, out_dir: Path, checkpoint: dict[str, Any] | None, log: Any,
                callbacks: tuple, start: float) -> RunResult:
    resume = checkpoint is not None
    train, heldout = build_text_splits(config)
    fingerprint = text_fingerprint(train, heldout)
    if resume:  # (before config.yaml is written again)
        check_resume_data(out_dir, fingerprint, checkpoint)
    class_ids = None  # (pairs and triplets: no loss indexes a class row)
    if isinstance(train, TextPairDataset):
        train = train.positives()  # in-batch negatives: every other sentence of the batch
        if config.miner is not None:
            raise ValueError("pair runs label each pair as its own class; remove the miner")
        num_classes = 0
    elif isinstance(train, TextTripletDataset):
        from dmlkit.registry import LOSSES

        loss_cls = LOSSES.get(config.loss["name"])
        if getattr(loss_cls, "requires_labels", False) or not getattr(
                loss_cls, "accepts_indices", True):
            raise ValueError(f"loss {config.loss['name']!r} needs class labels; triplets "
                             "train tuple losses (triplet_margin, contrastive, ...)")
        if config.miner is not None:
            raise ValueError("triplet runs train on the given triplets; remove the miner")
        num_classes = None  # no classes: nothing class-shaped (a margin loss's beta is global)
    else:  # a loss with one row per class: one per distinct label, each label its row
        class_ids, num_classes = run_class_ids(train.labels, checkpoint)
    resolved = resolve_config(config, torch.zeros(1), num_classes,
                              new_run=checkpoint is None)
    created = created_here(out_dir)  # (claimed by train_text_run; else made here)
    fresh = not out_dir.exists() if created is None else created
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved.to_yaml(out_dir / CONFIG_FILE)
    threads = torch.get_num_threads()
    if config.training.num_threads is not None:
        torch.set_num_threads(config.training.num_threads)
    try:
        try:
            trainer = Trainer(resolved, train, out_dir=out_dir, log=log, callbacks=callbacks,
                              data_fingerprint=fingerprint, class_ids=class_ids)
        except BaseException:  # a bad model, loss or miner setting: no half-made run left
            if fresh:
                shutil.rmtree(out_dir, ignore_errors=True)
            raise
        log(f"training on {train!r}, held out {heldout!r}")
        baseline = _saved_baseline(out_dir) if resume else None
        if baseline is None:  # (before fit: the model is still the pretrained encoder)
            tick = time.perf_counter()
            baseline = text_heldout_metrics(trainer.model, heldout)
            log(f"pretrained encoder on the held-out data ({time.perf_counter() - tick:.1f} s): "
                + _summary(baseline))
            write_json(baseline, out_dir / BASELINE_FILE)  # kept for a resumed run
        else:
            log("pretrained encoder on the held-out data (as saved before training): "
                + _summary(baseline))
        tick = time.perf_counter()
        history = trainer.fit(resume=resume, checkpoint=checkpoint)
        train_seconds = time.perf_counter() - tick
        atomic_save(trainer.model.state_dict(), out_dir / MODEL_FILE)
        tick = time.perf_counter()
        metrics = text_heldout_metrics(trainer.model, heldout)
        log(f"fine-tuned encoder on the held-out data ({time.perf_counter() - tick:.1f} s): "
            + _summary(metrics))
    finally:
        torch.set_num_threads(threads)
    metrics["baseline"] = baseline
    metrics["baseline_inputs"] = "the pretrained encoder before fine-tuning"
    metrics["fit_seconds"] = round(train_seconds, 2)
    seconds = time.perf_counter() - start
    metrics["train_seconds"] = round(seconds, 2)
    metrics["history"] = history
    write_json(metrics, out_dir / METRICS_FILE)
    return RunResult(out_dir, metrics, history, seconds)


def _saved_baseline(out_dir: Path) -> dict[str, Any] | None:
    """The pretrained encoder's held-out metrics saved in ``out_dir`` by the run's start, or
    by a finished run's metrics.json; ``None`` when neither holds them (the caller then
    evaluates the pretrained encoder again)."""
    for name, key in ((BASELINE_FILE, None), (METRICS_FILE, "baseline")):
        path = out_dir / name
        if not path.is_file():
            continue
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            continue  # damaged: evaluate again rather than fail the resume
        if key is not None:
            saved = saved.get(key) if isinstance(saved, dict) else None
        if isinstance(saved, dict) and saved:
            return saved
    return None


def _summary(metrics: dict[str, Any]) -> str:
    keys = ("spearman", "pearson", "mean_cosine", "triplet_accuracy", "map_at_r",
            "precision_at_1")
    return ", ".join(f"{k} {metrics[k]:.4f}" for k in keys if k in metrics)


__all__ = ["build_text_splits", "text_fingerprint", "text_parts", "train_text_run", "BASELINE_FILE"]
