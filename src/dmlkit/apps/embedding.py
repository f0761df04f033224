"""Turn whatever a user hands an application kit into embeddings.

Kits accept raw features (no embedder), a torch module or any callable, a dmlkit run
directory, or ask for a metric to be learned on labelled data first; this module is the
one place that resolves those.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmlkit._checks import FINITE_FIX, check_finite_rows, check_int_param, check_real_inputs
from dmlkit._checks import check_float32_range as check_range


def dense_array(X: Any) -> np.ndarray:
    """``X`` as a numpy array (tensors moved to the CPU); sparse matrices are refused."""
    import scipy.sparse

    if scipy.sparse.issparse(X):
        raise TypeError("sparse input is not supported: pass a dense array (X.toarray())")
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    return np.asarray(X)


def validate_inputs(estimator: Any, X: Any, *, reset: bool, images: bool) -> np.ndarray:
    """Checked float inputs for a scikit-learn-style kit.

    Rows ``(n, d)`` go through scikit-learn's ``validate_data`` (its messages, and
    ``n_features_in_``); with ``images`` true, ``(n, C, H, W)``-like arrays are accepted
    too, checked for finiteness and for the fitted number of values per row.
    """
    from sklearn.utils.validation import validate_data

    original = X
    X = dense_array(X)
    check_text_inputs(X)
    check_finite_rows(X, "X")
    check_float32_range(X, "X")
    if X.ndim > 2 and not images:
        rows = int(np.prod(X.shape[1:]))
        raise ValueError(
            f"X has shape {X.shape}: {type(estimator).__name__} without an embedder scores "
            f"rows of features (n, d); flatten X to ({X.shape[0]}, {rows}) rows, or pass an "
            "embedder (a run directory or a module) that takes these inputs")
    if X.ndim <= 2:  # a DataFrame as given: its column names are fitted and checked
        given = original if hasattr(original, "columns") else X
        return validate_data(estimator, given, reset=reset, dtype=[np.float32, np.float64])
    check_real_inputs(X, "", "X")
    if X.shape[0] == 0:
        raise ValueError(f"Found array with 0 sample(s) (shape={X.shape})")
    X = X.astype(np.float32, copy=False)
    per_row = int(np.prod(X.shape[1:]))
    if reset:
        estimator.n_features_in_ = per_row
    elif per_row != estimator.n_features_in_:
        raise ValueError(
            f"X has {per_row} features, but {type(estimator).__name__} is expecting "
            f"{estimator.n_features_in_} features as input"
        )
    return X


def check_text_inputs(X: np.ndarray) -> None:
    """Refuse strings (sentences) with one line saying how to embed them first: kits take
    numeric arrays (features, images), whatever their embedder."""
    if X.dtype.kind in "SU" or (X.dtype.hasobject and X.size
                                 and isinstance(X.reshape(-1)[0], (str, bytes))):
        raise TypeError(
            "application kits take numeric arrays (features, images, embeddings), not text: "
            "embed the sentences first, e.g. dmlkit.text.embed_texts(model, sentences) or "
            "SentenceEncoder().encode(sentences), and pass those embeddings (no embedder)")


#: the largest magnitude a float32 embedding input holds
def check_float32_range(X: Any, source: str) -> None:
    """:func:`dmlkit._checks.check_float32_range` for inputs the kits embed."""
    check_range(X, source, fix=f"the kits compute in float32: rescale {source} first")


class RunModel:
    """The model of a run directory, loaded once, with the fingerprint of its weights.

    :meth:`check` refuses the run once its weights have changed (training resumed, the
    run replaced), as loading a saved kit does (:class:`~dmlkit.apps.persistence.
    StaleKitError`): what a kit learned from the old model's embeddings does not hold
    for the new one. The check reads the files' sizes and times, and recomputes the
    fingerprint only when they changed.
    """

    def __init__(self, run_dir: str | Path, expected: str | None = None) -> None:
        from dmlkit.apps.persistence import StaleKitError, run_stamps
        from dmlkit.index.store import model_fingerprint
        from dmlkit.runs import load_run

        self.run_dir = str(Path(run_dir).resolve())
        self.stamps = run_stamps(self.run_dir)
        self.model = load_run(self.run_dir).model
        self.sha256 = model_fingerprint(self.model)
        if expected is not None and expected != self.sha256:
            raise StaleKitError(self._stale())

    def _stale(self) -> str:
        return (f"the weights of the run {self.run_dir} have changed since the kit was "
                "fitted with its model (training resumed, or the run replaced): what the kit "
                "learned from that model's embeddings does not hold for the new model; fit "
                "the kit again")

    def check(self) -> None:
        """Raise :class:`~dmlkit.apps.persistence.StaleKitError` when the run's weights
        are no longer those loaded."""
        from dmlkit.apps.persistence import StaleKitError, run_fingerprint, run_stamps

        stamps = run_stamps(self.run_dir)
        if stamps == self.stamps:
            return
        try:
            current = run_fingerprint(self.run_dir)
        except (FileNotFoundError, ValueError) as err:
            raise StaleKitError(f"the kit embeds with the run {self.run_dir}, which cannot be "
                                f"loaded now ({err}); restore the run, or fit the kit "
                                "again") from None
        if current != self.sha256:
            raise StaleKitError(self._stale())
        self.stamps = stamps  # files touched, same weights


def kit_embedder(estimator: Any, embedder: Any, *, reset: bool) -> Any:
    """``embedder`` of a kit, ready for :func:`embed_inputs`.

    A run directory's model is loaded once (at ``fit``, ``reset`` true; or at the first
    use of a loaded kit, checked against the fingerprint it was saved with) and kept as
    ``estimator.embedder_model_`` (a :class:`RunModel`); later calls check that the run's
    weights are still those. ``"learn"`` is refused: only
    :class:`~dmlkit.apps.outliers.MetricOutlierDetector` learns a metric.
    """
    if isinstance(embedder, str) and embedder == "learn":
        raise ValueError(
            f'embedder="learn" is not supported by {type(estimator).__name__}: only '
            "MetricOutlierDetector learns a metric; pass None (features as they are), a "
            "torch module, a callable or a run directory")
    if not isinstance(embedder, (str, Path)):
        return embedder
    cached = getattr(estimator, "embedder_model_", None)
    if (reset or not isinstance(cached, RunModel)
            or cached.run_dir != str(Path(embedder).resolve())):
        expected = None if reset else getattr(estimator, "model_sha256_", None)
        estimator.embedder_model_ = RunModel(embedder, expected)
    else:
        cached.check()
    return estimator.embedder_model_.model


def embed_inputs(embedder: Any, X: Any, *, batch_size: int = 1024) -> torch.Tensor:
    """``(n, dim)`` float32 CPU embeddings of ``X`` (rows as given when ``embedder`` is None).

    The result never shares memory with ``X``: a kit keeps it as fitted state, which must
    not follow later changes to the caller's array.

    ``embedder`` is None, a :class:`torch.nn.Module` (run in eval mode, no gradients, in
    batches), a dmlkit run directory (its model), or a callable taking a float32 array
    and returning ``(n, dim)`` array-likes.
    """
    batch_size = check_int_param("batch_size", batch_size)
    x = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32))  # (views: copied)
    if embedder is None:  # a copy: a float32 array is wrapped in place, not copied
        return x.flatten(1).clone(memory_format=torch.contiguous_format)
    if isinstance(embedder, (str, Path)):
        from dmlkit.runs import load_run

        embedder = load_run(embedder).model
    if isinstance(embedder, torch.nn.Module):
        from dmlkit.runs import embed

        z, _ = embed(embedder, x, batch_size=batch_size)
    elif callable(embedder):
        parts = [np.asarray(embedder(x[s : s + batch_size].numpy()), dtype=np.float32)
                 for s in range(0, len(x), batch_size)]
        z = torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0, 0)
    else:
        raise TypeError(
            "embedder must be None, a torch.nn.Module, a callable or a run directory, got "
            f"{type(embedder).__name__}"
        )
    if z.dim() != 2 or z.shape[0] != x.shape[0]:
        raise ValueError(f"the embedder returned shape {tuple(z.shape)} for {x.shape[0]} rows")
    check_finite_rows(z.numpy(), "the embedder's output", fix=(
        "the embedder overflows or divides by zero on those input rows: check them (their "
        "scale) and the embedder (its weights)"))
    return z


#: the metric trained by ``embedder="learn"``: an MLP on multi-similarity pairs
LEARN_DEFAULTS: dict[str, Any] = {
    "model": {"name": "mlp", "dim": 64, "hidden": [256]},
    "loss": {"name": "multi_similarity"},
    "miner": {"name": "multi_similarity", "epsilon": 0.1},
    "sampler": {"name": "m_per_class", "m": 8, "batch_size": 128},
    "optimizer": {"name": "adam", "lr": 1e-3},
    "training": {"epochs": 15, "progress": False},
}


def learn_embedder(
    X: np.ndarray, labels: np.ndarray, overrides: dict[str, Any] | None, seed: int
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train an embedding model on labelled ``X`` with dmlkit's Trainer.

    Returns the model (in eval mode) and its resolved model config (input shape filled
    in), from which the registry rebuilds the same network for saved weights.
    """
    from dmlkit.config.schema import Config
    from dmlkit.data.dataset import ArrayDataset
    from dmlkit.training import Trainer, resolve_config
    from dmlkit.training.class_rows import run_class_ids

    raw = copy.deepcopy(LEARN_DEFAULTS)
    for section, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(raw.get(section), dict):
            raw[section].update(value)
        else:
            raw[section] = value
    raw.setdefault("training", {})["seed"] = int(seed)
    classes, codes = np.unique(labels, return_inverse=True)
    sampler = raw.get("sampler") or {}
    if sampler.get("name") == "m_per_class":  # fewer classes than a batch wants: smaller batch
        m = int(sampler.get("m", 4))
        sampler["batch_size"] = min(int(sampler.get("batch_size", 128)), m * len(classes))
    data = ArrayDataset(np.asarray(X, dtype=np.float32), codes.astype(np.int64))
    # a loss with one row per class: one per class, each label (its code) given its row
    class_ids, num_classes = run_class_ids(data.labels, None)
    config = resolve_config(Config.from_dict(raw), data.x[0], num_classes)
    trainer = Trainer(config, data, log=None, class_ids=class_ids)
    trainer.fit()
    return trainer.model.eval(), copy.deepcopy(dict(config.model))


__all__ = ["validate_inputs", "check_finite_rows", "check_float32_range",
           "check_text_inputs", "FINITE_FIX", "dense_array", "embed_inputs", "kit_embedder",
           "RunModel", "learn_embedder", "LEARN_DEFAULTS"]
