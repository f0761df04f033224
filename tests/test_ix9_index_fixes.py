"""Index loads during saves, IMI breadth tuning, overflowing norms, k-means advice,
empty search queries and a calibration of an emptied identifier."""

from __future__ import annotations

import re
import textwrap
import time
import warnings

import numpy as np
import pytest
from conftest import loads_during_saves
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.index import ExactIndex, IndexFormatError, load_index

runner = CliRunner()
N, DIM = 2000, 32

WRITER = textwrap.dedent("""
    import sys, time, numpy as np
    from dmlkit.index import ExactIndex, FaissIndex
    path, factory, stop = sys.argv[1], sys.argv[2], sys.argv[3]
    g = np.random.default_rng(0).normal(size=({n}, {dim})).astype(np.float32)
    def make(v):
        ix = ExactIndex({dim}) if factory == "exact" else FaissIndex({dim}, "l2", factory)
        ix.add(g * (1 - 2 * v), labels=np.full({n}, v))
        return ix
    pair, saves, end = (make(0), make(1)), 0, time.time() + 20
    import os
    open(stop + ".ready", "w").close()
    while not os.path.exists(stop) and time.time() < end:
        pair[saves % 2].save(path)
        saves += 1
    print(saves)
""").format(n=N, dim=DIM)


def _vectors(ix):  # noqa: ANN001, ANN202
    if ix.kind == "exact":
        return ix.vectors[:1].numpy()
    return ix.index.reconstruct(0)[None]


@pytest.mark.parametrize("factory", ["exact", "Flat"])
def test_a_load_during_saves_gets_one_save_whole(tmp_path, factory):
    if factory != "exact":
        pytest.importorskip("faiss")
    from dmlkit.index import FaissIndex

    g = np.random.default_rng(0).normal(size=(N, DIM)).astype(np.float32)
    first = ExactIndex(DIM) if factory == "exact" else FaissIndex(DIM, "l2", factory)
    first.add(g, labels=np.zeros(N, np.int64))
    path = tmp_path / "ix"
    first.save(path)

    def which(ix):  # noqa: ANN001, ANN202 (the save of the labels, and of the vectors)
        return int(ix.labels_of(ix.ids[:1])[0]), 0 if np.allclose(_vectors(ix), g[:1]) else 1

    saves, loads, mixed, errors = loads_during_saves(
        tmp_path, WRITER, [path, factory], lambda: load_index(path), which)
    assert saves > 5, "the writer saved too rarely to race"
    assert errors == [] and mixed == 0 and loads > 0, (errors[:3], mixed, loads)


def test_a_damaged_index_is_refused_at_once(tmp_path):
    ix = ExactIndex(4)
    ix.add(np.eye(4, dtype=np.float32))
    ix.save(tmp_path / "ix")
    data = (tmp_path / "ix" / "vectors.npy").read_bytes()
    (tmp_path / "ix" / "vectors.npy").write_bytes(data[:-4] + b"\x00\x00\x80\x7f")
    start = time.monotonic()
    with pytest.raises(IndexFormatError, match="does not match its SHA-256"):
        load_index(tmp_path / "ix")
    with pytest.raises(IndexFormatError, match="not an index directory"):
        load_index(tmp_path / "missing")
    assert time.monotonic() - start < 1.0  # no waiting for a save that is not running


def _gallery():  # noqa: ANN202
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 16))
    y = np.repeat(np.arange(40), 25)
    return (centres[y] + 0.3 * rng.normal(size=(y.size, 16))).astype(np.float32), y


@pytest.mark.parametrize("factory", ["IMI2x3,Flat", "IVF64,Flat"])
def test_imi_indexes_are_tuned_like_ivf(factory):
    pytest.importorskip("faiss")
    from dmlkit.apps import Identifier
    from dmlkit.index import FaissIndex
    from dmlkit.index.calibrate import calibrate

    x, y = _gallery()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ident = Identifier(index=factory, metric="euclidean").fit(x, y)
        assert ident.index_.nprobe is not None and ident.index_.nprobe > 1
        assert (ident.predict(x[::10]) == y[::10]).mean() > 0.9
        ix = FaissIndex(16, "l2", factory)
        ix.add(x)
        result = calibrate(ix, x, seed=0)
    assert result.get("nprobe") is not None and ix.nprobe == result["nprobe"]


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("factory", ["exact", "Flat"])
def test_vectors_whose_distances_overflow_float32_are_refused(metric, factory):
    if factory != "exact":
        pytest.importorskip("faiss")
    from dmlkit.index import FaissIndex

    x = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    ix = ExactIndex(8, metric) if factory == "exact" else FaissIndex(8, metric, factory)
    with pytest.raises(ValueError, match=r"norm .*overflow float32.*rescale") as err:
        ix.add(x * 3e19)
    assert "\n" not in str(err.value)
    ix.add(x * 1e18)  # large, but its distances fit
    with pytest.raises(ValueError, match="q has a row of L2 norm"):
        ix.search(x[:2] * 3e19, 3)
    ids = ix.search(x[:2], 3)[1]
    assert (np.asarray(ids) >= 0).all()


@pytest.mark.parametrize("lists, n", [(16, 500), (64, 300), (2, 50), (4, 20)])
def test_the_k_means_advice_asks_for_fewer_lists(lists, n):
    pytest.importorskip("faiss")
    from dmlkit.index import FaissIndex
    from dmlkit.index.faiss_stages import POINTS_PER_CENTROID

    x = np.random.default_rng(0).random((n, 8)).astype(np.float32)
    with pytest.warns(UserWarning, match=f"only {n} vectors") as seen:
        FaissIndex(8, "l2", f"IVF{lists},Flat").add(x)
    text = str(seen[0].message)
    found = re.search(r"fewer lists \(at most (\d+) for", text)
    if n // POINTS_PER_CENTROID < 1:
        assert found is None and "no IVF stage" in text
    else:
        most = int(found.group(1))
        assert 1 <= most < lists and most <= n // POINTS_PER_CENTROID


def test_search_of_no_queries_is_an_error_line(tmp_path):
    ix = ExactIndex(4)
    ix.add(np.eye(4, dtype=np.float32))
    ix.save(tmp_path / "ix")
    np.savez(tmp_path / "empty.npz", embeddings=np.zeros((0, 4), np.float32))
    res = runner.invoke(app, ["search", str(tmp_path / "ix"), "-q", str(tmp_path / "empty.npz")])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert lines[0].startswith("error: ") and "no queries" in lines[0]


def test_calibrating_an_emptied_identifier_says_zero_identities():
    from dmlkit.apps import Identifier

    x, y = _gallery()
    ident = Identifier(target_far=0.05).fit(x, y)
    ident.remove(np.unique(y))
    with pytest.raises(ValueError, match="two enrolled identities, got zero;"):
        ident.calibrate(x, y)


def test_rows_whose_l2_distances_would_overflow_are_refused():
    """Two rows each below sqrt(float32 max) can still be farther apart than float32
    holds: the bound is half of it."""
    ix = ExactIndex(1)
    with pytest.raises(ValueError, match="distances overflow float32"):
        ix.add(np.array([[1.5e19], [-1.5e19]], np.float32))
    ix.add(np.array([[9e18], [-9e18]], np.float32))  # below the bound: exact distances
    dists, ids = ix.search(np.array([[9e18]], np.float32), k=2)
    assert ids.tolist() == [[0, 1]] and np.isfinite(dists).all()


def test_a_subclass_restoring_without_the_checked_bytes_still_loads(tmp_path):
    class OldStyle(ExactIndex):
        kind = "old_style_exact"

        def _restore(self, path, manifest):  # noqa: ANN001, ANN202 (before blobs)
            self.restored_from = path
            super()._restore(path, manifest, None)

    ix = OldStyle(4)
    ix.add(np.eye(4, dtype=np.float32))
    ix.save(tmp_path / "ix")
    loaded = load_index(tmp_path / "ix")
    assert isinstance(loaded, OldStyle) and loaded.restored_from == tmp_path / "ix"
    assert len(loaded) == 4
