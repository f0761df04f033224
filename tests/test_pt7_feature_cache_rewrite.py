"""The feature cache writes a damaged entry again whatever the size of its set (a small
set embedded by ``evaluate`` / ``embed`` included), and a folder where an entry's file
goes is one error naming that file, leaving no temporary file behind."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from dmlkit.models.pretrained import feature_cache
from dmlkit.models.pretrained.efficientnet_lite import EfficientNetLite0
from dmlkit.models.pretrained.efficientnet_lite0 import (
    CACHE_MIN_BATCH,
    EfficientNetLite0Embedder,
)
from dmlkit.training.frozen_features import backbone_inputs


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("lite0")
    torch.manual_seed(0)
    torch.save(EfficientNetLite0().state_dict(), root / "w.pth")
    return EfficientNetLite0Embedder(dim=8, resolution=32, taps=[16], weights=str(root / "w.pth"),
                                     cache_dir=str(root / "unused")).eval()


def _images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_a_damaged_entry_of_a_small_set_is_written_again(model, tmp_path):
    x = _images()
    assert x.shape[0] < CACHE_MIN_BATCH  # a set the cache would not store anew
    model.cache_dir = str(tmp_path)
    first = feature_cache.cached_features(model, x)  # e.g. written by a run's training
    (path,) = tmp_path.glob("*.pt")
    path.write_bytes(b"damaged")
    with pytest.warns(UserWarning, match=f"cached features in {path} are unreadable"):
        again = backbone_inputs(model, x)
    torch.testing.assert_close(again, first)
    said: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read = backbone_inputs(model, x, log=said.append)  # the entry was written again
    assert said == [f"backbone features of 4 items read from {path}"]
    torch.testing.assert_close(read, first)


def test_a_small_set_not_cached_yet_is_still_not_stored(model, tmp_path):
    model.cache_dir = str(tmp_path)
    backbone_inputs(model, _images())
    assert list(tmp_path.iterdir()) == []


def test_a_folder_in_place_of_an_entry_names_it_and_leaves_no_temporary_file(model, tmp_path):
    x = _images()
    feature_cache.cached_features(model, x, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.pt")
    path.unlink()
    path.mkdir()
    with pytest.raises(ValueError, match=f"feature cache file {path} cannot be written"):
        feature_cache.cached_features(model, x, cache_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no .tmp<pid>


def test_a_failed_write_removes_its_temporary_file_and_names_the_entry(model, tmp_path,
                                                                      monkeypatch):
    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(os, "replace", refuse)
    monkeypatch.setattr(feature_cache, "_WARNED", set())
    with pytest.warns(UserWarning, match=r"feature cache folder .* cannot be written "
                                         r"\(Permission denied\)"):
        feature_cache.cached_features(model, _images(), cache_dir=tmp_path)  # (still used)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=r"feature cache file .*\.pt cannot be written "
                                         r"\(Permission denied\)"):
        feature_cache.write_entry(tmp_path / "e.pt", torch.zeros(2, 3))  # names the entry
    assert list(tmp_path.iterdir()) == []
