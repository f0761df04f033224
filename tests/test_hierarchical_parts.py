"""Hierarchical (n, L) labels read from an IDX dataset's official parts, and an .npz's
class_names beside (n, L) labels."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from dmlkit.data.load import split_dataset, training_dataset
from dmlkit.data.npz import load_npz


def _write_idx(path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, arr.ndim]))
        f.write(struct.pack(">" + "i" * arr.ndim, *arr.shape))
        f.write(arr.astype(np.uint8).tobytes())


@pytest.fixture
def idx_parts(tmp_path):
    """An IDX folder: 40 training and 20 test 4 x 4 images, labels (coarse, fine)."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        fine = np.arange(n) % 4
        labels = np.stack([fine // 2, fine], axis=1)  # (n, 2)
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 4, 4)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels + (100 if n == 20 else 0))
    return tmp_path


def test_hierarchical_labels_hold_out_the_official_test_part(idx_parts):
    cfg = {"name": "idx", "path": str(idx_parts), "part": "train", "heldout_part": "test"}
    train, heldout = split_dataset(cfg)
    assert len(train) == 40 and len(heldout) == 20
    assert int(heldout.labels.min()) >= 100  # the test part's items, not training ones
    assert tuple(heldout.labels.shape) == (20, 2)
    assert len(training_dataset(cfg)) == 40


def test_hierarchical_labels_without_a_heldout_part_split_the_training_part(idx_parts):
    train, heldout = split_dataset({"name": "idx", "path": str(idx_parts),
                                    "test_fraction": 0.5})
    assert len(train) + len(heldout) == 40
    assert int(heldout.labels.max()) < 100


def test_hierarchical_parts_of_other_depths_are_refused(tmp_path):
    rng = np.random.default_rng(1)
    _write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 255, (8, 4, 4)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.stack([np.arange(8) % 2] * 2, 1))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 255, (8, 4, 4)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.stack([np.arange(8) % 2] * 3, 1))
    with pytest.raises(ValueError, match="labels of one hierarchy"):
        split_dataset({"name": "idx", "path": str(tmp_path), "heldout_part": "test"})


def test_npz_class_names_beside_hierarchical_labels_warn_they_are_unused(tmp_path):
    path = tmp_path / "h.npz"
    np.savez(path, x=np.random.default_rng(2).normal(size=(6, 3)),
             labels=np.array([[0, 7], [0, 7], [1, 9], [1, 9], [1, 8], [1, 8]]),
             class_names=np.array(["only-one-name"]))
    with pytest.warns(UserWarning, match="'class_names' is not used"):
        data = load_npz(path)
    assert data.class_names is None


def test_class_ids_beside_a_hierarchical_heldout_part_are_refused(tmp_path):
    rng = np.random.default_rng(3)
    _write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 255, (8, 4, 4)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(8) % 2)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 255, (8, 4, 4)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.stack([np.arange(8) % 2] * 2, 1))
    with pytest.raises(ValueError, match="labels of one hierarchy"):
        split_dataset({"name": "idx", "path": str(tmp_path), "heldout_part": "test"})
