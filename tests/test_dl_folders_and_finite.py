"""Image folders refuse class folders without images (as audio folders do) and skip hidden
ones; NaN / infinite rows are named by the shared rule in few-shot classification, in
embedder output and in the inputs a run embeds; few-shot's settings follow the shared
numeric rule (a finite temperature)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from dmlkit.apps import FewShotClassifier
from dmlkit.data.image_folder import folder_images, load_image_folder
from dmlkit.data.load import load_dataset, split_dataset, training_dataset

pil = pytest.importorskip("PIL.Image")


def _folder(root, classes=("a", "b", "c"), per=2):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per):
            pil.fromarray(np.full((8, 8), 40 * i + 1, np.uint8)).save(root / c / f"{i}.png")
    return root


# -- image folders ----------------------------------------------------------------------


@pytest.mark.parametrize("read", [
    load_image_folder, folder_images, load_dataset,
    lambda root: split_dataset({"name": "image_folder", "path": str(root)}),
    lambda root: training_dataset({"name": "image_folder", "path": str(root), "split": "classes",
                                   "train_classes": ["a", "c"], "test_classes": ["d"]}),
])
def test_a_class_folder_without_images_is_refused_by_name(tmp_path, read):
    root = _folder(tmp_path / "f", ("a", "c", "d"))
    (root / "b").mkdir()  # an empty class folder between the others
    with pytest.raises(ValueError, match=re.escape(
            f"1 class folder(s) of {root} hold no images ({root / 'b'}); every sub-folder is "
            "a class: add its images (")) as err:
        read(root)
    assert "or remove the folder" in str(err.value) and "\n" not in str(err.value)


def test_a_class_folder_of_other_files_only_is_refused(tmp_path):
    root = _folder(tmp_path / "f")
    for name in ("notes", "scans"):
        (root / name).mkdir()
    (root / "notes" / "readme.txt").write_text("not an image")
    (root / "scans" / "x.heic").write_bytes(b"\0" * 8)  # a format not read
    (root / "scans" / ".hidden.png").write_bytes(b"\0" * 8)  # hidden files do not count
    with pytest.raises(ValueError, match=r"2 class folder\(s\) of .* hold no images \(.*notes, "
                                         r".*scans\); .*\.png.*or remove the folder"):
        load_image_folder(root)


def test_hidden_folders_and_files_are_no_classes(tmp_path):
    root = _folder(tmp_path / "f", ("a", "b"))
    (root / ".ipynb_checkpoints").mkdir()
    pil.fromarray(np.zeros((8, 8), np.uint8)).save(root / ".ipynb_checkpoints" / "0.png")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    data = load_image_folder(root)
    assert data.class_names == ["a", "b"]
    assert data.labels.tolist() == [0, 0, 1, 1]


def test_a_class_folder_of_unreadable_images_names_the_file(tmp_path):
    root = _folder(tmp_path / "f", ("a", "b"))
    (root / "c").mkdir()
    (root / "c" / "0.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"cannot read image .*c/0\.png .*corrupt or not an "
                                         r"image: replace or remove it"):
        load_image_folder(root)


# -- few-shot settings and non-finite rows ------------------------------------------------


def _support():
    rng = np.random.default_rng(0)
    return rng.normal(size=(20, 4)), np.repeat([0, 1], 10)


@pytest.mark.parametrize("value", [np.inf, True, "10", np.nan, 0.0, -1.0])
def test_few_shot_temperature_must_be_a_finite_positive_number(value):
    x, y = _support()
    with pytest.raises(ValueError, match=r"^temperature must be a real number in \(0, inf\), "
                                         r"got .*\(\w+\)$"):
        FewShotClassifier(temperature=value).fit(x, y)


def test_few_shot_takes_numpy_settings():
    x, y = _support()
    clf = FewShotClassifier(method="knn", n_neighbors=np.int64(2),
                            temperature=np.float32(2.0)).fit(x, y)
    assert clf.temperature_ == 2.0 and np.isfinite(clf.predict_proba(x)).all()


@pytest.mark.parametrize("value", [True, 2.0, 0])
def test_few_shot_n_neighbors_must_be_an_integer(value):
    x, y = _support()
    with pytest.raises(ValueError, match=r"^n_neighbors must be an integer >= 1, got "):
        FewShotClassifier(method="knn", n_neighbors=value).fit(x, y)


def test_non_finite_embedder_output_names_its_rows():
    x, y = _support()

    def embedder(a):
        out = a.copy()
        out[[1, 4]] = np.inf
        return out

    with pytest.raises(ValueError, match=re.escape(
            "the embedder's output holds NaN or infinite values in 2 of 20 rows (rows 1, 4); "
            "the embedder overflows or divides by zero on those input rows")):
        FewShotClassifier(embedder=embedder).fit(x, y)


def test_non_finite_inputs_name_their_rows():
    x, y = _support()
    x[5, 0] = np.nan
    with pytest.raises(ValueError, match=re.escape(
            "X holds NaN or infinite values in 1 of 20 rows (row 5); drop those rows")):
        FewShotClassifier().fit(x, y)


# -- the inputs a run embeds --------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from dmlkit.config import Config
    from dmlkit.runs import load_run
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("dl_run")
    x = np.random.default_rng(0).random((40, 6)).astype(np.float32)
    np.savez(root / "d.npz", x=x, labels=np.repeat(np.arange(4), 10))
    cfg = Config.from_dict({
        "name": "dl", "data": {"name": "npz", "path": str(root / "d.npz")},
        "model": {"name": "mlp", "dim": 4, "hidden": [8]},
        "training": {"epochs": 1, "num_threads": 1, "progress": False},
    })
    train_run(cfg, root / "run", log=lambda *a: None)
    return load_run(root / "run"), x


def test_unlabelled_inputs_name_their_non_finite_rows(run, tmp_path):
    from dmlkit.runs.data import unlabelled_inputs

    loaded, x = run
    x = x.copy()
    x[[3, 7]] = np.nan
    np.save(tmp_path / "q.npy", x)
    np.savez(tmp_path / "q.npz", feats=x)
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path / 'q.npy'} holds NaN or infinite values in 2 of 40 rows (rows 3, 7); "
            "drop those rows or fill in the missing values first")):
        unlabelled_inputs(loaded, tmp_path / "q.npy")
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path / 'q.npz'}: 'feats' holds NaN or infinite values in 2 of 40 rows")):
        unlabelled_inputs(loaded, tmp_path / "q.npz", x_key="feats")


def test_labelled_inputs_name_their_non_finite_rows_without_speaking_of_training(run,
                                                                                  tmp_path):
    from dmlkit.runs.data import run_data

    loaded, x = run
    x = x.copy()
    x[[2, 9, 11]] = np.inf
    np.savez(tmp_path / "l.npz", x=x, labels=np.repeat(np.arange(4), 10))
    with pytest.raises(ValueError, match=re.escape(
            f"{tmp_path / 'l.npz'}: 3 of 40 items hold NaN or infinite values (rows 2, 9, 11); "
            "drop those items or fill in the missing values first")):
        run_data(loaded, str(tmp_path / "l.npz"))


def test_an_archive_tools_folder_is_not_a_class(tmp_path):
    from PIL import Image

    from dmlkit.data.image_folder import load_image_folder

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for k in range(2):
            Image.fromarray(np.full((4, 4), 40 * k, np.uint8)).save(tmp_path / name / f"{k}.png")
    junk = tmp_path / "__MACOSX" / "a"
    junk.mkdir(parents=True)
    (junk / "._0.png").write_bytes(b"\x00\x05\x16\x07")
    data = load_image_folder(tmp_path)
    assert list(data.class_names) == ["a", "b"]
