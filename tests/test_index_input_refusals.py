"""Indexes refuse bad inputs before any work, naming what is wrong: ``info`` that is not
plain JSON (before a save creates any folder), range thresholds that are not real
numbers, non-integer ids of ``metadata``, a string given as per-item ``paths`` or
``payloads``, non-integer chunk sizes, a manifest whose factory is not its faiss index,
and CLI options named as typed."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.index import ExactIndex, load_index
from dmlkit.index.io import IndexFormatError

runner = CliRunner()


def _gallery(n: int = 10, dim: int = 4) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)


def _exact() -> ExactIndex:
    index = ExactIndex(4)
    index.add(_gallery())
    return index


# -- info is checked before a save creates anything ----------------------------------------
def test_info_that_is_not_json_is_refused_before_any_folder_is_made(tmp_path):
    index = _exact()
    index.info = {"x": object()}
    with pytest.raises(TypeError, match="info"):
        index.save(tmp_path / "newparent" / "deep" / "idx")
    assert list(tmp_path.iterdir()) == []  # no parent folders left behind


def test_info_with_nan_is_refused_not_written_as_nonstandard_json(tmp_path):
    index = _exact()
    index.info = {"x": float("nan")}
    with pytest.raises(ValueError, match="info"):
        index.save(tmp_path / "idx")
    assert not (tmp_path / "idx").exists()
    index.info = {"x": 1.5}
    index.save(tmp_path / "idx")
    text = (tmp_path / "idx" / "manifest.json").read_text()
    assert json.loads(text)["info"] == {"x": 1.5}


def test_a_failed_save_keeps_the_earlier_save(tmp_path):
    index = _exact()
    index.save(tmp_path / "idx")
    before = (tmp_path / "idx" / "manifest.json").read_text()
    index.info = {"x": float("inf")}
    with pytest.raises(ValueError, match="info"):
        index.save(tmp_path / "idx")
    assert (tmp_path / "idx" / "manifest.json").read_text() == before


# -- range_search thresholds -----------------------------------------------------------------
def _indexes():
    out = [_exact()]
    try:
        from dmlkit.index import FaissIndex
    except ImportError:  # pragma: no cover
        return out
    try:
        faiss_index = FaissIndex(4)
    except ImportError:
        return out
    faiss_index.add(_gallery())
    return [*out, faiss_index]


@pytest.mark.parametrize(
    "threshold", [float("nan"), "1.0", None, True, float("inf"), [1.0], np.float64("nan")]
)
def test_range_search_refuses_a_threshold_that_is_not_a_finite_number(threshold):
    for index in _indexes():
        with pytest.raises((ValueError, TypeError), match="threshold") as info:
            index.range_search(_gallery()[:1], threshold)
        assert repr(threshold) in str(info.value) or str(threshold) in str(info.value)


@pytest.mark.parametrize("threshold", [1.0, 2, np.float32(1.0), np.int64(3), -1.0])
def test_range_search_takes_real_numbers(threshold):
    for index in _indexes():
        lims, scores, ids = index.range_search(_gallery()[:1], threshold)
        assert lims.shape == (2,) and len(scores) == len(ids) == lims[-1]


# -- metadata ids --------------------------------------------------------------------------
def test_metadata_refuses_non_integer_ids_as_add_does():
    index = _exact()
    with pytest.raises(TypeError, match="ids must be integers"):
        index.metadata([1.7, 2.9])
    with pytest.raises(TypeError, match="ids must be integers"):
        index.metadata(np.array([1.0]))
    assert [m["id"] for m in index.metadata([1, np.int64(2)])] == [1, 2]
    assert index.metadata(np.array([[3]]))[0]["id"] == 3
    assert index.metadata([]) == []
    assert index.metadata([99]) == [None]


# -- paths / payloads given as one string ---------------------------------------------------
@pytest.mark.parametrize("param", ["paths", "payloads"])
@pytest.mark.parametrize("value", ["ab", b"ab"])
def test_a_string_as_paths_or_payloads_is_refused(param, value):
    index = ExactIndex(4)
    with pytest.raises(TypeError, match=param):
        index.add(_gallery(2), **{param: value})
    assert index.ntotal == 0


def test_per_item_paths_and_payloads_are_kept():
    index = ExactIndex(4)
    ids = index.add(_gallery(2), paths=("a.png", "b.png"), payloads=["x", {"y": 1}])
    meta = index.metadata(ids)
    assert [m["path"] for m in meta] == ["a.png", "b.png"]
    assert [m["payload"] for m in meta] == ["x", {"y": 1}]


# -- chunk sizes ---------------------------------------------------------------------------
@pytest.mark.parametrize("param", ["query_chunk", "ref_chunk"])
@pytest.mark.parametrize("value", [1.5, "a", True, 0, -3, None, 2.0])
def test_chunk_sizes_must_be_integers_of_at_least_one(param, value):
    with pytest.raises((ValueError, TypeError), match=param):
        ExactIndex(4, **{param: value})


def test_chunk_sizes_take_integers():
    index = ExactIndex(4, query_chunk=np.int64(3), ref_chunk=5)
    assert (index.query_chunk, index.ref_chunk) == (3, 5)
    assert type(index.query_chunk) is int


def _edit_manifest(path: Path, edit) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_a_manifest_with_a_fractional_chunk_is_refused(tmp_path):
    _exact().save(tmp_path / "idx")
    _edit_manifest(tmp_path / "idx", lambda m: m["params"].__setitem__("query_chunk", 1.5))
    with pytest.raises(IndexFormatError, match="query_chunk"):
        load_index(tmp_path / "idx")


# -- a manifest's factory checked against its faiss index -----------------------------------
@pytest.mark.parametrize(
    "saved, edited",
    [
        ("IVF4,Flat", "HNSW32"),
        ("HNSW8", "IVF4,Flat"),
        ("Flat", "HNSW32"),
        ("IVF4,Flat", "Flat"),
        ("HNSW8", "Flat"),
    ],
)
def test_a_manifest_factory_of_another_kind_is_refused(tmp_path, saved, edited):
    pytest.importorskip("faiss")
    from dmlkit.index import FaissIndex

    index = FaissIndex(4, "l2", saved)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index.add(_gallery(200))
    index.save(tmp_path / "idx")
    assert load_index(tmp_path / "idx").factory == saved  # (unedited: loads)

    def edit(m):
        m["params"].update(factory=edited, nprobe=None, ef_search=None)

    _edit_manifest(tmp_path / "idx", edit)
    with pytest.raises(IndexFormatError, match="manifest") as info:
        load_index(tmp_path / "idx")
    assert edited in str(info.value)


# -- CLI options named as typed -------------------------------------------------------------
def _built(tmp_path: Path, factory: str) -> Path:
    pytest.importorskip("faiss")
    from dmlkit.index import FaissIndex

    index = FaissIndex(4, "l2", factory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index.add(_gallery(200))
    out = tmp_path / factory.replace(",", "_")
    index.save(out)
    np.save(tmp_path / "q.npy", _gallery(2))
    return out


def _cli(args: list[str]):
    from dmlkit.cli.main import app

    return runner.invoke(app, args)


@pytest.mark.parametrize(
    "factory, option, value",
    [
        ("IVF4,Flat", "--ef-search", "4"),
        ("HNSW8", "--nprobe", "3"),
        ("HNSW8", "--k-factor", "2"),
    ],
)
def test_search_names_the_option_as_typed(tmp_path, factory, option, value):
    index_dir = _built(tmp_path, factory)
    res = _cli(["search", str(index_dir), "-q", str(tmp_path / "q.npy"), option, value])
    assert res.exit_code != 0
    assert f"{option} applies to" in res.output
    assert "efSearch" not in res.output and "k_factor" not in res.output
    assert "nprobe applies" not in res.output.replace("--nprobe", "")


@pytest.mark.parametrize(
    "factory, option, value",
    [
        ("HNSW8", "--nprobe", "3"),
        ("IVF4,Flat", "--ef-search", "4"),
        ("HNSW8", "--k-factor", "2"),
    ],
)
def test_index_build_names_the_option_as_typed(tmp_path, factory, option, value):
    pytest.importorskip("faiss")
    np.savez(tmp_path / "emb.npz", embeddings=_gallery(200))
    out = tmp_path / "b1"
    res = _cli(
        [
            "index",
            "build",
            str(tmp_path / "emb.npz"),
            "--out",
            str(out),
            "--factory",
            factory,
            option,
            value,
        ]
    )
    assert res.exit_code != 0
    assert f"{option} applies to" in res.output
    assert "efSearch" not in res.output and "k_factor" not in res.output
    assert not out.exists()


def test_search_names_the_as_option(tmp_path):
    index = _exact()
    index.save(tmp_path / "idx")
    np.save(tmp_path / "q.npy", _gallery(2))
    res = _cli(["search", str(tmp_path / "idx"), "-q", str(tmp_path / "q.npy"), "--as", "foo"])
    assert res.exit_code != 0
    assert "--as" in res.output and "'foo'" in res.output
    assert "query kind" not in res.output


def test_the_library_keeps_its_parameter_names():
    pytest.importorskip("faiss")
    from dmlkit.index import FaissIndex
    from dmlkit.runs.queries import read_query_array

    with pytest.raises(ValueError, match="^efSearch applies to HNSW"):
        FaissIndex(4, "l2", "IVF4,Flat", ef_search=4)
    with pytest.raises(ValueError, match="query kind must be one of"):
        read_query_array(Path("q.npy"), 4, None, "foo")
