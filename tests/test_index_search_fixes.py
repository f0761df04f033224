"""`dmlkit search` embeds raw queries only with the index's own model, refuses 1-D query
arrays and mixed-size images with one clear error; indexes take tensors in remove(),
copy payloads, refuse degenerate faiss factories and invalid recall targets, warn about
the stages they actually train, and load only what their manifest vouches for."""

from __future__ import annotations

import json
import re
import shutil
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()

TINY = {
    "name": "tiny",
    "data": {"name": "digits", "max_per_class": 10, "max_heldout_per_class": 10},
    "model": {"name": "small_cnn", "dim": 8, "width": 8},
    "training": {"epochs": 1, "progress": False, "num_threads": 1},
}


def _error(res) -> str:
    lines = [s for s in res.stderr.splitlines() if s.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs of the same config (other seeds) and an index of the first's held-out."""
    from dmlkit.config import Config
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("search_fixes")
    train_run(Config.from_dict(TINY), root / "run", log=lambda *a: None)
    other = {**TINY, "training": {**TINY["training"], "seed": 7}}
    train_run(Config.from_dict(other), root / "other", log=lambda *a: None)
    res = runner.invoke(app, ["index", "build", str(root / "run"), "--out", str(root / "idx")])
    assert res.exit_code == 0, res.output
    return root


def _raw_queries(path, n: int = 3):
    from dmlkit.data import load_digits

    x = load_digits().x[:n].numpy().reshape(n, -1).astype(np.float32)  # (n, 64) in [0, 1]
    np.save(path, x)
    return path


# -- 1: raw queries are embedded only by the index's model ---------------------------------
def test_search_refuses_raw_queries_embedded_by_another_run(runs, tmp_path):
    q = _raw_queries(tmp_path / "raw.npy")
    res = runner.invoke(app, ["search", str(runs / "idx"), "-q", str(q), "--as", "inputs",
                              "--run", str(runs / "other")])
    assert res.exit_code == 1
    err = _error(res)
    assert "holds embeddings of another model than the one embedding the queries" in err
    assert str((runs / "other").resolve()) in err and "--run" in err
    own = runner.invoke(app, ["search", str(runs / "idx"), "-q", str(q), "--as", "inputs",
                              "--run", str(runs / "run"), "--json"])
    assert own.exit_code == 0, own.output
    assert json.loads(own.stdout)[0]["neighbours"]
    # embeddings need no model: nothing to check, whatever --run says
    np.save(tmp_path / "e.npy", np.zeros((2, 8), np.float32))
    emb = runner.invoke(app, ["search", str(runs / "idx"), "-q", str(tmp_path / "e.npy"),
                              "--run", str(runs / "other")])
    assert emb.exit_code == 0, emb.output


def test_search_refuses_an_index_of_its_run_trained_further(runs, tmp_path):
    """The index's own run, retrained after the build (as --resume does): its model now
    embeds into another space, so searching with it is refused, as serve refuses it."""
    run = tmp_path / "run"
    shutil.copytree(runs / "run", run)
    res = runner.invoke(app, ["index", "build", str(run), "--out", str(tmp_path / "idx")])
    assert res.exit_code == 0, res.output
    q = _raw_queries(tmp_path / "raw.npy")
    args = ["search", str(tmp_path / "idx"), "-q", str(q), "--as", "inputs"]
    assert runner.invoke(app, args).exit_code == 0
    for name in ("model.pt", "checkpoint.pt"):  # the weights change, as further training does
        if (run / name).is_file():
            state = torch.load(run / name, weights_only=True)
            weights = state.get("model", state) if name == "checkpoint.pt" else state
            for value in weights.values():
                if value.is_floating_point():
                    value.add_(0.5)
            torch.save(state, run / name)
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "stale" in _error(res) and "trained further" in _error(res)


def test_serve_and_search_apply_one_rule():
    from types import SimpleNamespace

    from dmlkit.index.provenance import check_index_source

    info = {"run_dir": "/runs/a", "model_sha256": "1" * 64}
    other = SimpleNamespace(run_dir="/runs/b", model_sha256="2" * 64)
    same = SimpleNamespace(run_dir="/runs/a", model_sha256="1" * 64)
    for use in ("serve", "search"):
        check_index_source(info, same, use=use)
        with pytest.raises(ValueError, match="another model than the one"):
            check_index_source(info, other, use=use)
        with pytest.raises(ValueError, match="stale"):
            check_index_source(info, SimpleNamespace(run_dir="/runs/a", model_sha256="3" * 64),
                               use=use)
    with pytest.raises(ValueError, match="use must be"):
        check_index_source(info, same, use="other")


# -- 2: 1-D query arrays ---------------------------------------------------------------------
@pytest.mark.parametrize("save, kind", [("npz", "auto"), ("npz", "embeddings"),
                                        ("npy", "embeddings"), ("npy", "auto")])
def test_a_1d_query_array_is_one_clear_error(runs, tmp_path, save, kind):
    row = np.zeros(8, np.float32)
    path = tmp_path / f"q.{save}"
    np.savez(path, embeddings=row) if save == "npz" else np.save(path, row)
    res = runner.invoke(app, ["search", str(runs / "idx"), "-q", str(path), "--as", kind])
    assert res.exit_code == 1
    assert f"{path} has shape (8,); expected embeddings (n, 8)" in _error(res)


def test_read_query_array_checks_every_path(tmp_path):
    from dmlkit.runs.queries import read_query_array

    np.savez(tmp_path / "x.npz", x=np.zeros(64, np.float32))
    with pytest.raises(ValueError, match=r"has shape \(64,\); expected raw inputs"):
        read_query_array(tmp_path / "x.npz", 8, None)
    np.save(tmp_path / "e3.npy", np.zeros((2, 1, 8), np.float32))
    with pytest.raises(ValueError, match=r"has shape \(2, 1, 8\); expected embeddings"):
        read_query_array(tmp_path / "e3.npy", 8, None, "embeddings")
    np.save(tmp_path / "ok.npy", np.zeros((2, 8), np.float32))
    assert read_query_array(tmp_path / "ok.npy", 8, None, "embeddings")[0].shape == (2, 8)


# -- 6: query images of mixed sizes ----------------------------------------------------------
def _png(path, side: int):
    from PIL import Image

    Image.fromarray(np.full((side, side), 128, np.uint8)).save(path)
    return path


def test_mixed_size_query_images_name_the_odd_file(runs, tmp_path):
    small, big = _png(tmp_path / "q0.png", 8), _png(tmp_path / "big.png", 16)
    res = runner.invoke(app, ["search", str(runs / "idx"), "-q", str(small), str(big)])
    assert res.exit_code == 1
    err = _error(res)
    assert f"{big} of shape (1, 16, 16)" in err and "1x8x8" in err and str(small) not in err


def test_read_images_refuses_sizes_that_cannot_share_a_batch(tmp_path):
    from dmlkit.runs.queries import InputSpec, read_images

    a, b, c = (_png(tmp_path / f"{n}.png", s) for n, s in (("a", 8), ("b", 8), ("c", 12)))
    with pytest.raises(ValueError, match=r"differ in size: .*c\.png of shape \(1, 12, 12\)"):
        read_images([a, b, c], None, "grayscale")
    resizing = InputSpec((1, 8, 8), "float32", 0.0, 1.0, any_size=True)
    with pytest.raises(ValueError, match="differ in size"):
        read_images([a, c], None, "grayscale", resizing)
    assert read_images([a, b], None, "grayscale", resizing).shape == (2, 1, 8, 8)


def test_a_model_that_resizes_embeds_mixed_sizes_each_as_alone(resizing_run, tmp_path):
    """A run whose model resizes any image: mixed sizes are embedded one size at a time,
    so each query's embedding is the one it gets searched alone."""
    rng = np.random.default_rng(0)
    files = []
    for name, side in (("a", 8), ("b", 16), ("c", 8)):
        from PIL import Image

        Image.fromarray((rng.random((side, side)) * 255).astype(np.uint8)).save(
            tmp_path / f"{name}.png")
        files.append(str(tmp_path / f"{name}.png"))

    def search(*queries):
        res = runner.invoke(app, ["search", str(resizing_run / "idx"), "-q", *queries, "-k",
                                  "3", "--json"])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    together = search(*files)
    assert [r["query"] for r in together] == files
    for i, f in enumerate(files):
        alone = search(f)[0]["neighbours"]
        assert [h["id"] for h in alone] == [h["id"] for h in together[i]["neighbours"]]
        np.testing.assert_allclose([h["score"] for h in alone],
                                   [h["score"] for h in together[i]["neighbours"]], rtol=1e-4)


# -- 3: remove() takes tensors -----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["exact", "faiss"])
def test_remove_takes_tensor_ids_and_search_results(kind):
    from dmlkit.index import ExactIndex

    if kind == "faiss":
        pytest.importorskip("faiss")
        from dmlkit.index import FaissIndex

        index = FaissIndex(4, "l2", "Flat")
    else:
        index = ExactIndex(4)
    index.add(torch.rand(10, 4, generator=torch.Generator().manual_seed(0)))
    assert index.remove(torch.tensor([1, 2])) == 2
    assert index.remove(torch.tensor(3)) == 1
    _, ids = index.search(torch.rand(2, 4), 3)  # (2, 3) int64 tensor
    gone = len(set(ids.reshape(-1).tolist()))
    assert index.remove(ids) == gone and index.ntotal == 7 - gone
    with pytest.raises(TypeError, match="ids must be integers"):
        index.remove(torch.tensor([1.5]))


# -- 9: payloads are copies ------------------------------------------------------------------
def test_payloads_are_stored_and_returned_as_copies(tmp_path):
    from dmlkit.index import ExactIndex, load_index

    index = ExactIndex(2)
    payload = {"tags": ["a"], "n": 1}
    index.add(np.zeros((1, 2)), payloads=[payload])
    payload["tags"].append("b")
    payload["n"] = 2
    got = index.metadata([0])[0]["payload"]
    assert got == {"tags": ["a"], "n": 1}
    got["tags"].append("c")
    assert index.metadata([0])[0]["payload"] == {"tags": ["a"], "n": 1}
    index.save(tmp_path / "ix")
    assert load_index(tmp_path / "ix").metadata([0])[0]["payload"] == {"tags": ["a"], "n": 1}
    with pytest.raises(TypeError):
        index.add(np.zeros((1, 2)), payloads=[object()])


# -- 4 / 8: faiss factories and their training warning -------------------------------------
@pytest.mark.parametrize("factory, reason", [
    ("IVF0,Flat", "IVF index needs at least 1 list"),
    ("HNSW1", "HNSW graph needs M >= 2"),
    ("IVF4_HNSW0,Flat", "HNSW graph needs M >= 2"),
    ("PQ2x0", "at least 1 bit"),
    ("IVF4,Flat,Refine(PQ2x0)", "at least 1 bit"),
    ("NSG2", "NSG graph needs degree >= 4"),
])
def test_degenerate_faiss_factories_are_refused_at_construction(factory, reason):
    pytest.importorskip("faiss")
    from dmlkit.index import FaissIndex

    pattern = f"invalid faiss factory {re.escape(repr(factory))}.*{reason}"
    with pytest.raises(ValueError, match=pattern):
        FaissIndex(8, "l2", factory)


def test_faiss_build_errors_drop_the_cpp_location():
    pytest.importorskip("faiss")
    from dmlkit.index import FaissIndex

    with pytest.raises(ValueError, match="cannot build 'PQ3'") as err:
        FaissIndex(8, "l2", "PQ3")
    assert "/project/faiss" not in str(err.value) and "multiple" in str(err.value)


def test_index_build_reports_a_bad_factory_in_one_line(tmp_path):
    pytest.importorskip("faiss")
    np.savez(tmp_path / "e.npz", embeddings=np.random.default_rng(0).random((50, 8)))
    res = runner.invoke(app, ["index", "build", str(tmp_path / "e.npz"), "--out",
                              str(tmp_path / "ix"), "--factory", "IVF0,Flat"])
    assert res.exit_code == 1 and "IVF index needs at least 1 list" in _error(res)
    assert "nprobe" not in res.output and not (tmp_path / "ix").exists()


def test_a_faiss_error_at_search_is_one_line(tmp_path, monkeypatch):
    faiss = pytest.importorskip("faiss")
    np.savez(tmp_path / "e.npz", embeddings=np.random.default_rng(0).random((50, 8)))
    res = runner.invoke(app, ["index", "build", str(tmp_path / "e.npz"), "--out",
                              str(tmp_path / "ix"), "--factory", "Flat"])
    assert res.exit_code == 0, res.output

    def fail(self, *args, **kwargs):
        raise RuntimeError("Error in void faiss::x() at /project/faiss/x.cpp:1: Error: "
                           "'k > 0' failed")

    monkeypatch.setattr(faiss.IndexIDMap2, "search", fail)
    np.save(tmp_path / "q.npy", np.zeros((2, 8), np.float32))
    res = runner.invoke(app, ["search", str(tmp_path / "ix"), "-q", str(tmp_path / "q.npy")])
    assert res.exit_code == 1
    assert _error(res) == "error: faiss cannot search 'Flat': 'k > 0' failed"


@pytest.mark.parametrize("factory, unit", [
    ("LSHrt", "hamming"), ("LSHrt,RFlat", "sq_l2"), ("Flat", "sq_l2")])
def test_search_names_the_unit_its_scores_are_in(tmp_path, factory, unit):
    pytest.importorskip("faiss")
    from dmlkit.index import BaseIndex

    x = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    np.savez(tmp_path / "e.npz", embeddings=x)
    res = runner.invoke(app, ["index", "build", str(tmp_path / "e.npz"), "--out",
                              str(tmp_path / "ix"), "--factory", factory])
    assert res.exit_code == 0, res.output
    index = BaseIndex.load(tmp_path / "ix")
    assert index.score_unit == unit
    scores, _ = index.search(x[:3], 4)
    if unit == "hamming":  # whole numbers of differing bits, not squared distances
        assert np.array_equal(scores, np.round(scores)) and scores.max() >= 1
    np.save(tmp_path / "q.npy", x[:2])
    res = runner.invoke(app, ["search", str(tmp_path / "ix"), "-q", str(tmp_path / "q.npy")])
    assert res.exit_code == 0, res.output
    header = next(line for line in res.output.splitlines() if "rank" in line)
    assert header.split()[2] == unit


@pytest.mark.parametrize("factory, says, not_says", [
    ("PQ2x4", "16 centroids per PQ sub-quantizer of 4 bits", "IVF"),
    ("IVF64,Flat", "64 IVF lists", "PQ"),
    ("IVF64,PQ2x6", "64 IVF lists; 64 centroids per PQ sub-quantizer of 6 bits", "256"),
])
def test_the_training_warning_names_the_stages_that_train(factory, says, not_says):
    pytest.importorskip("faiss")
    from dmlkit.index import FaissIndex

    x = np.random.default_rng(0).random((300, 8)).astype(np.float32)
    with pytest.warns(UserWarning, match="only 300 vectors") as seen:
        FaissIndex(8, "l2", factory).add(x)
    text = str(seen[0].message)
    assert says in text and not_says not in text
    if "PQ" in factory:
        assert "fewer bits per PQ sub-quantizer (at most 2 for 300 vectors)" in text
    if "IVF" in factory:
        assert "fewer lists (at most 7 for 300 vectors" in text
    else:
        assert "lists" not in text


# -- 5: recall targets -----------------------------------------------------------------------
@pytest.mark.parametrize("target", ["1.5", "-1", "0", "nan"])
def test_index_build_refuses_a_recall_target_outside_0_1(tmp_path, target):
    np.savez(tmp_path / "e.npz", embeddings=np.random.default_rng(0).random((50, 8)))
    res = runner.invoke(app, ["index", "build", str(tmp_path / "e.npz"), "--out",
                              str(tmp_path / "ix"), "--factory", "IVF4,Flat",
                              "--target-recall", target])
    assert res.exit_code == 1 and "--target-recall must be a recall in (0, 1]" in _error(res)


def test_index_build_refuses_a_recall_target_for_the_exact_index(tmp_path):
    np.savez(tmp_path / "e.npz", embeddings=np.random.default_rng(0).random((50, 8)))
    res = runner.invoke(app, ["index", "build", str(tmp_path / "e.npz"), "--out",
                              str(tmp_path / "ix"), "--target-recall", "0.9"])
    assert res.exit_code == 1 and "exact index has recall 1" in _error(res)
    res = runner.invoke(app, ["index", "build", str(tmp_path / "e.npz"), "--out",
                              str(tmp_path / "ix")])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("target", [1.5, -1, 0, float("nan"), True, "0.9"])
def test_calibrate_refuses_a_target_outside_0_1(target):
    from dmlkit.index import ExactIndex
    from dmlkit.index.calibrate import calibrate

    x = np.random.default_rng(0).random((20, 4)).astype(np.float32)
    index = ExactIndex(4)
    index.add(x)
    with pytest.raises(ValueError, match=r"target must be a recall in \(0, 1\]"):
        calibrate(index, x, target=target)
    assert calibrate(index, x, target=1)["recall_at_k"] == 1.0


# -- 10: what load_index trusts --------------------------------------------------------------
def _edit_manifest(path, edit) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_load_refuses_a_metric_the_faiss_index_does_not_search_by(tmp_path):
    pytest.importorskip("faiss")
    from dmlkit.index import FaissIndex, load_index
    from dmlkit.index.io import IndexFormatError

    index = FaissIndex(4, "l2", "Flat")
    index.add(np.random.default_rng(0).random((10, 4)))
    index.save(tmp_path / "ix")
    _edit_manifest(tmp_path / "ix", lambda m: m.update(metric="cosine"))
    with pytest.raises(IndexFormatError, match="searches by l2 but the manifest says "
                                               "metric 'cosine'"):
        load_index(tmp_path / "ix")


@pytest.mark.parametrize("name", ["vectors.npy", "ids.npy", "labels.npy", "metadata.json"])
def test_load_refuses_a_file_the_manifest_does_not_list(tmp_path, name):
    from dmlkit.index import ExactIndex, load_index
    from dmlkit.index.io import IndexFormatError

    index = ExactIndex(4)
    index.add(np.random.default_rng(0).random((10, 4)))
    index.save(tmp_path / "ix")
    _edit_manifest(tmp_path / "ix", lambda m: m["files"].pop(name))
    with pytest.raises(IndexFormatError, match=f"the manifest lists no {name}"):
        load_index(tmp_path / "ix")


def test_an_index_saved_whole_still_loads(tmp_path):
    from dmlkit.index import ExactIndex, load_index

    index = ExactIndex(4, "cosine")
    index.add(np.random.default_rng(0).random((10, 4)), payloads=[{"i": i} for i in range(10)])
    index.save(tmp_path / "ix")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = load_index(tmp_path / "ix")
    assert again.metric == "cosine" and again.ntotal == 10


@pytest.mark.parametrize(("factory", "advice"), [
    ("PQ2x4", "store finer codes"),
    ("IVF16,PQ2x4", "every list is searched already (nprobe 16 of 16)"),
])
def test_low_recall_advice_names_the_factory_s_own_knobs(tmp_path, factory, advice):
    """The low-recall warning advises only what the index has: a plain PQ index has no
    lists to widen, and an IVF index whose tuning opened every list has none left."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "e.npz", embeddings=rng.normal(size=(1000, 16)).astype("float32"))
    res = runner.invoke(app, ["index", "build", str(tmp_path / "e.npz"), "--out",
                              str(tmp_path / "idx"), "--factory", factory])
    assert res.exit_code == 0, res.output
    assert "is below 0.95" in res.output and advice in res.output, res.output
    assert "raise --nprobe" not in res.output and "add a refine stage" in res.output


def test_index_build_refuses_an_index_with_pending_service_writes(tmp_path):
    """A rebuilt index must not inherit the old one's uncheckpointed service log: the next
    serve would replay old-model vectors and deletions into it."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "e.npz", embeddings=rng.normal(size=(50, 8)).astype("float32"))
    args = ["index", "build", str(tmp_path / "e.npz"), "--out", str(tmp_path / "idx")]
    assert runner.invoke(app, args).exit_code == 0
    wal = tmp_path / "idx.wal"
    wal.write_text('{"op": "delete", "id": 7}\n')
    res = runner.invoke(app, args)
    assert res.exit_code != 0 and "idx.wal" in res.output and "replay" in res.output
    wal.write_text("")  # an empty log (a clean shutdown truncates it): rebuilding is fine
    assert runner.invoke(app, args).exit_code == 0


def test_an_index_of_an_embeddings_file_records_its_absolute_path(tmp_path, monkeypatch):
    """As run and store sources are, so the index says where its vectors came from from
    any working directory."""
    from dmlkit.index import load_index

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "e.npz", embeddings=rng.normal(size=(20, 4)).astype("float32"))
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["index", "build", "e.npz", "--out", "idx"]).exit_code == 0
    assert load_index(tmp_path / "idx").info["embeddings"] == str((tmp_path / "e.npz").resolve())
