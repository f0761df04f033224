"""Inputs at the edges of what the loaders take: an empty data file, an IDX file cut
inside its header, colour jitter asked of images that are neither grey nor RGB, and a
sampler that asks for more classes than ``training.val_classes`` left to train on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmlkit.config import Config
from dmlkit.data.augment import AugmentedDataset
from dmlkit.data.dataset import ArrayDataset
from dmlkit.data.idx import read_idx
from dmlkit.data.load import load_dataset
from dmlkit.training import train_run


def _quiet(_message: str) -> None:
    pass


def test_an_empty_npz_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "empty.npz"
    np.savez(path, x=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64))
    cfg = Config.from_dict({"data": {"name": "npz", "path": str(path)}}).data
    with pytest.raises(ValueError, match="empty.npz holds no items") as err:
        load_dataset(cfg)
    assert "concatenate" not in str(err.value)


def test_an_idx_file_cut_inside_its_header_is_named(tmp_path):
    path = tmp_path / "cut-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00")  # 3 dims: 16 bytes due
    with pytest.raises(ValueError, match=r"cut-idx3-ubyte is cut inside its header: 3 "
                                         r"dimensions need 16 bytes, the file holds 10"):
        read_idx(path)


def test_a_huge_idx_header_counts_its_bytes_without_overflow(tmp_path):
    path = tmp_path / "huge"
    dim = (2**31 - 1).to_bytes(4, "big")
    path.write_bytes(b"\x00\x00\x08\x03" + dim * 3 + b"\x00" * 8)
    with pytest.raises(ValueError) as err:
        read_idx(path)
    assert f"{(2**31 - 1) ** 3} bytes of data" in str(err.value)


@pytest.mark.parametrize("channels", [2, 4])
def test_colour_jitter_is_refused_for_images_neither_grey_nor_rgb(channels):
    data = ArrayDataset(torch.rand(8, channels, 6, 6), torch.arange(8) % 2)
    with pytest.raises(ValueError, match=f"the data has {channels} channels"):
        AugmentedDataset(data, policy={"brightness": 0.5})
    # the geometric settings apply to any channels
    moved = AugmentedDataset(data, policy={"hflip": True}, seed=0)
    assert moved.get_batch([0, 1, 2])[0].shape == (3, channels, 6, 6)


@pytest.mark.parametrize("channels", [1, 3])
def test_colour_jitter_still_changes_grey_and_rgb_images(channels):
    data = ArrayDataset(torch.rand(8, channels, 6, 6) * 0.5 + 0.25, torch.arange(8) % 2)
    x, _ = AugmentedDataset(data, policy={"brightness": 0.5}, seed=0).get_batch([0, 1, 2])
    assert not torch.allclose(x, data.x[:3])


def test_a_sampler_refused_after_val_classes_says_what_validation_held_out(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 12)
    x = rng.normal(size=(len(labels), 6)).astype(np.float32) + labels[:, None]
    np.savez(tmp_path / "d.npz", x=x, labels=labels)
    config = Config.from_dict({
        "data": {"name": "npz", "path": str(tmp_path / "d.npz"), "split": "classes",
                 "train_classes": [0, 1, 2, 3], "seed": 0},
        "model": {"name": "mlp", "dim": 4},
        "loss": {"name": "triplet_margin", "margin": 0.2},
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": 16},
        "training": {"epochs": 1, "seed": 0, "num_threads": 1, "val_classes": 0.5}})  # fmt: skip
    with pytest.raises(ValueError) as err:
        train_run(config, tmp_path / "run", log=_quiet)
    message = str(err.value)
    assert "4 classes per batch" in message and "only 2 classes" in message
    assert ("training.val_classes held out 2 of the 4 training classes for validation, "
            "leaving 2 to train on") in message
    assert not (tmp_path / "run").exists()
