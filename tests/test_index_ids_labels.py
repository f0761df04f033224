"""Index ids are never handed out twice, ``-1`` labels mean 'no label' everywhere, and
queries of any float dtype, ``IDMap`` factories and torch range searches behave."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dmlkit.index import ExactIndex, FaissIndex, IndexFormatError, load_index

faiss = pytest.importorskip("faiss")
KINDS = [lambda: ExactIndex(4), lambda: FaissIndex(4, "l2", "Flat")]


@pytest.mark.parametrize("make", KINDS)
def test_removed_ids_are_not_reused_and_the_next_id_is_saved(make, tmp_path):
    index = make()
    assert index.add(np.eye(4, dtype=np.float32)).tolist() == [0, 1, 2, 3]
    index.remove([3])
    assert index.add(np.full((1, 4), 7, np.float32)).tolist() == [4]  # not 3 again
    index.add(np.ones((1, 4), np.float32), ids=[10])
    index.remove([10, 4])
    assert index.next_id == 11
    index.save(tmp_path / "ix")
    again = load_index(tmp_path / "ix")
    assert again.add(np.zeros((1, 4), np.float32)).tolist() == [11]


@pytest.mark.parametrize("make", KINDS)
def test_every_kind_refuses_to_save_rows_its_ids_do_not_describe(make, tmp_path):
    from dmlkit.index.base import InconsistentIndexError

    index = make()
    index.add(np.eye(4, dtype=np.float32))
    index._ids = index._ids[:3]  # corrupt: a stored row that no id describes
    with pytest.raises(InconsistentIndexError, match="4 stored vector rows for 3 ids") as err:
        index.save(tmp_path / "ix")
    assert (err.value.rows, err.value.ids) == (4, 3)
    assert not (tmp_path / "ix").exists()


def test_files_without_next_id_continue_past_their_ids(tmp_path):
    index = ExactIndex(4)
    index.add(np.eye(4, dtype=np.float32), ids=[0, 5, 6, 9])
    index.save(tmp_path / "ix")
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert manifest.pop("next_id") == 10
    (tmp_path / "ix" / "manifest.json").write_text(json.dumps(manifest))  # an older file
    assert load_index(tmp_path / "ix").add(np.ones((1, 4), np.float32)).tolist() == [10]
    manifest["next_id"] = 3  # below a stored id
    (tmp_path / "ix" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="next_id"):
        load_index(tmp_path / "ix")


@pytest.mark.parametrize("make", KINDS)
def test_minus_one_labels_mean_unlabelled(make):
    index = make()
    index.add(np.eye(4, dtype=np.float32), labels=np.array([2, -1, 0, -1]))
    assert index.num_labelled == 2
    assert index.labels_of([0, 1, 2, 3]).tolist() == [2, -1, 0, -1]
    assert [m["label"] for m in index.metadata([0, 1])] == [2, None]
    with pytest.raises(ValueError, match="-1"):
        index.add(np.eye(4, dtype=np.float32)[:1], labels=[-2])


def test_store_build_keeps_each_items_label(tmp_path):
    from dmlkit.index.store import build_index_from_store, embed_to_store

    x = np.random.default_rng(0).standard_normal((100, 4)).astype(np.float32)
    labels = np.arange(100) % 5
    labels[::7] = -1
    embed_to_store(lambda a, b: x[a:b], 100, 4, tmp_path / "s", labels=labels, chunk_size=32,
                   show_progress=False)
    index = build_index_from_store(tmp_path / "s", "Flat", chunk_size=32)
    np.testing.assert_array_equal(index.labels_of(np.arange(100)), labels)


def test_cli_builds_an_index_of_partly_labelled_embeddings(tmp_path):
    from dmlkit.cli.main import app

    x = np.random.default_rng(1).standard_normal((20, 4)).astype(np.float32)
    labels = np.arange(20) % 3
    labels[:5] = -1
    np.savez(tmp_path / "partial.npz", embeddings=x, labels=labels)
    res = CliRunner().invoke(app, ["index", "build", str(tmp_path / "partial.npz"), "--out",
                                   str(tmp_path / "ix")])
    assert res.exit_code == 0, res.output
    assert load_index(tmp_path / "ix").num_labelled == 15


@pytest.mark.parametrize("make", KINDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_torch_queries_of_any_float_dtype(make, dtype):
    index = make()
    index.add(np.eye(4, dtype=np.float32))
    scores, ids = index.search(torch.eye(4, dtype=dtype)[1:2], 2)
    assert ids[0, 0].item() == 1 and scores.dtype == torch.float32


@pytest.mark.parametrize("factory", ["IDMap,Flat", "IDMap2,Flat"])
def test_idmap_factories_are_not_wrapped_twice(factory, tmp_path):
    index = FaissIndex(4, "l2", factory)
    ids = index.add(np.eye(4, dtype=np.float32), ids=[5, 6, 7, 8])
    assert ids.tolist() == [5, 6, 7, 8]
    assert index.search(np.eye(4, dtype=np.float32)[2:3], 1)[1].tolist() == [[7]]
    assert index.remove([7]) == 1
    index.save(tmp_path / "ix")
    assert load_index(tmp_path / "ix").search(np.eye(4, dtype=np.float32)[2:3], 1)[1][0, 0] != 7


@pytest.mark.parametrize("make", KINDS)
def test_range_search_returns_torch_for_torch_queries(make):
    index = make()
    index.add(np.eye(4, dtype=np.float32))
    out = index.range_search(torch.eye(4)[:2], 2.5)
    assert all(isinstance(a, torch.Tensor) for a in out)
    assert out[0].dtype == torch.int64 and out[1].dtype == torch.float32
    assert out[2].dtype == torch.int64
    assert all(isinstance(a, np.ndarray) for a in index.range_search(np.eye(4)[:2], 2.5))
