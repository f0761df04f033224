"""Weakly supervised runs: train from pairs or triplets without class labels.

Selected by the config's ``data.kind`` (``"pairs"`` or ``"triplets"``):

* with ``data.tuples`` (a CSV file, see :mod:`dmlkit.data.tuples`) the tuples come from
  that file (entries are rows of ``data.features`` or image paths); a seeded
  ``data.test_fraction`` of the tuples is held out and the run reports how often the
  learned metric ranks them right (triplet accuracy, or pair ROC AUC);
* without it, ``data.num_tuples`` tuples are drawn (seeded) from the training part of
  the labelled source ``data.name``, whose labels are then dropped; the held-out part
  keeps its labels, so the run reports the usual retrieval metrics, comparable with a
  fully supervised run on the same split.

Batches are ``(unique items, None, Pairs | Triplets)``; any tuple loss trains from them.
"""

from __future__ import annotations

import hashlib
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dmlkit.config.schema import Config
from dmlkit.data.dataset import ArrayDataset
from dmlkit.data.load import check_training_data, split_dataset
from dmlkit.data.splits import stratified_split
from dmlkit.data.tuples import (
    TupleDataset,
    pairs_from_labels,
    read_tuples_csv,
    triplets_from_labels,
)
from dmlkit.distances.base import BaseDistance
from dmlkit.distances.euclidean import EuclideanDistance
from dmlkit.registry import LOSSES
from dmlkit.training.best_epoch import scored_best
from dmlkit.training.build import resolve_config
from dmlkit.training.checkpoint import atomic_save, atomic_write_text
from dmlkit.training.checks import check_patience
from dmlkit.training.data_fingerprint import LazyFingerprint, check_resume_data
from dmlkit.training.resumed_session import earlier_seconds, retire_finished_outputs
from dmlkit.training.run import (
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    RunResult,
    heldout_metrics,
)
from dmlkit.training.run_dir import created_here, resumed_config
from dmlkit.training.trainer import Trainer

TUPLE_METRICS = {"triplets": "triplet_accuracy", "pairs": "pair_auc"}


@dataclass
class WeakSplits:
    """Training tuples, and what the run is evaluated on (one of the last two)."""

    train: TupleDataset
    val: ArrayDataset | None = None
    heldout: ArrayDataset | None = None
    heldout_tuples: TupleDataset | None = None


def _named(rows: np.ndarray, tuples: TupleDataset, most: int = 3) -> str:
    """The first ``most`` of the tuples at positions ``rows``, by their CSV line where the
    tuples were read from one (``lines 3, 7 and 2 more``), else by position (``tuple 0``,
    counted from 0 as the tuples' other messages count)."""
    rows = np.asarray(rows, dtype=np.int64)
    lines = tuples.lines
    names = ([str(int(lines[r])) for r in rows[:most]] if lines is not None
             else [str(int(r)) for r in rows[:most]])
    word = ("line" if lines is not None else "tuple") + ("s" if len(rows) > 1 else "")
    more = f" and {len(rows) - most} more" if len(rows) > most else ""
    return f"{word} {', '.join(names)}{more}"


def _first_rows(keys: np.ndarray) -> np.ndarray:
    """``(T,)`` position of the first row equal to each row of ``keys (T, k)``."""
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    return first[inverse.reshape(-1)]


def _both_ways(keys: np.ndarray, side: np.ndarray) -> list[tuple[int, int]]:
    """For each group of equal ``keys (T, k)`` rows holding both values of the bool
    ``side (T,)``: the first row of each side (the lower first), sorted by it."""
    if not len(keys):
        return []
    _, group = np.unique(keys, axis=0, return_inverse=True)  # (T,) group id
    group = group.reshape(-1)
    pair_keys = np.stack([group, side.astype(np.int64)], axis=1)  # (T, 2)
    uniq, firsts = np.unique(pair_keys, axis=0, return_index=True)  # sorted by group, side
    both = np.flatnonzero(uniq[1:, 0] == uniq[:-1, 0])  # a group's side 0 then side 1
    found = [(int(min(firsts[i], firsts[i + 1])), int(max(firsts[i], firsts[i + 1])))
             for i in both]
    return sorted(found)


def _warn_repeated(tuples: TupleDataset, path: Any) -> None:
    """Warn about repeated tuples (a held-out copy of a training tuple scores as if seen),
    tuples whose items repeat (a pair of an item with itself; an anchor that is its own
    positive or negative, a positive that is also the negative), pairs listed with
    contradicting ``similar`` flags and triplets that contradict each other
    (``(a, p, n)`` and ``(a, n, p)``), each naming the first few tuples (by CSV line
    where they were read from a file). Pairs are unordered: ``(b, a)`` repeats
    ``(a, b)``."""
    t = tuples.tuples.numpy()
    if not len(t):
        return
    ordered = np.sort(t, axis=1)
    selfish = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
    pairs = tuples.similar is not None
    if pairs:  # (a, b) is (b, a)
        flags = tuples.similar.numpy()  # type: ignore[union-attr]
        first = _first_rows(np.hstack([ordered, flags.astype(np.int64)[:, None]]))
        against = _both_ways(ordered, flags)  # one pair, both flags
    else:
        first = _first_rows(t)
        # (a, p, n) against (a, n, p): one anchor, the same two items, either order
        keep = np.flatnonzero(t[:, 1] != t[:, 2])
        keys = np.stack([t[keep, 0], t[keep, 1:].min(1), t[keep, 1:].max(1)], axis=1)
        against = [(int(keep[a]), int(keep[b]))
                   for a, b in _both_ways(keys, t[keep, 1] < t[keep, 2])]
    repeats = np.flatnonzero(first != np.arange(len(t)))
    if len(repeats):
        shown = "; ".join(f"{_named(r[None], tuples)} repeats {_named(first[r][None], tuples)}"
                          for r in repeats[:3])
        warnings.warn(f"{path}: {len(repeats)} of {len(t)} tuples repeat others ({shown}"
                      f"{'; ...' if len(repeats) > 3 else ''}); held-out copies of training "
                      "tuples make the held-out score optimistic", UserWarning, stacklevel=3)
    if len(selfish):
        what = (f"{len(selfish)} pairs pair an item with itself (item_a = item_b; its "
                "distance is 0, so a similar self-pair is trivial and a dissimilar one "
                "impossible)" if pairs else
                f"{len(selfish)} tuples name one item twice (an anchor that is its own "
                "positive or negative, or a positive that is also the negative)")
        warnings.warn(f"{path}: {what}: {_named(selfish, tuples)}; fix or drop them",
                      UserWarning, stacklevel=3)
    if against:
        shown = "; ".join(f"{_named(np.array(ab), tuples)}" for ab in against[:3])
        what = ("pairs are listed both as similar and as dissimilar" if pairs else
                "triplets are contradicted by another with positive and negative swapped "
                "((a, p, n) and (a, n, p))")
        warnings.warn(f"{path}: {len(against)} {what} ({shown}"
                      f"{'; ...' if len(against) > 3 else ''}); fix or drop the wrong rows",
                      UserWarning, stacklevel=3)


def _check_both_kinds(pairs: TupleDataset, what: str, fix: str = "add some") -> None:
    """Refuse pairs that are all similar or all dissimilar (nothing to contrast)."""
    if pairs.similar is None or len(pairs) == 0:
        return
    n_similar = int(pairs.similar.sum())
    if n_similar in (0, len(pairs)):
        have, lack = ("similar", "dissimilar (similar=0)") if n_similar else (
            "dissimilar", "similar (similar=1)")
        raise ValueError(f"{what}: all {len(pairs)} pairs are {have}; training from pairs "
                         f"needs {lack} pairs too: {fix}")


def build_weak_splits(config: Config) -> WeakSplits:
    """The training tuples and the held-out data of a weakly supervised config."""
    dc = config.data
    if dc.kind not in TUPLE_METRICS:
        raise ValueError(f"data.kind must be 'pairs' or 'triplets' here, got {dc.kind!r}")
    if dc.tuples is not None:
        if config.training.val_fraction > 0:
            raise ValueError("training.val_fraction needs labels; a tuple file has none")
        full = read_tuples_csv(dc.tuples, dc.kind, dc.features, dc.x_key, dc.image_size, dc.color)
        order = np.random.default_rng(dc.seed).permutation(len(full))
        n_test = int(round(dc.test_fraction * len(full)))
        if not 0 < n_test < len(full):
            raise ValueError(
                f"{len(full)} tuples cannot be split with test_fraction {dc.test_fraction}"
            )
        _check_both_kinds(full, str(dc.tuples))
        _warn_repeated(full, dc.tuples)
        train = full.subset(order[n_test:])
        _check_both_kinds(train, f"{dc.tuples} (the training part, test_fraction "
                                 f"{dc.test_fraction})")
        return WeakSplits(train, heldout_tuples=full.subset(order[:n_test]))
    check_training_data(dc)
    train, heldout = split_dataset(dc)
    val = None
    if config.training.val_fraction > 0:
        train, val = stratified_split(train, config.training.val_fraction, dc.seed + 1)
    if train.labels.dim() != 1:
        raise ValueError(
            f"data.kind {dc.kind} draws its {dc.kind} from one class label per item, but "
            f"data.name {dc.name!r} has {tuple(train.labels.shape)} hierarchical (n, L) "
            "labels: save one level's column (labels[:, k]) or the leaf classes "
            "(np.unique(labels, axis=0, return_inverse=True)[1]) as the labels of an .npz, "
            "or train on the hierarchical labels themselves (data.kind: labels, loss "
            "hierarchical_triplet)")
    if dc.kind == "triplets":
        tuples = TupleDataset(triplets_from_labels(train.labels, dc.num_tuples, dc.seed), train.x)
    else:
        rows, similar = pairs_from_labels(train.labels, dc.num_tuples, dc.seed)
        tuples = TupleDataset(rows, train.x, similar)
        _check_both_kinds(tuples, f"the {dc.num_tuples} pairs drawn from data.name "
                                  f"{dc.name!r} (data.num_tuples {dc.num_tuples})",
                          "raise data.num_tuples")
    return WeakSplits(tuples, val=val, heldout=heldout)


@torch.no_grad()
def tuple_metrics(
    model: nn.Module | None,
    tuples: TupleDataset,
    distance: BaseDistance | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 512,
) -> dict[str, float]:
    """How well embeddings (``model=None``: the raw inputs, flattened) rank held-out tuples.

    Triplets: ``triplet_accuracy``, the fraction with ``d(a, p) < d(a, n)``.
    Pairs: ``pair_auc``, the ROC AUC of closeness as a score for "similar".
    """
    distance = distance if distance is not None else EuclideanDistance()
    ids = torch.unique(tuples.tuples)  # (u,) every referenced item
    parts = []
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    for i in range(0, len(ids), batch_size):
        x = tuples.load_items(ids[i : i + batch_size])
        parts.append(x.flatten(1).float() if model is None else model(x.to(device)).float().cpu())
    if model is not None:
        model.train(was_training)
    emb = torch.zeros(int(tuples.tuples.max()) + 1, parts[0].shape[1])  # (N, dim) by item id
    emb[ids] = torch.cat(parts)
    rows = tuples.tuples
    d_first = distance.pairwise(emb[rows[:, 0]], emb[rows[:, 1]])  # (T,)
    closeness = d_first if distance.is_similarity else -d_first
    if tuples.kind == "triplets":
        d_neg = distance.pairwise(emb[rows[:, 0]], emb[rows[:, 2]])  # (T,)
        neg_closeness = d_neg if distance.is_similarity else -d_neg
        return {"triplet_accuracy": float((closeness > neg_closeness).double().mean())}
    if tuples.similar.all() or not tuples.similar.any():  # AUC undefined: one kind only
        have, lack = ("similar", "dissimilar") if bool(tuples.similar.all()) else (
            "dissimilar", "similar")
        warnings.warn(f"pair_auc cannot be scored (it is NaN, null in metrics.json): all "
                      f"{len(tuples)} held-out pairs are {have}, and a ROC AUC needs {lack} "
                      "pairs too; hold out pairs of both kinds (add some, or raise "
                      "data.test_fraction)", UserWarning, stacklevel=2)
        return {"pair_auc": float("nan")}
    from sklearn.metrics import roc_auc_score

    return {"pair_auc": float(roc_auc_score(tuples.similar.numpy(), closeness.numpy()))}


def _cell(value: float | None) -> str:
    """A metric for the table; ``n/a`` when undefined (NaN, or null from metrics.json)."""
    return "n/a" if value is None or value != value else f"{value:.4f}"


def tuple_metrics_table(metrics: dict[str, Any]) -> str:
    """Raw inputs vs the learned metric on held-out tuples, as plain text."""
    rows = [f"{'metric':<18} {'raw inputs':>10} {'learned':>10}"]
    for key in TUPLE_METRICS.values():
        if key in metrics:
            values = [_cell(metrics["baseline"][key]), _cell(metrics[key])]
            rows.append(f"{key:<18} {values[0]:>10} {values[1]:>10}")
    return "\n".join(rows)


def label_losses(spec: Any) -> list[str]:
    """Why the loss config ``spec`` cannot train from pairs / triplets without class
    labels, one phrase per loss at fault, those it nests included (``weighted_sum``'s
    ``losses``, a wrapper's ``loss``): a loss that ``requires_labels`` or takes no tuples
    (no ``accepts_indices``, or the self-supervised wrapper, which pairs views of each
    item), one given ``num_classes`` (per-class settings need labels), or a composite
    loss given miners (they mine by label). Empty when it can."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        return []
    name = str(spec["name"])
    try:
        cls = LOSSES.get(name)
    except ValueError:  # an unknown loss: building it says so
        return []
    from dmlkit.losses.self_supervised import SelfSupervisedLoss

    found = []
    if getattr(cls, "requires_labels", False):
        found.append(f"{name!r} needs class labels")
    elif not getattr(cls, "accepts_indices", True):
        found.append(f"{name!r} takes no tuples")
    elif isinstance(cls, type) and issubclass(cls, SelfSupervisedLoss):
        found.append(f"{name!r} takes no tuples (it pairs two augmented views of each item)")
    elif spec.get("num_classes") is not None:
        found.append(f"{name!r} with num_classes needs class labels (one setting per "
                     "class): remove num_classes")
    miners = spec.get("miners")
    values = miners.values() if isinstance(miners, dict) else miners or []
    if any(m is not None for m in values):
        found.append(f"{name!r} has miners, which need class labels")
    for key in ("loss", "losses"):
        nested = spec.get(key)
        if isinstance(nested, dict) and "name" not in nested:  # {loss name: config}
            nested = list(nested.values())
        for inner in nested if isinstance(nested, list) else [nested]:
            found.extend(n for n in label_losses(inner) if n not in found)
    return found


class FileContents(Sequence):
    """``path\0sha256-of-its-bytes`` per file of ``paths``, each hashed when it is read
    (a fingerprint part: a resume then notices an image file edited in place)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        h = hashlib.sha256()
        with open(self.paths[index], "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return f"{self.paths[index]}\0{h.hexdigest()}"


def _fingerprint(splits: WeakSplits) -> LazyFingerprint:
    """The checksums of a weak run's data (:mod:`~dmlkit.training.data_fingerprint`),
    computed where they are used: at the first checkpoint, or to compare on a resume.
    Items that are image paths count by their files' contents, as the images a labelled
    image folder run loads do."""
    train = splits.train
    parts: dict[str, Any] = {"the training tuples": [train.tuples, train.similar],
                             "the items": train.items}
    if not isinstance(train.items, torch.Tensor):  # image paths: their files' contents too
        parts["the image files"] = FileContents(train.items)
    if splits.heldout_tuples is not None:
        held = splits.heldout_tuples
        parts["the held-out tuples"] = [held.tuples, held.similar]
    if splits.heldout is not None:
        parts["the held-out split"] = [splits.heldout.x, splits.heldout.labels]
    if splits.val is not None:
        parts["the validation items"] = [splits.val.x, splits.val.labels]
    return LazyFingerprint(parts)


def train_weak_run(
    config: Config, out_dir: Path, resume: bool, log: Any, callbacks: tuple, *,
    checkpoint: dict[str, Any] | None = None,
) -> RunResult:
    """:func:`~dmlkit.training.train_run` for ``data.kind`` pairs / triplets.

    ``checkpoint``: on a resume, ``out_dir``'s checkpoint as the caller loaded it already
    (:func:`~dmlkit.training.run_dir.check_resume`): compared and restored without reading
    the file again (and emptied then); without it the file is read here."""
    start = time.perf_counter()
    problems = label_losses(config.loss)
    if problems:
        raise ValueError(
            f"loss {config.loss['name']!r} cannot train from {config.data.kind} without "
            f"class labels: {'; '.join(problems)}; pairs / triplets train tuple losses "
            "(contrastive, triplet_margin, multi_similarity, ...)")
    if config.miner is not None:
        raise ValueError("miners need class labels; remove the miner section for tuple data")
    if config.data.tuples is not None and config.training.patience is not None:
        raise ValueError(
            f"training.patience ({config.training.patience}) stops training when the "
            "validation MAP@R stops improving, but a tuple file has no labels to validate "
            "on: remove patience (all training.epochs then run)")
    check_patience(config)
    splits = build_weak_splits(config)
    fingerprint = _fingerprint(splits)
    if resume:  # (before config.yaml is written again)
        check_resume_data(out_dir, fingerprint, checkpoint)
        # a run saved before a model setting existed goes on as it trained (the rule a
        # labelled run resumes by)
        config = resumed_config(config, out_dir, checkpoint)
    # (no classes: a loss with optional per-class parameters, margin's betas, keeps one)
    resolved = resolve_config(config, splits.train.example(), None, new_run=not resume)
    created = created_here(out_dir)  # (claimed by train_run; else made here)
    fresh = not out_dir.exists() if created is None else created
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(resolved.to_yaml(), out_dir / CONFIG_FILE)
    evaluated = (
        f"held out {len(splits.heldout)} labelled items"
        if splits.heldout is not None
        else f"held out {len(splits.heldout_tuples)} {config.data.kind}"
    )
    log(
        f"training on {len(splits.train)} {config.data.kind} of {len(splits.train.items)} "
        f"items (no class labels), {evaluated}"
    )
    try:
        trainer = Trainer(resolved, splits.train, val_data=splits.val, out_dir=out_dir, log=log,
                          callbacks=callbacks, data_fingerprint=fingerprint)
    except BaseException:  # a bad model or sampler setting: leave no half-made run behind
        if fresh:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    start -= earlier_seconds(checkpoint)  # (the total: before fit empties the checkpoint)
    # new epochs outdate a finished run's model.pt and metrics.json
    retire_finished_outputs(out_dir, checkpoint, resolved.training.epochs)
    history = trainer.fit(resume=resume, checkpoint=checkpoint)
    atomic_save(trainer.model.state_dict(), out_dir / MODEL_FILE)
    if splits.heldout is not None:
        metrics = heldout_metrics(trainer.model, splits.heldout, device=trainer.device)
    else:
        held = splits.heldout_tuples
        distance = getattr(trainer.loss, "distance", None)
        metrics = tuple_metrics(trainer.model, held, distance, trainer.device)
        with warnings.catch_warnings():  # (a held-out set that cannot be scored: warned once)
            warnings.simplefilter("ignore", UserWarning)
            metrics["baseline"] = tuple_metrics(None, held, distance)
        metrics["num_tuples"] = len(held)
    seconds = time.perf_counter() - start  # (with the epochs of earlier sessions)
    metrics["train_seconds"] = round(seconds, 2)
    if splits.val is not None:  # the per-epoch validation curve and the epoch kept
        best = scored_best(trainer)
        metrics["validation"] = {
            "classes": None,  # (a stratified share of the items, as val_fraction gives)
            "num_items": len(splits.val),
            "best_epoch": best[1] if best else None,
            "best_map_at_r": best[0] if best else None,
        }
    metrics["history"] = history  # (as a labelled run's metrics.json)
    from dmlkit.evaluation.evaluate import write_json

    write_json(metrics, out_dir / METRICS_FILE)  # (atomic; an undefined metric is null)
    return RunResult(out_dir, metrics, history, seconds)


__all__ = [
    "WeakSplits",
    "build_weak_splits",
    "tuple_metrics",
    "tuple_metrics_table",
    "train_weak_run",
    "label_losses",
    "TUPLE_METRICS",
]
