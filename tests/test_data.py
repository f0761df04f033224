"""Data loaders on generated files, clear errors, and splits."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from dmlkit.config import DataConfig
from dmlkit.data import (
    ArrayDataset,
    class_split,
    data_config,
    limit_per_class,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_image_folder,
    load_npz,
    read_idx,
    split_dataset,
    stratified_split,
)


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">f4"): 0x0D, np.dtype(">i4"): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    header += b"".join(struct.pack(">i", s) for s in array.shape)
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.fixture
def idx_dir(tmp_path):
    rng = np.random.default_rng(0)
    for part, n, compress in (("train", 30, True), ("t10k", 20, False)):
        images = rng.integers(0, 256, size=(n, 6, 5), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        gz = ".gz" if compress else ""
        write_idx(tmp_path / f"{part}-images-idx3-ubyte{gz}", images, compress)
        write_idx(tmp_path / f"{part}-labels-idx1-ubyte{gz}", labels, compress)
    return tmp_path


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_roundtrip(tmp_path, compress):
    for array in (
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.linspace(-1, 1, 6).astype(">f4").reshape(3, 2),
        np.array([5, -7, 1 << 20], dtype=">i4"),
    ):
        path = tmp_path / "a.idx"
        write_idx(path, array, compress)
        out = read_idx(path)
        assert out.shape == array.shape
        np.testing.assert_array_equal(out, array.astype(array.dtype.newbyteorder("=")))


def test_read_idx_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_idx(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">i", 10) + b"abc")
    with pytest.raises(ValueError, match="shape"):
        read_idx(short)


def test_idx_directory_and_parts(idx_dir):
    train = load_dataset({"name": "idx", "path": str(idx_dir)})
    assert train.x.shape == (30, 1, 6, 5) and train.x.dtype == torch.float32
    assert 0.0 <= float(train.x.min()) and float(train.x.max()) <= 1.0
    raw = read_idx(idx_dir / "train-images-idx3-ubyte.gz")
    torch.testing.assert_close(train.x[:, 0], torch.from_numpy(raw).float() / 255)
    assert train.labels.dtype == torch.int64 and train.labels.tolist()[:3] == [0, 1, 2]
    test = load_dataset({"name": "idx", "path": str(idx_dir), "part": "test"})
    both = load_dataset({"name": "idx", "path": str(idx_dir), "part": "all"})
    assert len(test) == 20 and len(both) == 50
    # a directory path as a spec string is recognized as IDX data
    assert len(load_dataset(str(idx_dir))) == 30


def test_fashion_mnist_missing_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist("train", directory=tmp_path)


def test_fashion_mnist_from_directory(idx_dir):
    data = load_fashion_mnist("test", directory=idx_dir)
    assert len(data) == 20 and data.class_names[9] == "Ankle boot"


def test_npz(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 5))
    y = np.arange(12) % 3
    np.savez(tmp_path / "d.npz", feats=x, y=y)
    data = load_dataset({"name": "npz", "path": str(tmp_path / "d.npz"), "x_key": "feats",
                         "labels_key": "y"})  # fmt: skip
    torch.testing.assert_close(data.x, torch.from_numpy(x).float())
    assert data.labels.tolist() == y.tolist()
    with pytest.raises(KeyError, match="arrays present"):
        load_npz(tmp_path / "d.npz")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_npz(tmp_path / "nope.npz")
    np.savez(tmp_path / "img.npz", x=np.full((4, 3, 3), 255, np.uint8), labels=np.arange(4))
    img = load_dataset(str(tmp_path / "img.npz"))
    assert img.x.shape == (4, 1, 3, 3) and float(img.x.max()) == 1.0


def test_unknown_format_and_missing_path(tmp_path):
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="unknown data format"):
        load_dataset(str(tmp_path / "data.csv"))
    with pytest.raises(FileNotFoundError, match="neither a known dataset"):
        load_dataset(str(tmp_path / "nothing_here"))
    with pytest.raises(ValueError, match="data.name"):
        DataConfig(name="cifar")
    with pytest.raises(ValueError, match="needs data.path"):
        DataConfig(name="npz")


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    pixels = {}
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            a = rng.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
            Image.fromarray(a).save(tmp_path / cls / f"{i}.png")
            pixels[(cls, i)] = a
    rgb = load_image_folder(tmp_path, color="rgb")
    assert rgb.x.shape == (6, 3, 4, 6) and rgb.class_names == ["cat", "dog"]
    assert rgb.labels.tolist() == [0, 0, 0, 1, 1, 1]
    expected = torch.from_numpy(pixels[("dog", 1)]).permute(2, 0, 1).float() / 255
    torch.testing.assert_close(rgb.x[4], expected)
    gray = load_dataset({"name": "image_folder", "path": str(tmp_path), "image_size": 8,
                         "color": "grayscale"})
    assert gray.x.shape == (6, 1, 8, 8)
    auto = load_dataset({"name": "image_folder", "path": str(tmp_path)})  # colour images
    torch.testing.assert_close(auto.x, rgb.x)
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_image_folder(tmp_path / "empty")


def test_digits():
    d = load_digits()
    assert d.x.shape == (1797, 1, 8, 8) and float(d.x.max()) == 1.0 and d.num_classes == 10


def test_array_dataset_validation():
    with pytest.raises(ValueError, match="rows"):
        ArrayDataset(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="1-D"):
        ArrayDataset(np.zeros((2, 2)), [[0], [1]])
    ds = ArrayDataset(np.zeros((3, 2)), [2, 0, 2])
    assert ds.num_classes == 2 and ds.labels.dtype == torch.int64 and len(ds) == 3


def _toy(n_per_class=10, classes=6):
    labels = np.repeat(np.arange(classes), n_per_class)
    return ArrayDataset(np.arange(len(labels), dtype=np.float32)[:, None], labels)


def test_class_split_disjoint():
    data = _toy()
    train, test = class_split(data, [0, 1, 2])
    assert set(train.labels.tolist()) == {0, 1, 2} and set(test.labels.tolist()) == {3, 4, 5}
    assert len(train) + len(test) == len(data)
    assert not set(train.x[:, 0].tolist()) & set(test.x[:, 0].tolist())
    with pytest.raises(ValueError, match="overlap"):
        class_split(data, [0, 1], [1, 2])
    with pytest.raises(ValueError, match="not in the data"):
        class_split(data, [0, 9])


def test_stratified_split_seeded():
    data = _toy()
    a_train, a_test = stratified_split(data, 0.3, seed=5)
    b_train, b_test = stratified_split(data, 0.3, seed=5)
    c_train, _ = stratified_split(data, 0.3, seed=6)
    assert torch.equal(a_train.x, b_train.x) and torch.equal(a_test.x, b_test.x)
    assert not torch.equal(a_train.x, c_train.x)
    assert not set(a_train.x[:, 0].tolist()) & set(a_test.x[:, 0].tolist())
    assert np.bincount(a_test.labels.numpy()).tolist() == [3] * 6


def test_split_dataset_and_caps(idx_dir):
    spec = {"name": "idx", "path": str(idx_dir), "heldout_part": "test", "split": "classes",
            "train_classes": [0, 1, 2, 3, 4], "max_per_class": 2}  # fmt: skip
    train, heldout = split_dataset(spec)
    assert set(train.labels.tolist()) == set(range(5))
    assert set(heldout.labels.tolist()) == set(range(5, 10)) and len(heldout) == 10
    assert np.bincount(train.labels.numpy()).max() == 2
    capped = limit_per_class(_toy(), 4, seed=0)
    assert np.bincount(capped.labels.numpy()).tolist() == [4] * 6
    assert data_config("fashion_mnist:test").part == "test"


def test_image_folder_skips_hidden_entries_and_scales_16_bit_grey(tmp_path):
    from PIL import Image

    from dmlkit.data.image_folder import load_image_folder

    grey16 = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    for name in ("a", "b", ".ipynb_checkpoints"):
        (tmp_path / name).mkdir()
        Image.fromarray(grey16).save(tmp_path / name / "x.png")
    (tmp_path / "a" / ".hidden").mkdir()
    Image.fromarray(grey16).save(tmp_path / "a" / ".hidden" / "y.png")
    data = load_image_folder(tmp_path, color="grayscale")
    assert data.class_names == ["a", "b"] and len(data.labels) == 2
    np.testing.assert_allclose(data.x[0, 0].numpy(), grey16 / 65535, atol=1 / 255)
