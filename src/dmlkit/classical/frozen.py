"""Mahalanobis learners on frozen deep embeddings, and their pickle-free persistence.

The bridge between the two halves of dmlkit: embed a trained run's data, fit a classical
learner on the embeddings (a linear map on top of the frozen network) and compare raw
embeddings with the learned metric on the run's held-out split. A learned metric is
saved as ``components.npy`` (the ``(k, d)`` map ``L``) plus ``metric.json`` (method,
parameters, shapes); nothing is pickled and loading never executes code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dmlkit._checks import check_real_inputs

COMPONENTS_FILE = "components.npy"
METRIC_FILE = "metric.json"
EVAL_KEYS = ("precision_at_1", "r_precision", "map_at_r")


@dataclass
class EmbeddedSplits:
    """Train / held-out embeddings (float64 ndarrays) and labels (int64 ndarrays).

    ``classes`` holds the original label values when they were not integers (strings,
    say): ``labels`` are then indices into it, shared by both splits.
    """

    train: np.ndarray
    train_labels: np.ndarray
    heldout: np.ndarray
    heldout_labels: np.ndarray
    classes: np.ndarray | None = None


def encode_split_labels(
    train_labels: np.ndarray, heldout_labels: np.ndarray, source: str = "labels"
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Both splits' labels as int64, with one code space; ``(train, heldout, classes)``.

    Integer labels are kept as they are (``classes`` is None), floats holding whole
    numbers become those integers, and any other labels (strings, bools) are encoded as
    indices into the sorted ``classes`` of both splits together. Floats that are not
    whole numbers are a ``ValueError`` naming them: rounding them would merge classes.
    """
    parts = [np.asarray(train_labels), np.asarray(heldout_labels)]
    parts = [lab.ravel() if lab.ndim == 2 and lab.shape[1] == 1 else lab for lab in parts]
    for name, lab in zip(("labels", "heldout_labels"), parts, strict=True):
        check_one_label_per_row(lab, source, name)
    kinds = {lab.dtype.kind for lab in parts}
    if kinds <= {"i", "u"}:
        return parts[0].astype(np.int64), parts[1].astype(np.int64), None
    if kinds <= {"i", "u", "f"}:
        values = np.concatenate([lab.astype(np.float64) for lab in parts])
        bad = np.unique(values[~np.isfinite(values) | (values != np.round(values))])
        if bad.size:
            raise ValueError(
                f"{source}: class labels must be integers (or strings), got non-integral "
                f"float label(s) {bad[:5].tolist()}{' ...' if bad.size > 5 else ''}; "
                "casting would merge classes, so map them to integers first"
            )
        return parts[0].astype(np.int64), parts[1].astype(np.int64), None
    if not kinds <= {"U", "S", "b", "i", "u"}:
        raise ValueError(f"{source}: labels must be integers or strings, got dtypes "
                         f"{[str(lab.dtype) for lab in parts]}")
    both = np.concatenate([lab.astype(str) for lab in parts])
    classes, codes = np.unique(both, return_inverse=True)
    n = parts[0].shape[0]
    return codes[:n].astype(np.int64), codes[n:].astype(np.int64), classes


_ONE_LEVEL = ("pass one level's column (labels[:, k]) or the leaf classes "
              "(np.unique(labels, axis=0, return_inverse=True)[1]) as the labels")


def check_one_label_per_row(labels: Any, source: str, name: str = "labels",
                            hint: str = _ONE_LEVEL) -> None:
    """A ``ValueError`` unless ``labels`` hold one class label per row, ``(n,)`` (or an
    ``(n, 1)`` column): classical learners take no hierarchical ``(n, L)`` labels and no
    ``(n, C)`` multi-labels. ``hint`` says what to do instead."""
    shape = tuple(np.shape(labels))
    if len(shape) == 1 or (len(shape) == 2 and shape[1] == 1):
        return
    kind = np.asarray(labels).dtype.kind if len(shape) == 2 else ""
    what = {"b": "(n, C) multi-labels", "i": "hierarchical (n, L) labels",
            "u": "hierarchical (n, L) labels"}.get(kind, "labels")
    if kind == "b":  # (no column of multi-labels is a class per item)
        hint = ("an item of several classes has no one class to give them; train a deep "
                "metric with a pair or tuple loss instead (dmlkit train, loss "
                "multi_similarity, contrastive or triplet_margin take (n, C) labels)")
    raise ValueError(f"{source}: {name} are {shape} {what}, but classical metric learners "
                     f"take one class label per item, (n,): {hint}")


def make_learner(method: str, params: dict[str, Any] | None = None) -> Any:
    """A learner by name (``nca``, ``lmnn``, ``itml``, ``lfda``, ``mlkr``) with keyword
    ``params``.

    ``params`` may come from text (``metric.json``, ``--param``): a real parameter (one
    whose default is a float) given as ``"inf"``, ``"-inf"`` or ``"nan"`` is read back as
    that float (:func:`dmlkit.classical.params.real_from_text`), so the ``params`` that
    :func:`save_metric` writes refit the learner they describe."""
    import inspect

    from dmlkit.classical.params import real_from_text

    learners = _learners()
    if method not in learners:
        raise ValueError(f"unknown method {method!r}; known: {sorted(learners)}")
    cls = learners[method]
    params = dict(params or {})
    signature = inspect.signature(cls.__init__).parameters
    allowed = set(signature) - {"self"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"{method} got unknown parameter(s) {unknown}; allowed: {sorted(allowed)}")
    for key, value in params.items():
        if isinstance(signature[key].default, float):  # a real parameter
            params[key] = real_from_text(value)
    return cls(**params)


def fit_on_embeddings(
    embeddings: Any, labels: Any, method: str = "nca", params: dict[str, Any] | None = None
) -> Any:
    """Fit ``method`` on frozen ``embeddings (n, dim)`` with class ``labels (n,)``.

    MLKR regresses the one-hot class indicators ``(n, C)`` (class ids are not numbers
    whose distances mean anything).
    """
    from dmlkit.classical.mahalanobis import check_label_types

    emb = np.asarray(embeddings.detach().cpu() if hasattr(embeddings, "detach") else embeddings,
                     dtype=np.float64)
    lab = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
    check_one_label_per_row(lab, method)
    if method == "mlkr":  # kernel regression of the one-hot class indicators, not of ids
        check_label_types(lab, method)
        classes, inverse = np.unique(lab, return_inverse=True)
        if len(classes) < 2:  # (the refusal of the other learners, in their words)
            raise ValueError(f"metric learning from labels needs at least 2 classes, got "
                             f"{len(classes)} class(es): {classes[:5].tolist()}")
        lab = np.eye(len(classes))[inverse]  # (n, C)
    return make_learner(method, params).fit(emb, lab)


def embed_run(run_dir: str | Path, device: str = "cpu", batch_size: int = 512) -> EmbeddedSplits:
    """Embed a run's train and held-out splits with its trained model (no gradients)."""
    from dmlkit.training.run import build_splits, embed, load_run

    run = load_run(run_dir, device=device)
    if getattr(run.config.data, "kind", "labels") != "labels":
        raise ValueError(
            f"{run_dir} was trained from {run.config.data.kind}; fitting a metric on its "
            "embeddings needs class labels (data.kind: labels)"
        )
    train, heldout = build_splits(run.config)
    check_one_label_per_row(
        train.labels, str(run_dir),
        hint=(f"embed the run (dmlkit embed {run_dir} --data train, and --data heldout) and "
              "fit on an .npz (embeddings, labels, heldout_embeddings, heldout_labels) whose "
              "labels are one level's column (labels[:, k]) or the leaf classes "
              "(np.unique(labels, axis=0, return_inverse=True)[1])"))
    parts = []
    for split in (train, heldout):
        emb, labels = embed(run.model, split, batch_size=batch_size, device=device)
        parts += [emb.double().numpy(), labels.numpy().astype(np.int64)]
    return EmbeddedSplits(*parts)


def load_embeddings(source: str | Path, device: str = "cpu", *, x_key: str = "embeddings",
                    labels_key: str = "labels", hint: str = "") -> EmbeddedSplits:
    """Embeddings from a run directory, or from an ``.npz`` file with arrays ``x_key``
    (default ``embeddings``), ``labels_key`` (default ``labels``) and optionally
    ``heldout_<x_key>``, ``heldout_<labels_key>`` (without them the training arrays are
    also the held-out ones); ``hint`` ends the message of a missing or non-numeric array.

    Labels may be integers, whole-number floats or strings (see
    :func:`encode_split_labels`); other floats are a ``ValueError``."""
    source = Path(source)
    if source.is_dir():
        splits = embed_run(source, device=device)
        for rows, split in ((splits.train, "train"), (splits.heldout, "held-out")):
            if rows.shape[0] == 0:
                raise ValueError(f"{source}: the {split} split has 0 items; give the run's "
                                 "data more items, or fit on an .npz of embeddings")
        return splits
    if source.suffix.lower() != ".npz" or not source.is_file():
        raise ValueError(f"{source} is neither a run directory nor an .npz file")
    from dmlkit._checks import check_finite_rows
    from dmlkit.data.npz import read_arrays

    data = read_arrays(source)
    for key, role in ((x_key, "embeddings"), (labels_key, "labels")):
        if key not in data:
            raise ValueError(f"{source} has no array {key!r} (the {role}); its arrays are "
                             f"{list(data)}{hint}")
    held_x, held_y = f"heldout_{x_key}", f"heldout_{labels_key}"
    if (held_x in data) != (held_y in data):
        there, lacking = (held_x, held_y) if held_x in data else (held_y, held_x)
        raise ValueError(f"{source} has {there} but no {lacking}; the held-out split "
                         "needs both (or neither: then the training arrays are scored)")
    train, labels = data[x_key], data[labels_key]
    held, held_labels = data.get(held_x, train), data.get(held_y, labels)
    for name, arr in ((x_key, train), (held_x, held)):
        if arr.ndim != 2:
            raise ValueError(f"{source}: {name} must be (n, dim), got shape {arr.shape}")
        check_real_inputs(arr, str(source), name, hint=hint)
        check_finite_rows(arr, f"{source}: {name}")
    if train.shape[0] == 0:
        raise ValueError(f"{source}: {x_key} has 0 rows: there is nothing to fit on; give "
                         "embeddings with labels")
    if held.shape[0] == 0:
        raise ValueError(f"{source}: {held_x} has 0 rows: there is nothing to score the "
                         f"metric on; give held-out rows, or leave out {held_x} and {held_y} "
                         "to score the training rows")
    if held.shape[1] != train.shape[1]:
        raise ValueError(f"{source}: {held_x} have dim {held.shape[1]} but {x_key} have "
                         f"dim {train.shape[1]}; both must come from one model")
    for name, lab, arr, arr_name in ((labels_key, labels, train, x_key),
                                     (held_y, held_labels, held, held_x)):
        if lab.ndim >= 1 and lab.shape[0] != arr.shape[0]:
            raise ValueError(f"{source}: {name} has {lab.shape[0]} label(s) but "
                             f"{arr_name} has {arr.shape[0]} row(s); give one label per row")
    train_codes, held_codes, classes = encode_split_labels(labels, held_labels, str(source))
    return EmbeddedSplits(train.astype(np.float64), train_codes, held.astype(np.float64),
                          held_codes, classes)


def fit_on_run(
    run_dir: str | Path, method: str = "nca", params: dict[str, Any] | None = None,
    device: str = "cpu",
) -> tuple[Any, EmbeddedSplits]:
    """Fit ``method`` on the train-split embeddings of a run; returns it and the splits."""
    splits = embed_run(run_dir, device=device)
    return fit_on_embeddings(splits.train, splits.train_labels, method, params), splits


def evaluate_metric(components: np.ndarray | None, splits: EmbeddedSplits,
                    n_neighbors: int = 3) -> dict[str, Any]:
    """Raw embeddings vs ``x -> L x`` on the held-out split.

    Leave-one-out retrieval (P@1, R-Precision, MAP@R) on the held-out embeddings, and
    ``n_neighbors``-NN accuracy of held-out items against the training items
    (leave-one-out when both are the same rows): ``knn_accuracy`` when every held-out
    class occurs in training, else ``knn_accuracy_seen_classes`` over the held-out items
    whose class does (k-NN against the training items cannot name a class they lack;
    retrieval among the held-out items measures those), and none when no held-out class
    occurs in training; a warning says which and how many items.
    ``components=None`` evaluates raw embeddings only. With fewer training rows than
    ``n_neighbors`` (other than the item itself, leave-one-out) the vote takes as many as
    there are, and with none k-NN accuracy is left out; either is said by a warning.
    """
    import warnings

    from sklearn.neighbors import KNeighborsClassifier

    from dmlkit.evaluation import retrieval_metrics

    def scores(tr: np.ndarray, held: np.ndarray) -> dict[str, float]:
        ret = retrieval_metrics(held.astype(np.float32), splits.heldout_labels)
        out = {k: float(ret[k]) for k in EVAL_KEYS}
        if not votes_possible:
            return out
        if same_rows:  # no held-out split: leave-one-out, as the retrieval scores are
            knn = KNeighborsClassifier(n_neighbors=vote_k).fit(tr, splits.train_labels)
            rows = knn.kneighbors(n_neighbors=vote_k, return_distance=False)  # (n, k)
            # vote on codes 0..C-1 (any label values: negative, huge); codes keep the
            # labels' order, so a tie still goes to the lowest label
            classes, codes = np.unique(splits.train_labels, return_inverse=True)
            votes = codes.reshape(-1)[rows]  # (n, k)
            predicted = classes[[np.bincount(v).argmax() for v in votes]]  # (n,)
            out["knn_accuracy"] = float((predicted == splits.train_labels).mean())
        else:
            knn = KNeighborsClassifier(n_neighbors=vote_k).fit(tr, splits.train_labels)
            out[knn_key] = float(knn.score(held[known], splits.heldout_labels[known]))
        return out

    # one set of rows on both sides (a file without held-out arrays): an item must not
    # count as its own neighbour
    same_rows = (splits.train.shape == splits.heldout.shape
                 and np.array_equal(splits.train, splits.heldout)
                 and np.array_equal(splits.train_labels, splits.heldout_labels))
    others = splits.train.shape[0] - int(same_rows)  # the rows a held-out item can vote on
    vote_k = min(n_neighbors, others)
    # k-NN accuracy only over held-out items whose class occurs in training
    known = (np.ones(splits.heldout_labels.shape[0], dtype=bool) if same_rows
             else np.isin(splits.heldout_labels, splits.train_labels))  # (m,)
    classes_known = bool(known.any())
    knn_key = "knn_accuracy" if known.all() else "knn_accuracy_seen_classes"
    if not known.all():
        _warn_unseen_classes(splits, known)
    votes_possible = classes_known and vote_k >= 1
    if classes_known and vote_k < 1:
        warnings.warn(f"no k-NN accuracy: {splits.train.shape[0]} training row(s) leave no "
                      "neighbour to vote; give more training rows", stacklevel=2)
    elif votes_possible and vote_k < n_neighbors:
        warnings.warn(f"k-NN accuracy is {vote_k}-NN, not {n_neighbors}-NN: there are only "
                      f"{others} training row(s) to vote"
                      + (" besides each item itself" if same_rows else ""), stacklevel=2)

    result: dict[str, Any] = {"raw": scores(splits.train, splits.heldout)}
    if components is not None:
        L = np.asarray(components, dtype=np.float64)
        result["learned"] = scores(splits.train @ L.T, splits.heldout @ L.T)
    return result


def _warn_unseen_classes(splits: EmbeddedSplits, known: np.ndarray) -> None:
    """Say why k-NN accuracy leaves out the held-out items of classes (``~known``) that
    never occur in training, and how many items it is over."""
    import warnings

    unseen = np.unique(splits.heldout_labels[~known])
    if splits.classes is not None:  # (codes -> the labels as given)
        unseen = splits.classes[unseen]
    names = f"{unseen[:5].tolist()}{' ...' if unseen.size > 5 else ''}"
    m, n_known = known.size, int(known.sum())
    why = ("k-NN classification against the training items cannot name a class they "
           "never include; precision_at_1, r_precision and map_at_r (retrieval among the "
           "held-out items) are the measure for unseen classes")
    if n_known == 0:
        warnings.warn(f"no k-NN accuracy: none of the {m} held-out items' {unseen.size} "
                      f"class(es) {names} occurs in training; {why}", stacklevel=3)
    else:
        warnings.warn(f"knn_accuracy_seen_classes is k-NN accuracy over the {n_known} of "
                      f"{m} held-out items whose class occurs in training, not all of them: "
                      f"the other {m - n_known} are of {unseen.size} class(es) never seen in "
                      f"training {names}; {why}", stacklevel=3)


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON data; NaN becomes ``null`` (as
    :func:`dmlkit.evaluation.evaluate.write_json` writes it), an infinity the string
    ``"inf"`` / ``"-inf"``, anything else unknown its ``repr``."""
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        value = value.item()
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, float) and np.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):  # e.g. ITML's bounds: refit from the JSON as used
        return [_jsonable(v) for v in value]
    return repr(value)


def to_json(value: Any) -> str:
    """``value`` (scores, metric metadata) as indented, strict JSON text: NaN written as
    ``null`` and an infinite parameter (ITML's ``gamma=inf``) as the string ``"inf"``
    (:func:`make_learner` reads it back as the float), so any JSON reader takes the file."""
    return json.dumps(_jsonable(value), indent=2, allow_nan=False)


def save_metric(learner: Any, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``components.npy`` and ``metric.json`` for a fitted learner into ``out_dir``.

    ``metric.json``'s ``method`` is the learner's command-line name (``nca``, ``mlkr``,
    ...), or its class name for a learner without one.
    """
    L = np.asarray(learner.components_, dtype=np.float64)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (COMPONENTS_FILE + ".tmp.npy")
    np.save(tmp, L, allow_pickle=False)
    tmp.replace(out / COMPONENTS_FILE)
    meta = {
        "method": method_name(type(learner)),
        "class": f"{type(learner).__module__}.{type(learner).__name__}",
        "params": dict(learner.get_params()),
        "n_features_in": int(L.shape[1]),
        "n_components": int(L.shape[0]),
        **(extra or {}),
    }
    tmp = out / (METRIC_FILE + ".tmp")
    tmp.write_text(to_json(meta) + "\n")
    tmp.replace(out / METRIC_FILE)
    return out


def load_metric(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """``(components (k, d), metadata)`` from a directory written by :func:`save_metric`."""
    path = Path(path)
    comp = path / COMPONENTS_FILE
    if not comp.is_file():
        raise FileNotFoundError(f"{path} holds no {COMPONENTS_FILE}")
    try:
        L = np.load(comp, allow_pickle=False)
    except (OSError, EOFError, ValueError) as err:
        what = ("holds objects (reading it would need unpickling, which dmlkit never does)"
                if "pickle" in str(err) else f"cannot be read ({err})")
        raise ValueError(f"{comp} {what}; fit the metric again (dmlkit classical fit ... "
                         f"--out {path})") from None
    if (not isinstance(L, np.ndarray) or L.ndim != 2 or 0 in L.shape
            or not np.issubdtype(L.dtype, np.floating) or not np.isfinite(L).all()):
        raise ValueError(f"{comp} must hold a finite float (k, d) matrix with k, d >= 1, got "
                         f"{getattr(L, 'shape', None)} {getattr(L, 'dtype', type(L).__name__)}")
    meta_file = path / METRIC_FILE
    meta: Any = {}
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text())
        except (ValueError, OSError) as err:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{meta_file} is not valid JSON ({err}); fit the metric again "
                             "or fix the file") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{meta_file} must hold a JSON object (method, params, ...), "
                             f"got a JSON {_JSON_KINDS.get(type(meta), 'value')}")
    for key, size in (("n_components", L.shape[0]), ("n_features_in", L.shape[1])):
        recorded = meta.get(key)
        if recorded is not None and recorded != size:
            raise ValueError(f"{meta_file} says {key} {recorded} but {comp} is "
                             f"{L.shape[0]} x {L.shape[1]}: the two files come from different "
                             f"fits; fit the metric again (dmlkit classical fit ... --out {path})")
    if isinstance(meta.get("method"), str):  # class names ("MLKR") read as CLI names
        by_class = {cls.__name__: name for name, cls in _learners().items()}
        meta["method"] = by_class.get(meta["method"], meta["method"])
    return L, meta


_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number",
               bool: "boolean", type(None): "null"}


def _learners() -> dict[str, type]:
    from dmlkit.classical import LEARNERS, MLKR

    return {**LEARNERS, "mlkr": MLKR}


def method_name(cls: type) -> str:
    """The command-line name of a learner class (``MLKR`` -> ``"mlkr"``), else its name."""
    names = {c: name for name, c in _learners().items()}
    return names.get(cls, cls.__name__)


def load_distance(path: str | Path, squared: bool = False) -> Any:
    """A saved metric as a dmlkit ``MahalanobisDistance``."""
    import torch

    from dmlkit.distances.mahalanobis import MahalanobisDistance

    L, _ = load_metric(path)
    return MahalanobisDistance(components=torch.from_numpy(L), squared=squared)
