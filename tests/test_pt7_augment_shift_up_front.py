"""``data.augment_shift`` of at least the images' side is refused where the augmentation
is built, before training starts (no run directory left behind), naming the setting."""

from __future__ import annotations

import pytest
import torch

from dmlkit.config.schema import Config
from dmlkit.data.augment import AugmentedDataset, check_augment_shape
from dmlkit.data.dataset import ArrayDataset


def test_the_check_names_the_setting_and_the_side():
    with pytest.raises(ValueError, match=r"data.augment_shift \(8\) must be smaller than the "
                                         r"images' side 8 \(images 1x8x10\)"):
        check_augment_shape(8, (1, 8, 10))
    check_augment_shape(7, (1, 8, 10))


def test_building_the_augmentation_refuses_it():
    data = ArrayDataset(torch.rand(4, 1, 8, 8), torch.arange(4))
    with pytest.raises(ValueError, match="data.augment_shift"):
        AugmentedDataset(data, shift=8)
    assert AugmentedDataset(data, shift=7).get_batch([0, 1])[0].shape == (2, 1, 8, 8)


def test_a_run_with_it_stops_before_writing_its_directory(tmp_path):
    from dmlkit.training import train_run

    cfg = Config.from_dict({
        "name": "shift", "data": {"name": "digits", "max_per_class": 2,
                                  "max_heldout_per_class": 1, "augment_shift": 8},
        "model": {"name": "small_cnn", "dim": 4, "width": 4},
        "loss": {"name": "multi_similarity"},
        "training": {"epochs": 1, "batch_size": 20, "seed": 0, "progress": False}})
    with pytest.raises(ValueError, match=r"data.augment_shift \(8\)"):
        train_run(cfg, tmp_path / "run", log=lambda _m: None)
    assert not (tmp_path / "run").exists()
