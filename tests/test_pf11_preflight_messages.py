"""Messages of the checks made before any epoch: an error of a loss on hierarchical
labels blames the labels only when the loss cannot take their kind; an embedding-size
mismatch names the loss's own parameter and offers to leave it out only where the model
fills it in; the offline hard-negative sampler names which condition its data misses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from dmlkit.config import Config
from dmlkit.samplers import OfflineHardNegativeSampler
from dmlkit.training import train_run


def _quiet(*_args: object) -> None:
    return None


def _hierarchical_npz(path):
    """Digits 0-5 with (n, 2) labels: (super-class t // 2, class t)."""
    digits = load_digits()
    keep = digits.target < 6
    x = digits.data[keep][:120].astype(np.float32)
    t = digits.target[keep][:120]
    np.savez(path, x=x, labels=np.stack([t // 2, t], 1).astype(np.int64))
    return path


def _config(data, loss, sampler) -> Config:
    return Config.from_dict({
        "name": "pf", "data": data,
        "model": {"name": "mlp", "dim": 16, "hidden": [32]},
        "loss": loss, "sampler": sampler,
        "training": {"epochs": 1, "seed": 0, "progress": False, "num_threads": 1},
    })  # fmt: skip


def _hierarchical(tmp_path, loss) -> Config:
    data = {"name": "npz", "path": str(_hierarchical_npz(tmp_path / "h.npz"))}
    return _config(
        data, loss, {"name": "hierarchical", "m": 4, "classes_per_super": 2, "batch_size": 16}
    )


def _digits(loss) -> Config:
    return _config(
        {"name": "digits", "max_per_class": 12},
        loss,
        {"name": "m_per_class", "m": 4, "batch_size": 24},
    )


def _refusal(cfg: Config, run) -> str:
    with pytest.raises(ValueError) as err:
        train_run(cfg, run, log=_quiet)
    message = str(err.value)
    assert "\n" not in message
    assert not (run / "model.pt").exists()
    return message


@pytest.mark.parametrize("margins", [[0.3, 0.2, 0.1], [0.3]])
def test_a_loss_setting_error_on_hierarchical_labels_names_the_setting(tmp_path, margins):
    cfg = _hierarchical(tmp_path, {"name": "hierarchical_triplet", "margins": margins})
    message = _refusal(cfg, tmp_path / "run")
    assert message.startswith(
        f"loss 'hierarchical_triplet' failed on a first batch of this data: margins has "
        f"{len(margins)} values but the labels have 2 levels; see its documentation"
    )
    assert "cannot train on this data's hierarchical labels" not in message


def test_a_hierarchical_loss_with_matching_margins_trains(tmp_path):
    cfg = _hierarchical(tmp_path, {"name": "hierarchical_triplet", "margins": [0.3, 0.2]})
    train_run(cfg, tmp_path / "run", log=_quiet)
    assert (tmp_path / "run" / "model.pt").exists()


@pytest.mark.parametrize("loss", ["arcface", "proxy_anchor"])
def test_a_loss_that_needs_one_class_per_item_blames_hierarchical_labels(tmp_path, loss):
    message = _refusal(_hierarchical(tmp_path, {"name": loss}), tmp_path / "run")
    assert message.startswith(
        f"loss {loss!r} cannot train on this data's hierarchical labels (n, L): "
    )
    assert "classifier and proxy losses need one class per item" in message


def test_p2s_grad_size_mismatch_names_descriptors_dim(tmp_path):
    message = _refusal(_digits({"name": "p2s_grad", "descriptors_dim": 8}), tmp_path / "run")
    assert message == (
        "embedding size mismatch: loss 'p2s_grad' has descriptors_dim=8, but model 'mlp' "
        "gives embeddings of dim 16; set descriptors_dim to 16, or leave it out of the loss "
        "config to take it from the model"
    )
    train_run(_digits({"name": "p2s_grad"}), tmp_path / "left_out", log=_quiet)
    assert (tmp_path / "left_out" / "model.pt").exists()


def test_manifold_size_mismatch_and_l_left_out_takes_the_model_dim(tmp_path):
    message = _refusal(_digits({"name": "manifold", "l": 8, "K": 10}), tmp_path / "run")
    assert message == (
        "embedding size mismatch: loss 'manifold' has l=8, but model 'mlp' gives "
        "embeddings of dim 16; set l to 16, or leave it out of the loss config to take it "
        "from the model"
    )
    train_run(_digits({"name": "manifold", "K": 10}), tmp_path / "left_out", log=_quiet)
    assert (tmp_path / "left_out" / "model.pt").exists()


class _Data:
    """Twelve items of four features with the given labels."""

    def __init__(self, labels: list[int]) -> None:
        self.labels = torch.tensor(labels)
        self.x = torch.randn(len(labels), 4, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.labels)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (
            [0] * 12,
            r"^sampler offline_hard_negative cannot mine a triplet: the data has one "
            r"class \(label 0, 12 items\); a triplet needs a negative of another class",
        ),
        (
            list(range(12)),
            r"^sampler offline_hard_negative cannot mine a triplet: each of the "
            r"12 classes has one item; a triplet needs an anchor and a positive "
            r"of one class",
        ),
    ],
)
def test_offline_hard_negative_names_the_condition_its_data_misses(labels, match):
    with pytest.raises(ValueError, match=match) as err:
        OfflineHardNegativeSampler(_Data(labels), nn.Linear(4, 3), batch_size=6, k=2)
    assert "\n" not in str(err.value)


def test_offline_hard_negative_mines_with_two_classes_and_one_pair():
    labels = [0, 0] + list(range(1, 11))  # one class of two items, ten of one item
    sampler = OfflineHardNegativeSampler(_Data(labels), nn.Linear(4, 3), batch_size=6, k=2)
    batch = next(iter(sampler))  # (the two triplets of anchors 0 and 1)
    assert {0, 1} <= set(batch) and len(batch) <= 6
