"""The data loaders refuse what they cannot read faithfully, with one line naming the file:
held-out parts of another item shape, parts of sources without parts, class names that
are no strings, unreadable arrays; grey images keep one scale per folder; the public
loaders check their inputs as the config path does."""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

from dmlkit.config import Config
from dmlkit.data import load_dataset, load_idx, load_idx_dir, load_image_folder, load_npz
from dmlkit.data.load import class_names, data_config, split_dataset

Image = pytest.importorskip("PIL.Image")


def idx_bytes(a: np.ndarray, code: int = 0x08) -> bytes:
    big = a.astype(a.dtype.newbyteorder(">"))
    return bytes([0, 0, code, a.ndim]) + struct.pack(">" + "i" * a.ndim, *a.shape) + big.tobytes()


def write_idx(folder: Path, part: str, images: np.ndarray, labels: np.ndarray,
              label_code: int = 0x08) -> None:
    stem = "train" if part == "train" else "t10k"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}-images-idx3-ubyte").write_bytes(idx_bytes(images))
    (folder / f"{stem}-labels-idx1-ubyte").write_bytes(idx_bytes(labels, label_code))


def small_parts(folder: Path, test_side: int = 10) -> Path:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 10).astype(np.uint8)
    write_idx(folder, "train", (rng.random((40, 8, 8)) * 255).astype(np.uint8), y)
    write_idx(folder, "test", (rng.random((40, test_side, test_side)) * 255).astype(np.uint8), y)
    return folder


def xy(n_per: int = 5, classes: int = 4, d: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(n_per * classes, d)).astype(np.float32),
            np.repeat(np.arange(classes), n_per))


# --- a held-out part of another item shape ---------------------------------------------


def test_split_refuses_a_heldout_part_of_another_item_shape(tmp_path):
    folder = small_parts(tmp_path / "sz")
    with pytest.raises(ValueError, match=r"heldout_part 'test'") as info:
        split_dataset({"name": "idx", "path": str(folder), "heldout_part": "test"})
    text = str(info.value)
    assert "(1, 10, 10)" in text and "(1, 8, 8)" in text and "\n" not in text


def test_split_accepts_a_heldout_part_of_the_same_item_shape(tmp_path):
    folder = small_parts(tmp_path / "same", test_side=8)
    train, heldout = split_dataset({"name": "idx", "path": str(folder), "heldout_part": "test"})
    assert train.x.shape[1:] == heldout.x.shape[1:] == (1, 8, 8)


@pytest.mark.parametrize("model", [{"name": "mlp", "dim": 8, "hidden": [16]},
                                   {"name": "small_cnn", "dim": 8}])
def test_a_run_refuses_a_heldout_part_of_another_shape_before_training(tmp_path, model):
    from dmlkit.training import train_run

    folder = small_parts(tmp_path / "sz")
    cfg = Config.from_dict({
        "data": {"name": "idx", "path": str(folder), "heldout_part": "test"},
        "model": model, "loss": {"name": "triplet_margin"},
        "training": {"epochs": 1, "progress": False, "device": "cpu"}})
    with pytest.raises(ValueError, match=r"\(1, 10, 10\).*\(1, 8, 8\)|\(1, 8, 8\).*\(1, 10, 10\)"):
        train_run(cfg, tmp_path / "run", log=lambda *a: None)
    assert not (tmp_path / "run" / "model.pt").exists()


# --- float and 32-bit grey images ------------------------------------------------------


def test_float_grey_images_keep_their_stored_values(tmp_path):
    for cls, top in (("a", 100.0), ("b", 200.0)):
        (tmp_path / cls).mkdir()
        a = np.full((4, 4), top, np.float32)
        a[0, 0] = 50.0
        Image.fromarray(a, "F").save(tmp_path / cls / "0.tif")
    data = load_image_folder(tmp_path)
    assert data.x[0, 0, 1, 1].item() == pytest.approx(100.0)
    assert data.x[1, 0, 1, 1].item() == pytest.approx(200.0)
    assert data.x[0, 0, 0, 0].item() == data.x[1, 0, 0, 0].item() == pytest.approx(50.0)


def test_float_grey_images_in_unit_range_are_unchanged(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = np.linspace(0, 0.5, 16, dtype=np.float32).reshape(4, 4)
    Image.fromarray(a, "F").save(tmp_path / "a" / "0.tif")
    Image.fromarray(a * 2, "F").save(tmp_path / "b" / "0.tif")
    data = load_image_folder(tmp_path, color="rgb")
    assert data.x.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(data.x[0, 1].numpy(), a, atol=1e-6)
    np.testing.assert_allclose(data.x[1, 2].numpy(), a * 2, atol=1e-6)


def test_32_bit_grey_images_share_one_scale_per_folder(tmp_path):
    for cls in "ab":
        (tmp_path / cls).mkdir()
    a = np.full((4, 4), 200, np.int32)
    b = a.copy()
    b[0, 0] = 1000
    Image.fromarray(a, "I").save(tmp_path / "a" / "0.tif")
    Image.fromarray(b, "I").save(tmp_path / "b" / "0.tif")
    data = load_image_folder(tmp_path)
    assert data.x[0, 0, 1, 1].item() == pytest.approx(data.x[1, 0, 1, 1].item())
    assert data.x[0, 0, 1, 1].item() == pytest.approx(200 / 65535, abs=1 / 255)


def test_32_bit_grey_images_within_8_bits_are_scaled_by_255(tmp_path):
    for cls in "ab":
        (tmp_path / cls).mkdir()
        Image.fromarray(np.full((4, 4), 200, np.int32), "I").save(tmp_path / cls / "0.tif")
    data = load_image_folder(tmp_path)
    assert data.x[0, 0, 0, 0].item() == pytest.approx(200 / 255, abs=1e-6)


def test_32_bit_grey_images_beyond_16_bits_are_refused(tmp_path):
    for cls in "ab":
        (tmp_path / cls).mkdir()
        a = np.full((4, 4), 10, np.int32)
        a[0, 0] = 100_000
        Image.fromarray(a, "I").save(tmp_path / cls / "0.tif")
    with pytest.raises(ValueError, match=r"100000.*16-bit") as info:
        load_image_folder(tmp_path)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


# --- a part on a source without parts ---------------------------------------------------


def test_a_test_part_of_digits_is_refused():
    with pytest.raises(ValueError, match=r"data.part 'test'.*'digits' source has no parts"):
        load_dataset("digits:test")


def test_a_part_of_an_npz_file_is_refused(tmp_path):
    x, y = xy()
    np.savez(tmp_path / "d.npz", x=x, labels=y)
    with pytest.raises(ValueError, match=r"data.part 'test'.*'npz' source has no parts"):
        load_dataset({"name": "npz", "path": str(tmp_path / "d.npz"), "part": "test"})
    assert len(load_dataset({"name": "npz", "path": str(tmp_path / "d.npz")})) == 20


def test_training_refuses_a_part_of_digits():
    from dmlkit.config.schema import DataConfig
    from dmlkit.data.load import check_training_data

    with pytest.raises(ValueError, match=r"data.part 'all'"):
        check_training_data(DataConfig(name="digits", part="all"))
    check_training_data(DataConfig(name="digits"))


# --- class_names stored as bytes or not 1-D ---------------------------------------------


def test_bytes_class_names_are_decoded(tmp_path):
    x, y = xy()
    names = np.array([b"cat", b"dog", b"eel", b"fox"])
    np.savez(tmp_path / "b.npz", x=x, labels=y, class_names=names)
    assert load_npz(tmp_path / "b.npz").class_names == ["cat", "dog", "eel", "fox"]
    assert class_names(str(tmp_path / "b.npz")) == ["cat", "dog", "eel", "fox"]


@pytest.mark.parametrize("names", [np.array("cats"), np.array([["a", "b"], ["c", "d"]])])
def test_class_names_not_1d_are_refused_naming_the_file(tmp_path, names):
    x, y = xy()
    np.savez(tmp_path / "s.npz", x=x, labels=y, class_names=names)
    with pytest.raises(ValueError, match=r"s\.npz: 'class_names' .*1-D"):
        load_npz(tmp_path / "s.npz")


# --- only the arrays needed are read ------------------------------------------------------


def test_an_unused_object_array_is_ignored(tmp_path):
    x, y = xy()
    np.savez(tmp_path / "m.npz", x=x, labels=y, meta=np.array([{"source": "cam1"}], dtype=object))
    assert len(load_npz(tmp_path / "m.npz")) == 20
    assert len(load_dataset(str(tmp_path / "m.npz"))) == 20


def test_object_class_names_say_to_convert_with_astype_str(tmp_path):
    x, y = xy()
    names = np.array(["cat", "dog", "eel", "fox"], dtype=object)
    np.savez(tmp_path / "o.npz", x=x, labels=y, class_names=names)
    with pytest.raises(ValueError, match=r"o\.npz: 'class_names'.*\.astype\(str\)"):
        load_npz(tmp_path / "o.npz")


# --- PATH:part ----------------------------------------------------------------------------


def test_an_idx_folder_whose_name_holds_a_colon_loads(tmp_path):
    folder = small_parts(tmp_path / "my:idx", test_side=8)
    cfg = data_config(str(folder))
    assert cfg.name == "idx" and Path(cfg.path) == folder and cfg.part == "train"
    assert len(load_dataset(str(folder))) == 40


def test_an_idx_folder_with_a_part_suffix_reads_that_part(tmp_path):
    folder = small_parts(tmp_path / "idx", test_side=10)
    cfg = data_config(f"{folder}:test")
    assert cfg.name == "idx" and Path(cfg.path) == folder and cfg.part == "test"
    assert load_dataset(f"{folder}:test").x.shape[1:] == (1, 10, 10)


def test_an_unknown_suffix_is_part_of_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"neither a known dataset"):
        data_config(str(tmp_path / "nothing:idx"))


# --- IDX float labels ---------------------------------------------------------------------


def test_idx_non_integer_float_labels_are_refused(tmp_path):
    images = (np.random.default_rng(0).random((6, 8, 8)) * 255).astype(np.uint8)
    labels = np.array([0.5, 0.9, 1.2, 1.7, 2.5, 2.99], np.float32)
    write_idx(tmp_path, "train", images, labels, label_code=0x0D)
    with pytest.raises(ValueError, match=r"labels-idx1-ubyte.*non-integer"):
        load_idx_dir(tmp_path)


def test_idx_whole_number_float_labels_are_accepted(tmp_path):
    images = (np.random.default_rng(0).random((6, 8, 8)) * 255).astype(np.uint8)
    write_idx(tmp_path, "train", images, np.array([0, 0, 1, 1, 2, 2], np.float32), 0x0D)
    assert load_idx_dir(tmp_path).labels.tolist() == [0, 0, 1, 1, 2, 2]


# --- the public loaders check their inputs --------------------------------------------------


def test_load_npz_refuses_nan_rows_and_1d_inputs(tmp_path):
    x, y = xy()
    bad = x.copy()
    bad[3, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=bad, labels=y)
    np.savez(tmp_path / "one.npz", x=x[:, 0], labels=y)
    with pytest.raises(ValueError, match=r"nan\.npz: 1 of 20 items hold NaN.*row 3"):
        load_npz(tmp_path / "nan.npz")
    with pytest.raises(ValueError, match=r"one\.npz: x has shape \(20,\)"):
        load_npz(tmp_path / "one.npz")


def test_load_npz_warns_once_about_large_inputs_on_either_path(tmp_path):
    x, y = xy()
    np.savez(tmp_path / "big.npz", x=x * 1e5, labels=y)
    for load in (lambda: load_npz(tmp_path / "big.npz"),
                 lambda: load_dataset(str(tmp_path / "big.npz"))):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load()
        assert [str(w.message) for w in caught if "|x|" in str(w.message)].__len__() == 1


def test_load_idx_and_image_folder_check_their_inputs(tmp_path):
    images = np.full((4, 2, 2), 7, np.int32)
    images[1, 0, 0] = 100_000
    (tmp_path / "i").mkdir()
    (tmp_path / "i" / "x").write_bytes(idx_bytes(images, 0x0C))
    (tmp_path / "i" / "y").write_bytes(idx_bytes(np.array([0, 0, 1, 1], np.uint8)))
    with pytest.warns(UserWarning, match=r"\|x\| = 1e\+05"):
        load_idx(tmp_path / "i" / "x", tmp_path / "i" / "y")
    for cls in "ab":
        (tmp_path / "f" / cls).mkdir(parents=True)
        Image.fromarray(np.full((2, 2), 3e4, np.float32), "F").save(tmp_path / "f" / cls / "0.tif")
    with pytest.warns(UserWarning, match=r"\|x\| = 3e\+04"):
        load_image_folder(tmp_path / "f")


# --- values beyond float32 ------------------------------------------------------------------


def test_values_beyond_float32_range_are_named_as_such(tmp_path):
    x, y = xy()
    np.savez(tmp_path / "huge.npz", x=x.astype(np.float64) * 1e300, labels=y)
    for load in (lambda: load_npz(tmp_path / "huge.npz"),
                 lambda: load_dataset(str(tmp_path / "huge.npz"))):
        with pytest.raises(ValueError, match=r"huge\.npz: .*exceed float32's range") as info:
            load()
        assert "NaN" not in str(info.value)


# --- symlinked sub-folders ----------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlinked_sub_folders_of_a_class_are_read_without_looping(tmp_path):
    root, extra = tmp_path / "root", tmp_path / "extra"
    for cls in "ab":
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / cls / f"{i}.png")
    extra.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(extra / f"{i}.png")
    os.symlink(extra, root / "a" / "more")
    os.symlink(root / "a", root / "a" / "loop")  # a link to its own folder
    data = load_image_folder(root)
    assert data.labels.tolist() == [0] * 5 + [1] * 2


# --- ~ in data.path -------------------------------------------------------------------------


def test_a_home_relative_data_path_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    x, y = xy()
    np.savez(tmp_path / "named.npz", x=x, labels=y)
    assert len(load_dataset({"name": "npz", "path": "~/named.npz"})) == 20
    assert len(load_dataset("~/named.npz")) == 20
    train, heldout = split_dataset({"name": "npz", "path": "~/named.npz"})
    assert len(train) + len(heldout) == 20


def test_a_run_config_with_a_home_relative_data_path_reads_it(tmp_path, monkeypatch):
    from dmlkit.training.run import build_splits

    monkeypatch.setenv("HOME", str(tmp_path))
    x, y = xy()
    np.savez(tmp_path / "named.npz", x=x, labels=y)
    cfg = Config.from_dict({"data": {"name": "npz", "path": "~/named.npz"},
                            "model": {"name": "mlp", "dim": 8, "hidden": [16]}})
    train, heldout = build_splits(cfg, for_training=True)
    assert len(train) + len(heldout) == 20
