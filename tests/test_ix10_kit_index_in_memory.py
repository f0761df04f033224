"""A kit's inner index is parsed from the bytes the kit's load read and checked, with no
copy of its files written to disk; an index subclass that reads its own files still
loads from a kit."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest

from dmlkit.apps import Identifier
from dmlkit.index import ExactIndex, IndexFormatError, load_index


def _kit(tmp_path, **kw):  # noqa: ANN001, ANN202
    g = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    y = np.repeat(np.arange(6), 10)
    ident = Identifier(metric="euclidean", **kw).fit(g, y)
    ident.save(tmp_path / "kit")
    return ident, g


def test_a_kit_index_loads_without_a_temporary_copy(tmp_path, monkeypatch):
    ident, g = _kit(tmp_path)

    def no_temp(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a temporary directory was made")

    monkeypatch.setattr(tempfile, "TemporaryDirectory", no_temp)
    loaded = Identifier.load(tmp_path / "kit")
    np.testing.assert_array_equal(loaded.index_.ids, ident.index_.ids)
    np.testing.assert_allclose(loaded.index_.vectors.numpy(), ident.index_.vectors.numpy())
    assert (loaded.predict(g[:12]) == ident.predict(g[:12])).all()


def test_in_memory_index_files_are_checked_like_a_directory(tmp_path):
    ix = ExactIndex(4)
    ix.add(np.eye(4, dtype=np.float32))
    ix.save(tmp_path / "ix")
    files = {f.name: bytearray(f.read_bytes()) for f in (tmp_path / "ix").iterdir()}
    assert load_index(tmp_path / "elsewhere", files=files).ntotal == 4
    name = next(n for n in files if n.endswith(".npy") and "vectors" in n)
    files[name][-1] ^= 1
    with pytest.raises(IndexFormatError, match="SHA-256"):
        load_index(tmp_path / "elsewhere", files=files)
    del files["manifest.json"]
    with pytest.raises(IndexFormatError, match="manifest"):
        load_index(tmp_path / "elsewhere", files=files)


def test_an_index_subclass_reading_its_own_files_loads_from_memory(tmp_path):
    class OldStyleKit(ExactIndex):
        kind = "old_style_exact_in_kit"

        def _restore(self, path, manifest):  # noqa: ANN001, ANN202 (before blobs)
            self.read_from = path
            super()._restore(path, manifest, None)

    ix = OldStyleKit(4)
    ix.add(np.eye(4, dtype=np.float32))
    ix.save(tmp_path / "ix")
    files = {f.name: bytearray(f.read_bytes()) for f in (tmp_path / "ix").iterdir()}
    loaded = load_index(tmp_path / "nowhere", files=files)
    assert isinstance(loaded, OldStyleKit) and len(loaded) == 4
    assert loaded.read_from != tmp_path / "nowhere"  # (a temporary copy of the bytes)
