"""Bring-your-own-data refusals: numbered class folders, ``.npz`` class names and row
counts, IDX files that do not fit, mixed image sizes, ``data.image_size`` on arrays."""

from __future__ import annotations

import gzip
import re
import struct

import numpy as np
import pytest

from dmlkit.data.dataset import ArrayDataset
from dmlkit.data.load import check_training_data, load_dataset, split_dataset, training_dataset
from dmlkit.data.splits import class_ids, class_split

pil = pytest.importorskip("PIL.Image")


def _numbered(root, count=12, per=2, empty=()):
    """Class folders ``0`` ... ``count - 1`` of small grey images (each folder's images
    hold its number as pixel value), plus ``empty`` folders without images."""
    for c in range(count):
        (root / str(c)).mkdir(parents=True)
        for i in range(per):
            pil.fromarray(np.full((8, 8), c * 10 + i, np.uint8)).save(root / str(c) / f"{i}.png")
    for name in empty:
        (root / name).mkdir()
    return root


# 1. numbered class folders ----------------------------------------------------------------


@pytest.mark.parametrize("read", [split_dataset, training_dataset])
def test_integers_that_pick_other_numbered_folders_are_refused(tmp_path, read):
    root = _numbered(tmp_path / "f")
    cfg = {"name": "image_folder", "path": str(root), "split": "classes",
           "train_classes": ["0", "1", "2", "3", "4", "5"], "test_classes": [6, 7]}
    words = ("data.test_classes [6, 7]: class ids follow the sorted folder names (0, 1, 10, "
             "11, 2, ...), so id 6 is the folder '4', id 7 is the folder '5'; to mean "
             'folders by name, write the names as strings, e.g. test_classes: ["6", "7"]')
    with pytest.raises(ValueError, match=re.escape(words)):
        read(cfg)
    with pytest.raises(ValueError, match=r"data.train_classes \[0, 1, 2, 3\].*id 2 is the "
                                         r"folder '10'"):
        read({**cfg, "train_classes": [0, 1, 2, 3], "test_classes": ["6"]})


def test_numbered_folders_named_as_strings_are_the_folders(tmp_path):
    root = _numbered(tmp_path / "f")
    cfg = {"name": "image_folder", "path": str(root), "split": "classes",
           "train_classes": [str(c) for c in range(6)],
           "test_classes": [str(c) for c in range(6, 12)]}
    train, heldout = split_dataset(cfg)
    folders = {n for i, n in enumerate(train.class_names) if i in train.classes}
    assert folders == {str(c) for c in range(6)}
    assert {n for i, n in enumerate(heldout.class_names) if i in heldout.classes} == {
        str(c) for c in range(6, 12)}
    assert sorted(np.unique(np.rint(heldout.x.numpy() * 255) // 10).tolist()) == list(
        range(6, 12))  # the pixels of folders 6 ... 11
    assert training_dataset(cfg).classes == train.classes


def test_ids_whose_folder_has_their_number_pass(tmp_path):
    root = _numbered(tmp_path / "f")
    cfg = {"name": "image_folder", "path": str(root), "split": "classes",
           "train_classes": [0, 1], "test_classes": ["6", "7"]}
    assert split_dataset(cfg)[0].class_names[:2] == ["0", "1"]


def test_a_number_that_is_a_folder_but_no_id_is_refused(tmp_path):
    root = tmp_path / "f"
    for c in range(1, 13):  # folders 1 ... 12: ids 0 ... 11
        (root / str(c)).mkdir(parents=True)
        pil.fromarray(np.zeros((8, 8), np.uint8)).save(root / str(c) / "a.png")
    cfg = {"name": "image_folder", "path": str(root), "split": "classes",
           "train_classes": ["1", "2"], "test_classes": [12]}
    with pytest.raises(ValueError, match=r"12 is no class id \(the folder '12' is id 3\).*"
                                         r'test_classes: \["12"\]'):
        split_dataset(cfg)


def test_training_val_classes_with_a_name_are_checked_alike():
    names = [str(c) for c in sorted(range(12), key=str)]
    data = ArrayDataset(np.zeros((12, 1)), np.arange(12), names,
                        [f"{n}/a.png" for n in names])
    with pytest.raises(ValueError, match=r"training.val_classes \['1', 2\].*id 2 is the "
                                         r"folder '10'.*val_classes: \[\"1\", \"2\"\]"):
        class_ids(data, ["1", 2], "training.val_classes")


def test_training_val_classes_of_integers_only_are_checked_too():
    from dmlkit.data.class_folds import holdout_classes

    names = [str(c) for c in sorted(range(12), key=str)]
    data = ArrayDataset(np.zeros((12, 1)), np.arange(12), names,
                        [f"{n}/a.png" for n in names])
    with pytest.raises(ValueError, match=r"training.val_classes \[2, 3\].*id 2 is the "
                                         r"folder '10'"):
        holdout_classes(data, [2, 3])
    train, val = holdout_classes(data, [0, 1])  # ids whose folders bear their number
    assert sorted(val.classes) == [0, 1] and len(train.classes) == 10


def test_numbered_class_names_of_arrays_are_ids_as_given():
    # an .npz's class_names are given per label: no folders, nothing to mistake
    data = ArrayDataset(np.zeros((12, 1)), np.arange(12), [str(c + 1) for c in range(12)])
    assert class_ids(data, [2, 3], "train_classes") == [2, 3]


# 2. .npz class_names indexed by label -----------------------------------------------------


def test_npz_class_names_shorter_than_its_labels_are_refused(tmp_path):
    x = np.zeros((8, 3), np.float32)
    np.savez(tmp_path / "d.npz", x=x, labels=np.array([3, 17, 42, 5] * 2),
             class_names=np.array(["a", "b", "c", "fish"]))
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path / 'd.npz'}: 'class_names' holds 4 names, but labels reach 42; "
            "class_names are indexed by label")):
        load_dataset(str(tmp_path / "d.npz"))
    np.savez(tmp_path / "e.npz", x=x, labels=np.arange(8), class_names=np.arange(5).astype(str))
    with pytest.raises(ValueError, match="holds 5 names, but labels reach 7"):
        load_dataset(str(tmp_path / "e.npz"))
    for count in (8, 10):  # one per label, or more (classes without items)
        np.savez(tmp_path / "f.npz", x=x, labels=np.arange(8),
                 class_names=np.arange(count).astype(str))
        assert len(load_dataset(str(tmp_path / "f.npz")).class_names) == count


# 3. images of many sizes ------------------------------------------------------------------


def test_images_of_many_sizes_show_a_few_with_a_file_each(tmp_path):
    from dmlkit.data.image_folder import load_image_folder

    for c in range(2):
        (tmp_path / f"c{c}").mkdir()
        for i in range(30):
            pil.fromarray(np.zeros((10 + i, 12 + c), np.uint8)).save(
                tmp_path / f"c{c}" / f"{i:02d}.png")
    pil.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "c1" / "x.png")
    with pytest.raises(ValueError) as err:
        load_image_folder(tmp_path)
    text = str(err.value)
    assert len(text) < 600 and "\n" not in text
    assert text.startswith(f"images under {tmp_path} differ in size [(1, 10, 12), "
                           "(1, 10, 13), (1, 11, 12), (1, 11, 13) and 56 more]; set "
                           "data.image_size")
    assert (f"one image of each size (under {tmp_path}): c0/00.png of shape (1, 10, 12), "
            "c1/00.png of shape (1, 10, 13), c0/01.png of shape (1, 11, 12)") in text


# 4. arrays of other lengths name their files ----------------------------------------------


def test_npz_arrays_of_other_lengths_name_the_file_and_arrays(tmp_path):
    np.savez(tmp_path / "d.npz", feats=np.zeros((240, 3), np.float32), y=np.zeros(235, int))
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path / 'd.npz'}: 'feats' has 240 rows but 'y' has 235")):
        load_dataset({"name": "npz", "path": str(tmp_path / "d.npz"), "x_key": "feats",
                      "labels_key": "y"})
    np.savez(tmp_path / "n.npz", x=np.zeros((4, 3), np.float32), labels=np.array([0, 1, -1, 0]))
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'n.npz'}: labels must be >= 0")):
        load_dataset(str(tmp_path / "n.npz"))


def _idx(path, values: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, values.ndim)
    header += b"".join(struct.pack(">i", s) for s in values.shape)
    path.write_bytes(gzip.compress(header + values.astype(np.uint8).tobytes()))


def test_idx_files_of_other_lengths_name_both_files(tmp_path):
    images = tmp_path / "train-images-idx3-ubyte.gz"
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    _idx(images, np.zeros((240, 4, 4)))
    _idx(labels, np.zeros(235))
    with pytest.raises(ValueError, match=re.escape(
            f"{images} holds 240 images but {labels} holds 235 labels")):
        load_dataset(str(tmp_path))


# 5. data.image_size where nothing reads it ------------------------------------------------


@pytest.mark.parametrize("source", ["npz", "idx", "digits"])
def test_image_size_of_a_source_that_does_not_resize_is_refused(tmp_path, source):
    from dmlkit.config.schema import DataConfig

    path = {"npz": str(tmp_path / "d.npz"), "idx": str(tmp_path), "digits": None}[source]
    cfg = DataConfig(name=source, path=path, image_size=32)
    with pytest.raises(ValueError, match=re.escape(
            f"data.image_size 32 resizes images read from an image folder (data.name: "
            f"image_folder), but a {source!r} source's items are used as stored; remove "
            "data.image_size and let the model resize (e.g. model.resolution")):
        check_training_data(cfg)
    check_training_data(DataConfig(name=source, path=path))  # without it: fine


def test_a_run_on_npz_with_image_size_stops_before_training(tmp_path):
    from dmlkit.config import Config
    from dmlkit.training.run import training_split

    np.savez(tmp_path / "d.npz", x=np.zeros((8, 1, 8, 8), np.float32),
             labels=np.repeat(np.arange(4), 2))
    cfg = Config.from_dict({"data": {"name": "npz", "path": str(tmp_path / "d.npz"),
                                     "image_size": 32},
                            "model": {"name": "small_cnn"}, "loss": {"name": "contrastive"}})
    with pytest.raises(ValueError, match="data.image_size 32 resizes images read from an "
                                         "image folder"):
        training_split(cfg)


def test_image_size_of_an_image_folder_passes(tmp_path):
    from dmlkit.config.schema import DataConfig

    check_training_data(DataConfig(name="image_folder", path=str(tmp_path), image_size=16))


# 6. messages ------------------------------------------------------------------------------


@pytest.mark.parametrize("read", [split_dataset, training_dataset])
def test_an_empty_class_folder_is_refused_by_name(tmp_path, read):
    root = _numbered(tmp_path / "f", count=4, empty=("empty",))
    cfg = {"name": "image_folder", "path": str(root), "split": "classes",
           "train_classes": ["0", "1"], "test_classes": ["empty"]}
    with pytest.raises(ValueError, match=re.escape(
            f"1 class folder(s) of {root} hold no images ({root / 'empty'}); every sub-folder "
            "is a class: add its images")):
        read(cfg)


def test_a_class_without_items_in_arrays_says_so():
    data = ArrayDataset(np.zeros((4, 1)), [0, 0, 1, 1], ["a", "b", "c"])
    with pytest.raises(ValueError, match=re.escape(
            "data.test_classes [2 (c)] are not in the data: the class 'c' holds no items")):
        class_split(data, [0], [2])
    with pytest.raises(ValueError, match=r"data.train_classes and data.test_classes overlap"):
        class_split(data, [0], [0, 1])


def test_string_labels_in_an_npz_say_how_to_map_them(tmp_path):
    np.savez(tmp_path / "s.npz", x=np.zeros((4, 3), np.float32),
             labels=np.array(["cat", "dog", "cat", "bird"]))
    with pytest.raises(ValueError, match=re.escape(
            "'labels' must hold integer labels, got <U4; map class names to ids before "
            "saving: names, ids = np.unique(labels, return_inverse=True)")):
        load_dataset(str(tmp_path / "s.npz"))
