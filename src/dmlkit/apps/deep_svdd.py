"""Deep SVDD (Ruff et al., "Deep One-Class Classification", ICML 2018), one-class variant.

A bias-free network ``phi`` is trained so that normal data falls close to a fixed centre
``c`` (the mean of the initial network's outputs on the training data):

    min_W  1/n sum_i ||phi(x_i; W) - c||^2  +  weight decay,

and a point's anomaly score is ``||phi(x) - c||^2``. Training runs on dmlkit's
:class:`~dmlkit.training.Trainer` (random batches, Adam, cosine schedule).

The threshold is set on normal rows the network never saw: ``fit`` holds out a seeded
``calibration_fraction`` of its rows, trains on the rest and puts ``offset_`` at the
``contamination`` quantile of the held-out rows' scores. (The network pulls the rows it
was trained on towards the centre, so a threshold from their scores would flag far more
than ``contamination`` of new normal data.)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted
from torch import Tensor, nn

from dmlkit._checks import check_int_param, check_random_state_seed, check_real
from dmlkit.apps.embedding import embed_inputs, validate_inputs
from dmlkit.apps.outliers import check_contamination
from dmlkit.apps.persistence import load_kit, load_module, module_arrays, save_kit

#: prefix of the network's weights in a saved detector
MODEL = "model"


class OneClassObjective(nn.Module):
    """Mean squared distance of the embeddings to a fixed ``center`` (a buffer)."""

    def __init__(self, center: Tensor) -> None:
        super().__init__()
        self.register_buffer("center", center.detach().clone())

    def forward(self, embeddings: Tensor, labels: Tensor | None = None, *, indices: Any = None,
                ref_embeddings: Tensor | None = None, ref_labels: Tensor | None = None) -> Tensor:
        return (embeddings - self.center).pow(2).sum(1).mean()  # scalar


class DeepSVDD(OutlierMixin, BaseEstimator):
    """One-class Deep SVDD with scikit-learn's outlier-detector API.

    Parameters
    ----------
    model : {"auto", "mlp", "cnn"}
        ``"cnn"``: the bias-free LeNet-style CNN (images ``(n, C, H, W)``, or flat rows
        with ``image_shape``); ``"mlp"``: a bias-free MLP; ``"auto"``: the CNN for image
        arrays or when ``image_shape`` is given, else the MLP.
    image_shape : tuple (C, H, W), optional
        Shape of one image when ``X`` holds flattened images.
    dim : int
        Output dimension of the network.
    epochs, batch_size, lr, weight_decay : training settings (Adam); ``batch_size`` is at
        least 2 (the networks batch-normalize).
    center_eps : float
        Centre coordinates closer to 0 than this are pushed to ``+-center_eps`` (a zero
        coordinate is trivially reachable by zeroing weights).
    contamination : float in (0, 0.5]
        Fraction of new normal data expected outside the threshold ``offset_``: the
        fraction of the held-out calibration rows left outside it.
    calibration_fraction : float in (0, 1)
        Fraction of the rows given to ``fit`` held out (seeded by ``random_state``) to set
        ``offset_``; the network is trained on the others. At least one row is held out
        and at least two trained on.
    random_state : int, numpy RandomState or None
        Seed of the calibration split and of training (a RandomState or None gives one
        seed drawn at ``fit``).

    Attributes
    ----------
    model_ : torch.nn.Module
    model_config_ : dict
        The registered model config ``model_`` was built from (rebuilt from it on load).
    center_ : numpy.ndarray of shape (dim,)
    offset_ : float
    n_samples_fit_ : int
        Number of rows given to ``fit`` (``n_calibration_`` of them held out).
    n_calibration_ : int
        Number of held-out rows ``offset_`` was set on.
    """

    def __init__(
        self,
        model: str = "auto",
        *,
        image_shape: tuple[int, int, int] | None = None,
        dim: int = 32,
        epochs: int = 30,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        center_eps: float = 0.1,
        contamination: float = 0.1,
        calibration_fraction: float = 0.2,
        random_state: Any = 0,
    ) -> None:
        self.model = model
        self.image_shape = image_shape
        self.dim = dim
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.center_eps = center_eps
        self.contamination = contamination
        self.calibration_fraction = calibration_fraction
        self.random_state = random_state

    def _inputs(self, X: Any, reset: bool) -> np.ndarray:
        return validate_inputs(self, X, reset=reset, images=True).astype(np.float32, copy=False)

    def _model_spec(self, X: np.ndarray, dim: int) -> dict[str, Any]:
        kind = self.model
        if kind not in ("auto", "mlp", "cnn"):
            raise ValueError(f"model must be 'auto', 'mlp' or 'cnn', got {kind!r}")
        shape = tuple(self.image_shape) if self.image_shape is not None else (
            (1, *X.shape[1:]) if X.ndim == 3 else tuple(X.shape[1:]) if X.ndim == 4 else None)
        if kind == "auto":
            kind = "cnn" if shape is not None else "mlp"
        if kind == "mlp":
            return {"name": "bias_free_mlp", "in_features": int(np.prod(X.shape[1:])),
                    "dim": dim}
        if shape is None or len(shape) != 3 or int(np.prod(shape)) != self.n_features_in_:
            raise ValueError(
                f"model 'cnn' needs images: X of shape (n, C, H, W), or flat rows with "
                f"image_shape=(C, H, W) matching {self.n_features_in_} features; got "
                f"image_shape {self.image_shape}"
            )
        return {"name": "bias_free_cnn", "in_channels": int(shape[0]),
                "image_size": [int(shape[1]), int(shape[2])], "dim": dim}

    def fit(self, X: Any, y: Any = None, *,
            log: Callable[[str], None] | None = None) -> DeepSVDD:
        """Train on normal data ``X`` and set ``offset_`` on a held-out part of it; ``y`` is
        ignored. ``log`` (optional) gets one progress line per epoch (as ``dmlkit train``
        prints them; a progress bar too on a terminal)."""
        from dmlkit.config.schema import Config
        from dmlkit.data.dataset import ArrayDataset
        from dmlkit.training import Trainer

        check_contamination(self.contamination)
        seed = check_random_state_seed(self.random_state)
        dim = check_int_param("dim", self.dim)
        epochs = check_int_param("epochs", self.epochs)
        lr = check_real("lr", self.lr, 0.0, math.inf, low_open=True, high_open=True)
        decay = check_real("weight_decay", self.weight_decay, 0.0, math.inf, high_open=True)
        check_real("center_eps", self.center_eps, 0.0, math.inf, high_open=True)
        size = self.batch_size
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 2:
            raise ValueError(f"batch_size must be an integer >= 2 (the network's batch "
                             f"normalization needs two rows per batch), got {size!r}")
        frac = self.calibration_fraction
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0.0 < frac < 1.0:
            raise ValueError(f"calibration_fraction must be in (0, 1) (the share of rows held "
                             f"out to set the threshold), got {frac!r}")
        X = self._inputs(X, reset=True)
        if X.shape[0] < 3:
            raise ValueError(f"DeepSVDD needs 3 or more training points (2 to train the "
                             f"network on, 1 to set the threshold), got n_samples={len(X)}")
        n = len(X)
        n_cal = min(n - 2, max(1, round(float(frac) * n)))  # (batch norm needs 2 rows)
        order = np.random.default_rng(seed).permutation(n)
        X_cal, X = X[order[:n_cal]], X[np.sort(order[n_cal:])]
        spec = self._model_spec(X, dim)
        config = Config.from_dict({
            "model": spec,
            "loss": {"name": "contrastive"},  # unused: the one-class objective is passed in
            "optimizer": {"name": "adam", "lr": lr, "weight_decay": decay},
            "training": {"epochs": epochs, "batch_size": int(self.batch_size),
                         "seed": seed, "progress": log is not None},
        })
        data = ArrayDataset(X, np.zeros(len(X), dtype=np.int64))
        trainer = Trainer(config, data, loss=OneClassObjective(torch.zeros(dim)),
                          log=log)
        center = self._initial_center(trainer.model, data.x)
        trainer.loss.center.copy_(center)
        trainer.fit()
        self.model_ = trainer.model.eval()
        self.model_config_ = spec
        self.center_ = center.numpy()
        self.n_samples_fit_ = n
        self.n_calibration_ = int(n_cal)
        # held-out normal rows score as new normal data does: the network never saw them
        self.offset_ = float(np.quantile(self._score(X_cal), float(self.contamination)))
        return self

    def _initial_center(self, model: nn.Module, x: Tensor) -> Tensor:
        model.train()  # batch statistics, as during training
        with torch.no_grad():
            outs = [model(x[s : s + 512]) for s in range(0, len(x), 512)]
        c = torch.cat(outs).mean(0)  # (dim,)
        eps = float(self.center_eps)
        small = c.abs() < eps
        c[small & (c < 0)] = -eps
        c[small & (c >= 0)] = eps
        return c

    def _score(self, X: np.ndarray) -> np.ndarray:
        z = embed_inputs(self.model_, X, batch_size=1024).double()  # (n, dim)
        return -(z - torch.from_numpy(self.center_).double()).pow(2).sum(1).numpy()

    def score_samples(self, X: Any) -> np.ndarray:
        """``(n,)`` normality scores: the negated squared distance to the centre."""
        check_is_fitted(self, "offset_")
        return self._score(self._inputs(X, reset=False))

    def decision_function(self, X: Any) -> np.ndarray:
        """``score_samples(X) - offset_``: negative for outliers."""
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """``+1`` for inliers, ``-1`` for outliers."""
        return np.where(self.decision_function(X) >= 0, 1, -1)

    # -- persistence --------------------------------------------------------------------
    def save(self, path: str | Path, *, model_sha256: str | None = None) -> Path:
        """Write the fitted detector to directory ``path`` atomically: the network's config
        and weights, the centre and the threshold (JSON + arrays, no pickle; see
        :mod:`dmlkit.apps.persistence`).

        ``model_sha256``: the fingerprint of the model that embedded the data it was fitted
        on (``dmlkit embed`` records it in its ``.npz``), recorded so that embeddings of
        another model can be refused (:func:`~dmlkit.apps.persistence.check_kit_model`)."""
        check_is_fitted(self, "offset_")
        arrays = {"center": self.center_, **module_arrays(self.model_, MODEL)}
        state = {"offset_": float(self.offset_), "model_config": self.model_config_,
                 "n_samples_fit_": int(self.n_samples_fit_),
                 "n_calibration_": int(self.n_calibration_)}
        return save_kit(path, self, arrays=arrays, state=state, count=self.n_samples_fit_,
                        model_sha256=model_sha256)

    @classmethod
    def load(cls, path: str | Path) -> DeepSVDD:
        """Load a detector saved by :meth:`save`.

        Raises :class:`~dmlkit.index.IndexFormatError` (a ``ValueError``) for a missing,
        corrupt or foreign directory, another kind of kit, or inconsistent saved state.
        """
        from dmlkit.index.io import IndexFormatError

        det, state, arrays = load_kit(path, cls)
        try:
            det.offset_ = float(state["offset_"])
            det.n_samples_fit_ = int(state["n_samples_fit_"])
            det.n_calibration_ = int(state.get("n_calibration_", 0))
            config, center = state["model_config"], arrays["center"]
        except (KeyError, TypeError, ValueError) as err:
            raise IndexFormatError(f"{path}: incomplete Deep SVDD state ({err})") from None
        if det.image_shape is not None:  # (JSON keeps tuples as lists)
            det.image_shape = tuple(det.image_shape)
        if (not math.isfinite(det.offset_) or center.shape != (int(det.dim),)
                or not isinstance(config, dict) or config.get("dim") != int(det.dim)):
            raise IndexFormatError(f"{path}: the saved centre and network do not match "
                                   f"dim={det.dim}")
        if "n_calibration_" not in state:
            warnings.warn(f"{path} was saved by an older dmlkit, which set the threshold on the "
                          "rows the network was trained on: it flags far more than "
                          f"contamination={det.contamination} of new normal data; fit the "
                          "detector again and save it (the threshold is now set on held-out "
                          "rows)", UserWarning, stacklevel=2)
        det.model_ = load_module(path, config, arrays, MODEL)
        det.model_config_ = config
        det.center_ = center
        return det


__all__ = ["DeepSVDD", "OneClassObjective"]
