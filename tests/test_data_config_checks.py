"""Data settings that used to be accepted silently or fail deep inside: held-out parts
that overlap the training items, non-square image sizes, integer pixel dtypes, the
colour of image folders, split and cap values, single-class training data, and the
feature cache folder."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from dmlkit.config import Config, DataConfig
from dmlkit.data import load_dataset, load_image_folder, load_npz, split_dataset
from dmlkit.data.load import check_training_data, data_config

Image = pytest.importorskip("PIL.Image")


def _npz(path, x, labels, **extra):
    np.savez(path, x=x, labels=labels, **extra)
    return str(path)


def _toy_images(n_per_class=6, classes=3, shape=(1, 10, 8), seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    x = rng.random((len(labels), *shape)).astype(np.float32) + labels[:, None, None, None] * 0.3
    return x / x.max(), labels


# 1. held-out parts ---------------------------------------------------------------------


@pytest.mark.parametrize("spec", [
    {"name": "digits", "heldout_part": "test"},
    {"name": "npz", "heldout_part": "test"},
    {"name": "image_folder", "heldout_part": "train", "part": "test"},
])  # fmt: skip
def test_heldout_part_on_a_source_without_parts_is_refused(tmp_path, spec):
    x, labels = _toy_images()
    spec = dict(spec)
    if spec["name"] == "npz":
        spec["path"] = _npz(tmp_path / "d.npz", x, labels)
    elif spec["name"] == "image_folder":
        spec["path"] = str(tmp_path)
    with pytest.raises(ValueError, match=r"data.heldout_part .* has no parts.*Remove "
                                         r"data.heldout_part"):
        check_training_data(data_config(spec))


@pytest.mark.parametrize("part, heldout", [("all", "test"), ("train", "all")])
def test_idx_parts_that_overlap_are_refused(tmp_path, part, heldout):
    def write_idx(path, array):  # the MNIST format: magic, big-endian sizes, values
        sizes = b"".join(int(s).to_bytes(4, "big") for s in array.shape)
        path.write_bytes(bytes([0, 0, 0x08, array.ndim]) + sizes + array.tobytes())

    for stem, n in (("train", 20), ("t10k", 10)):
        write_idx(tmp_path / f"{stem}-images-idx3-ubyte", np.zeros((n, 6, 5), np.uint8))
        write_idx(tmp_path / f"{stem}-labels-idx1-ubyte", (np.arange(n) % 5).astype(np.uint8))
    spec = {"name": "idx", "path": str(tmp_path), "part": part, "heldout_part": heldout}
    with pytest.raises(ValueError, match=r"data.part .* and data.heldout_part .* overlap"):
        check_training_data(data_config(spec))
    train, heldout_set = split_dataset({**spec, "part": "train", "heldout_part": "test"})
    assert (len(train), len(heldout_set)) == (20, 10)  # the distinct parts still work


# 2. non-square images ------------------------------------------------------------------


def test_non_square_images_resolve_to_height_and_width_and_resume_and_export(tmp_path):
    from dmlkit.runs.export import run_input_shape
    from dmlkit.training import load_run, train_run
    from dmlkit.training.build import model_shape_params

    spec = {"name": "small_cnn"}
    assert model_shape_params(spec, torch.zeros(3, 10, 8))["image_size"] == [10, 8]
    assert model_shape_params(spec, torch.zeros(3, 9, 9))["image_size"] == 9  # square: int
    x, labels = _toy_images()
    cfg = Config.from_dict({
        "name": "tall", "data": {"name": "npz", "path": _npz(tmp_path / "d.npz", x, labels)},
        "model": {"name": "small_cnn", "dim": 4, "width": 4},
        "training": {"epochs": 1, "batch_size": 9, "progress": False},
    })  # fmt: skip
    train_run(cfg, tmp_path / "run", log=lambda _m: None)
    saved = Config.from_yaml(tmp_path / "run" / "config.yaml")
    assert saved.model["image_size"] == [10, 8]
    saved.training.epochs = 2  # resume: the saved config rebuilds the model
    train_run(saved, tmp_path / "run", resume=True, log=lambda _m: None)
    rerun = Config.from_yaml(tmp_path / "run" / "config.yaml")  # the run's own config
    train_run(rerun, tmp_path / "again", log=lambda _m: None)
    assert run_input_shape(load_run(tmp_path / "run")) == (1, 10, 8)


# 3. integer pixel dtypes ---------------------------------------------------------------


def test_npz_integer_images_follow_one_rule(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (6, 1, 4, 4))
    labels = np.arange(6) % 2
    u8 = load_npz(_npz(tmp_path / "u8.npz", pixels.astype(np.uint8), labels))
    u16 = load_npz(_npz(tmp_path / "u16.npz", (pixels * 257).astype(np.uint16)[:, 0], labels))
    assert u16.x.dtype == torch.float32 and u16.x.shape == (6, 1, 4, 4)
    torch.testing.assert_close(u16.x, u8.x)  # 1/65535 of the 16-bit range
    with pytest.warns(UserWarning, match=r"int64 images .* kept unscaled.*uint8"):
        i64 = load_npz(_npz(tmp_path / "i64.npz", pixels.astype(np.int64), labels))
    assert i64.x.dtype == torch.float32 and float(i64.x.max()) == pixels.max()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # integer features (not images) pass quietly
        load_npz(_npz(tmp_path / "f.npz", np.arange(12).reshape(6, 2), labels))
    with pytest.warns(UserWarning, match=r"\|x\| = 2e\+05.*standardize"):
        load_dataset(_npz(tmp_path / "big.npz", np.full((6, 2), 200_000, np.int32), labels))
    # (n, d) uint16 rows are features, unscaled as runs trained on them saw them; weak-tuple
    # features follow the same rule
    rows = np.array([[3, 7, 1200, 40]] * 6, np.uint16)
    assert load_npz(_npz(tmp_path / "r16.npz", rows, labels)).x[0].tolist() == [3, 7, 1200, 40]
    from dmlkit.data.tuples import load_features

    np.save(tmp_path / "img16.npy", (pixels * 257).astype(np.uint16))
    torch.testing.assert_close(load_features(tmp_path / "img16.npy"), u8.x)
    np.save(tmp_path / "r16.npy", rows)
    assert load_features(tmp_path / "r16.npy")[0].tolist() == [3, 7, 1200, 40]


def test_check_inputs_warns_on_integer_inputs_far_from_unit_scale():
    from dmlkit.data.checks import check_inputs
    from dmlkit.data.dataset import ArrayDataset

    with pytest.warns(UserWarning, match="standardize"):
        check_inputs(ArrayDataset(np.full((4, 3), 50_000, np.int64), [0, 0, 1, 1]), "ints")


# 4. image folder colour ----------------------------------------------------------------


def _folder(root, modes, n=2):
    """One class folder per entry of ``modes`` (the Pillow mode of its ``n`` images)."""
    rng = np.random.default_rng(0)
    for k, mode in enumerate(modes):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            Image.fromarray(a).convert(mode).save(root / f"c{k}" / f"{i}.png")
    return root


def test_image_folders_default_to_the_colour_of_their_images(tmp_path):
    assert DataConfig().color == "auto"
    grey = _folder(tmp_path / "grey", ["L", "L"])
    colour = _folder(tmp_path / "colour", ["RGB", "RGB"])
    mixed = _folder(tmp_path / "mixed", ["L", "RGB"])
    assert load_dataset({"name": "image_folder", "path": str(grey)}).x.shape[1] == 1
    assert load_dataset({"name": "image_folder", "path": str(colour)}).x.shape[1] == 3
    assert load_image_folder(colour).x.shape[1] == 3  # the Python API agrees
    both = load_image_folder(mixed)
    assert both.x.shape[1] == 3
    # a grey image in a colour folder is its grey repeated, as color="rgb" reads it
    torch.testing.assert_close(both.x, load_image_folder(mixed, color="rgb").x)
    forced = load_dataset({"name": "image_folder", "path": str(colour), "color": "grayscale"})
    assert forced.x.shape[1] == 1


def test_palette_images_are_colour_only_when_their_palette_is(tmp_path):
    from dmlkit.data.image_folder import folder_color

    grey = Image.fromarray(np.arange(36, dtype=np.uint8).reshape(6, 6)).convert("P")
    grey.save(tmp_path / "grey.png")
    colour = Image.fromarray((np.zeros((6, 6, 3)) + [200, 0, 0]).astype(np.uint8))
    colour.convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "red.png")
    assert folder_color([tmp_path / "grey.png"]) == "grayscale"
    assert folder_color([tmp_path / "grey.png", tmp_path / "red.png"]) == "rgb"


def test_auto_colour_queries_are_read_with_the_runs_channels(tmp_path):
    from dmlkit.runs.data import run_data
    from dmlkit.training import load_run, train_run

    colour = _folder(tmp_path / "colour", ["RGB", "RGB"], n=4)
    cfg = Config.from_dict({
        "name": "c", "data": {"name": "image_folder", "path": str(colour)},
        "model": {"name": "small_cnn", "dim": 4, "width": 4},
        "training": {"epochs": 1, "batch_size": 4, "progress": False},
    })  # fmt: skip
    train_run(cfg, tmp_path / "run", log=lambda _m: None)
    run = load_run(tmp_path / "run")
    assert run.config.data.color == "auto" and run.config.model["in_channels"] == 3
    grey = _folder(tmp_path / "grey", ["L", "L"])
    assert run_data(run, str(grey)).x.shape[1:] == (3, 6, 6)  # grey read as RGB


def test_weak_tuples_of_image_paths_read_auto_colour(tmp_path):
    from dmlkit.data.tuples import read_tuples_csv

    colour = _folder(tmp_path, ["RGB", "L"])
    (tmp_path / "t.csv").write_text("anchor,positive,negative\nc0/0.png,c0/1.png,c1/0.png\n")
    tuples = read_tuples_csv(tmp_path / "t.csv", "triplets", color="auto")
    assert tuples.color == "rgb" and tuples.example().shape == (3, 6, 6)
    assert colour.is_dir()


# 5. split and cap values ---------------------------------------------------------------


@pytest.mark.parametrize("data, match", [
    ({"split": "classes", "train_classes": 0}, r"data.train_classes must be a list .* got 0"),
    ({"split": "classes", "train_classes": 3}, r"data.train_classes must be a list .* got 3"),
    ({"split": "classes", "train_classes": []}, r"data.train_classes is an empty list"),
    ({"split": "classes", "train_classes": [0.5, 2]}, r"data.train_classes holds 0.5"),
    ({"split": "classes", "train_classes": [0], "test_classes": [True]},
     r"data.test_classes holds True"),
    ({"split": "classes", "train_classes": [-1, 2]}, r"data.train_classes holds -1"),
    ({"max_per_class": 2.5}, r"data.max_per_class must be an integer >= 1.*2.5"),
    ({"max_per_class": "3"}, r"data.max_per_class must be an integer >= 1.*'3'"),
    ({"max_heldout_per_class": 0}, r"data.max_heldout_per_class must be an integer >= 1"),
    ({"image_size": [8]}, r"data.image_size must be"),
])  # fmt: skip
def test_bad_split_and_cap_values_name_the_key(data, match):
    with pytest.raises(ValueError, match=match):
        Config.from_dict({"data": {"name": "digits", **data}})


def test_class_names_select_classes_where_the_data_has_names(tmp_path):
    folder = _folder(tmp_path / "f", ["L", "L", "L"])
    spec = {"name": "image_folder", "path": str(folder), "split": "classes"}
    train, heldout = split_dataset({**spec, "train_classes": ["c0", "c2"]})
    assert train.classes == [0, 2] and heldout.classes == [1]
    train, heldout = split_dataset({**spec, "train_classes": ["c1"], "test_classes": [0]})
    assert train.classes == [1] and heldout.classes == [0]
    with pytest.raises(ValueError, match=r"no class named 'cat'.*0 \(c0\), 1 \(c1\), 2 \(c2\)"):
        split_dataset({**spec, "train_classes": ["cat"]})
    x, labels = _toy_images()
    named = _npz(tmp_path / "n.npz", x, labels, class_names=np.array(["a", "b", "c"]))
    train, _ = split_dataset({"name": "npz", "path": named, "split": "classes",
                              "train_classes": ["b", "c"]})
    assert train.classes == [1, 2]
    plain = _npz(tmp_path / "p.npz", x, labels)
    with pytest.raises(ValueError, match=r"names the class 'b', but the data has no class "
                                         r"names; give class ids: \[0, 1, 2\]"):
        split_dataset({"name": "npz", "path": plain, "split": "classes", "train_classes": ["b"]})


def test_class_split_refuses_non_integer_ids():
    from dmlkit.data import class_split
    from dmlkit.data.dataset import ArrayDataset

    data = ArrayDataset(np.zeros((6, 2)), [0, 0, 1, 1, 2, 2])
    with pytest.raises(TypeError, match=r"holds 0.5 \(float\)"):
        class_split(data, [0.5, 2])


# 6. single-class training data ---------------------------------------------------------


def test_training_data_of_one_class_is_refused_before_the_run_dir_is_made(tmp_path):
    from dmlkit.training import train_run

    x, labels = _toy_images(classes=3)
    cfg = Config.from_dict({
        "name": "one", "data": {"name": "npz", "path": _npz(tmp_path / "d.npz", x, labels),
                                "split": "classes", "train_classes": [1]},
        "model": {"name": "mlp", "dim": 4},
        "training": {"epochs": 1, "progress": False},
    })  # fmt: skip
    with pytest.raises(ValueError, match=r"holds one class \(1, 6 items\); metric learning "
                                         r"needs at least 2 classes"):
        train_run(cfg, tmp_path / "run", log=lambda _m: None)
    assert not (tmp_path / "run").exists()
    folder = _folder(tmp_path / "f", ["L"])
    cfg.data = DataConfig(name="image_folder", path=str(folder))
    with pytest.raises(ValueError, match=r"one class \(0: 'c0', 1 items\)"):
        train_run(cfg, tmp_path / "run", log=lambda _m: None)


# 7. feature cache folder ---------------------------------------------------------------


class _Backbone(torch.nn.Module):
    """What the feature cache reads of a pretrained embedder, without its weights."""

    resolution, taps, feature_dim = 8, (1,), 2

    def __init__(self, cache_dir):
        super().__init__()
        self.backbone = torch.nn.Linear(2, 2)
        self.cache_dir = cache_dir


@pytest.mark.parametrize("under", ["file/sub", "file"])
def test_a_cache_dir_that_cannot_be_made_fails_before_computing(tmp_path, monkeypatch, under):
    from dmlkit.models.pretrained import feature_cache

    (tmp_path / "file").write_text("x")

    def compute(*_a, **_k):
        raise AssertionError("features computed before the cache folder was checked")

    monkeypatch.setattr(feature_cache, "compute_features", compute)
    with pytest.raises(ValueError, match=r"feature cache folder .*file.*model.cache_dir"):
        feature_cache.cached_features(_Backbone(str(tmp_path / under)), torch.zeros(2, 3))


# 8. folders with image names -----------------------------------------------------------


def test_a_folder_named_like_an_image_is_skipped(tmp_path):
    folder = _folder(tmp_path / "f", ["L", "L"])
    (folder / "c0" / "dir.png").mkdir()
    assert len(load_image_folder(folder)) == 4


def test_a_path_on_the_bundled_digits_source_is_refused():
    """``data.path`` would be ignored by ``digits``: training on the wrong data, silently."""
    from dmlkit.config import DataConfig

    with pytest.raises(ValueError, match="data.name 'digits' .* reads no file.*data.name too"):
        check_training_data(DataConfig(name="digits", path="my.npz"))
    check_training_data(DataConfig(name="npz", path="my.npz"))


def test_training_refuses_bad_data_settings_but_saved_runs_still_load(tmp_path):
    """The training-only data rules refuse a new run (nothing written), while a run saved
    with such a setting (trained before the rule) still loads and rebuilds its data."""
    from typer.testing import CliRunner

    from dmlkit.cli.main import app
    from dmlkit.training import build_splits, load_run, train_run

    runner = CliRunner()
    for bad in ("data.path=my.npz", "data.heldout_part=test"):
        out = tmp_path / bad.split("=")[0]
        res = runner.invoke(app, ["train", "--epochs", "1", "--no-progress", "--out", str(out),
                                  "--set", bad, "--set", "data.max_per_class=10"])
        assert res.exit_code == 1 and "data." in res.output, res.output
        assert not out.exists()
    from dmlkit.config import digits_config

    cfg = digits_config()
    cfg.training.epochs, cfg.training.progress, cfg.data.max_per_class = 1, False, 10
    run_dir = train_run(cfg, tmp_path / "run", log=lambda _m: None).run_dir
    saved = (run_dir / "config.yaml").read_text()
    (run_dir / "config.yaml").write_text(saved.replace("path: null", "path: my.npz"))
    run = load_run(run_dir)
    assert run.config.data.path == "my.npz"
    train, heldout = build_splits(run.config)  # rebuilt as trained: digits
    assert (len(train), len(heldout)) == (100, 898)  # capped training side, all held out


def test_val_classes_take_class_names_as_train_classes_do(tmp_path):
    from dmlkit.data.class_folds import holdout_classes

    rng = np.random.default_rng(0)
    labels = np.arange(40) % 4
    path = tmp_path / "named.npz"
    np.savez(path, x=rng.normal(size=(40, 3)).astype(np.float32), labels=labels,
             class_names=np.array(["ant", "bee", "cat", "dog"]))
    data = load_npz(path)
    train, val = holdout_classes(data, ["cat", "ant"], seed=0)
    assert sorted(val.classes) == [0, 2] and sorted(train.classes) == [1, 3]
    with pytest.raises(ValueError, match="training.val_classes: no class named 'eel'"):
        holdout_classes(data, ["cat", "eel"], seed=0)
    from dmlkit.config import TrainingConfig

    assert TrainingConfig(val_classes=["cat", "ant"]).val_classes == ["cat", "ant"]
