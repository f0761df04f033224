"""An ONNX export is served only as the file its description describes, and the service
says which side is stale when an export and an index hold two weights of one run;
`dmlkit export` keeps out of saved directories, says whose weights it exported, and
records image files' [0, 1] scale; `dmlkit index build` indexes unlabelled inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cli_helpers import error_line
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()
KEY = "k" * 24
TINY = """
name: tiny
data: {name: digits, max_per_class: 6, max_heldout_per_class: 4}
model: {name: mlp, dim: 4, hidden: [8]}
loss: {name: triplet_margin, margin: 0.2}
training: {epochs: 1, num_threads: 1, progress: false}
"""


_error = error_line


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A run, its ONNX export (then the run's weights changed, as training further
    does), and a second export of the same run for swaps."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from dmlkit.config import load_config
    from dmlkit.runs.export import export_run
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("ex6")
    (root / "tiny.yaml").write_text(TINY)
    train_run(load_config(root / "tiny.yaml"), root / "run", log=lambda *a: None)
    export_run(root / "run", root / "old.onnx")
    shutil.copytree(root / "run", root / "grown")
    state = torch.load(root / "grown" / "model.pt", weights_only=True)
    torch.save({k: v + 0.01 for k, v in state.items()}, root / "grown" / "model.pt")
    export_run(root / "grown", root / "grown_old.onnx")  # (before it grows again)
    torch.save({k: v + 0.02 for k, v in state.items()}, root / "grown" / "model.pt")
    return root


def _index_info(run_dir: Path) -> dict:
    from dmlkit.apps.persistence import run_fingerprint

    return {"run_dir": str(run_dir.resolve()), "model_sha256": run_fingerprint(run_dir)}


# -- an old export against an index of the run as it is now -------------------------------


def test_an_old_export_is_named_stale_not_the_index(root, tmp_path):
    from dmlkit.index.provenance import check_index_source
    from dmlkit.runs.export import export_run
    from dmlkit.service import load_embedder
    from dmlkit.training.run import MODEL_FILE

    run = root / "run"
    grown = tmp_path / "run"  # the run trained further after old.onnx was exported
    shutil.copytree(run, grown)
    old = tmp_path / "old.onnx"
    shutil.copy(root / "old.onnx", old)
    info = json.loads((root / "old.onnx.json").read_text())
    (tmp_path / "old.onnx.json").write_text(json.dumps({**info, "run_dir": str(grown)}))
    state = torch.load(grown / MODEL_FILE, weights_only=True)
    torch.save({k: v * 1.5 for k, v in state.items()}, grown / MODEL_FILE)
    with pytest.raises(ValueError, match=r"the served export .*old\.onnx holds the weights "
                       r".* the export is stale; export the run again \(dmlkit export "
                       r".*--force\)") as err:
        check_index_source(_index_info(grown), load_embedder(onnx=old))
    assert "rebuild the index" not in str(err.value)
    # served with --run, the same index is right and an index of the old weights is stale
    check_index_source(_index_info(grown), load_embedder(grown))
    stale = {"run_dir": str(grown.resolve()), "model_sha256": info["model_sha256"]}
    with pytest.raises(ValueError, match="its embeddings are stale; rebuild the index"):
        check_index_source(stale, load_embedder(grown))
    # the export of the run as it is, with an old index: the index is the stale one
    export_run(grown, tmp_path / "now.onnx")
    with pytest.raises(ValueError, match="its embeddings are stale; rebuild the index"):
        check_index_source(stale, load_embedder(onnx=tmp_path / "now.onnx"))


def test_an_export_and_an_index_both_older_than_the_run_say_both(root):
    from dmlkit.index.provenance import check_index_source
    from dmlkit.service import load_embedder

    grown = root / "grown"  # exported at +0.01, indexed at its first weights, now +0.02
    first = json.loads((root / "old.onnx.json").read_text())["model_sha256"]
    info = {"run_dir": str(grown.resolve()), "model_sha256": first}
    with pytest.raises(ValueError, match="two different weights of .*export the run again "
                       r".*and rebuild the index"):
        check_index_source(info, load_embedder(onnx=root / "grown_old.onnx"))


def test_a_model_of_other_settings_is_worded_so():
    from dmlkit.index.provenance import check_index_source

    info = {"run_dir": "/runs/a", "model_sha256": "1" * 64}
    served = SimpleNamespace(run_dir="/runs/b", model_sha256="2" * 64)
    with pytest.raises(ValueError, match=r"other weights or settings \(e\.g\. resolution\)"):
        check_index_source(info, served)


# -- the export's description is checked against the file ---------------------------------


def _mutated(root: Path, tmp_path: Path, change, model: bytes | None = None) -> Path:
    path = tmp_path / "m.onnx"
    path.write_bytes((root / "old.onnx").read_bytes() if model is None else model)
    info = json.loads((root / "old.onnx.json").read_text())
    info = change(info)
    Path(f"{path}.json").write_text(info if isinstance(info, str) else json.dumps(info))
    return path


def _drop(key):
    def change(info):
        del info[key]
        return info
    return change


def _set(**values):
    def change(info):
        return {**info, **values}
    return change


@pytest.mark.parametrize(("change", "words"), [
    (lambda info: "{not json", "is not valid JSON"),
    (lambda info: [1, 2], "holds a JSON list, not the object"),
    (_drop("input_name"), "lacks 'input_name'"),
    (_drop("n_features"), "lacks 'n_features'"),
    (_drop("dim"), "lacks 'dim'"),
    (_set(n_features="abc"), "'n_features' must be a positive integer, got 'abc'"),
    (_set(dim=True), "'dim' must be a positive integer"),
    (_set(format="torchscript"), "describes a 'torchscript' export, not an ONNX one"),
    (_set(output_name="y"), "names the output 'y', but .* has output"),
    (_set(input_name="x"), "names the input 'x', but .* has input"),
    (_set(n_features=65, input_shape=None), r"says the input rows are \(batch, 65\)"),
    (_set(dim=3), r"says the embeddings are \(batch, 3\) \(dim\), but .* width 4"),
    (_set(input_shape=[2, 33]), r"'input_shape' \[2, 33\] holds 66 values, but "
     "'n_features' is 64"),
    (_set(input_shape=[64, 1], input_channels=1, image_size=[8, 8]),
     r"is not the images' \[input_channels, \*image_size\]"),
    (_set(run_dir=5), "'run_dir' must be a string or null"),
    (_set(file_sha256="0" * 64), r"m\.onnx is not the file .*m\.onnx\.json describes"),
])
def test_an_export_description_that_does_not_fit_is_one_line(root, tmp_path, change, words):
    from dmlkit.service.embedders import OnnxEmbedder

    path = _mutated(root, tmp_path, change)
    with pytest.raises(ValueError, match=words) as err:
        OnnxEmbedder(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_a_file_that_is_no_onnx_model_is_one_line(root, tmp_path):
    from dmlkit.service.embedders import OnnxEmbedder

    path = _mutated(root, tmp_path, _set(file_sha256=None), model=b"\x80garbage" * 50)
    with pytest.raises(ValueError, match="is not an ONNX model onnxruntime can load") as err:
        OnnxEmbedder(path)
    assert "\n" not in str(err.value)


def test_the_export_records_the_files_digest_and_another_file_is_refused(root, tmp_path):
    import hashlib

    from dmlkit.service.embedders import OnnxEmbedder

    info = json.loads((root / "old.onnx.json").read_text())
    assert info["file_sha256"] == hashlib.sha256((root / "old.onnx").read_bytes()).hexdigest()
    OnnxEmbedder(root / "old.onnx")
    swapped = tmp_path / "old.onnx"  # another export's file under this description
    shutil.copy(root / "grown_old.onnx", swapped)
    shutil.copy(root / "old.onnx.json", tmp_path / "old.onnx.json")
    with pytest.raises(ValueError, match="is not the file .* describes .*; export the run again"):
        OnnxEmbedder(swapped)
    del info["file_sha256"]  # an export written before the digest was recorded: served
    (tmp_path / "old.onnx.json").write_text(json.dumps(info))
    assert OnnxEmbedder(swapped).dim == 4


def _serve(*args: str):
    return runner.invoke(app, ["serve", *args, "--port", "0"], env={"DMLKIT_API_KEYS": KEY})


@pytest.fixture(autouse=True)
def no_server(monkeypatch):
    """A serve that gets as far as listening fails the test instead of serving."""
    import dmlkit.cli.serve

    def refused(*args, **kwargs):
        raise AssertionError("dmlkit serve started a server")

    monkeypatch.setattr(dmlkit.cli.serve, "_server", refused)


@pytest.fixture
def index(root, tmp_path) -> Path:
    from dmlkit.index import ExactIndex

    idx = ExactIndex(4, "cosine")
    idx.add(np.eye(4, dtype=np.float32))
    idx.info = _index_info(root / "run")
    idx.save(tmp_path / "idx")
    return tmp_path / "idx"


def test_serve_says_a_bad_export_in_one_line(root, tmp_path, index):
    path = _mutated(root, tmp_path, _drop("dim"))
    res = _serve("--onnx", str(path), "--index", str(index))
    assert res.exit_code == 1 and "lacks 'dim'" in _error(res)
    path.write_bytes(b"\x80garbage" * 50)
    Path(f"{path}.json").write_text((root / "old.onnx.json").read_text())
    res = _serve("--onnx", str(path), "--index", str(index))
    assert res.exit_code == 1 and "is not the file" in _error(res)


def test_serve_refuses_run_and_onnx_together(root, index):
    from dmlkit.service import load_embedder

    for run in (root / "run", root / "no_such_run"):
        res = _serve("--onnx", str(root / "old.onnx"), "--run", str(run), "--index", str(index))
        assert res.exit_code == 1
        assert "are two sources of the served model: give one" in _error(res)
    with pytest.raises(ValueError, match="two sources"):
        load_embedder(root / "run", root / "old.onnx")
    assert not Path(f"{index}.lock").exists()


# -- dmlkit export ------------------------------------------------------------------------


def test_export_refuses_a_path_inside_a_saved_index(root, index):
    before = {p.name: p.read_bytes() for p in index.iterdir()}
    res = runner.invoke(app, ["export", str(root / "run"), "--out",
                              str(index / "vectors.npy"), "--force"])
    assert res.exit_code == 1 and "a saved dmlkit-index directory" in _error(res)
    assert {p.name: p.read_bytes() for p in index.iterdir()} == before


def test_export_of_a_run_without_model_pt_notes_and_records_its_checkpoint(root, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    (run / "model.pt").unlink()
    res = runner.invoke(app, ["export", str(run), "-f", "torchscript", "--out",
                              str(tmp_path / "m.pt")])
    assert res.exit_code == 0, res.output
    assert f"note: {run} has no model.pt: exporting the weights of its checkpoint" in res.stderr
    info = json.loads((tmp_path / "m.pt.json").read_text())
    assert info["weights"] == "checkpoint.pt" and "epoch 1" in info["weights_note"]
    res = runner.invoke(app, ["export", str(root / "run"), "-f", "torchscript", "--out",
                              str(tmp_path / "n.pt")])
    assert "note:" not in res.stderr
    info = json.loads((tmp_path / "n.pt.json").read_text())
    assert info["weights"] == "model.pt" and "weights_note" not in info


def test_an_image_folder_export_records_the_0_1_scale_not_its_extremes():
    from dmlkit.runs.export import input_description
    from dmlkit.runs.queries import InputSpec

    spec = InputSpec((1, 10, 13), "float32", 0.0275, 0.945)
    data = SimpleNamespace(name="image_folder", tuples=None, features=None,
                           color="grayscale", x_key="x")
    run = SimpleNamespace(config=SimpleNamespace(data=data), model=torch.nn.Identity())
    info = input_description(run, (1, 10, 13), spec)
    assert info["input_range"] == [0.0, 1.0]
    assert "divided by 255" in info["input_note"] and "[0, 1]" in info["input_note"]
    data.name = "npz"  # an array's values: the range they reach
    info = input_description(run, (1, 10, 13), spec)
    assert info["input_range"] == [0.0275, 0.945] and "255" not in info["input_note"]


# -- dmlkit index build of unlabelled inputs ----------------------------------------------


def test_index_build_takes_inputs_without_labels(root, tmp_path):
    x = np.random.default_rng(0).random((7, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", x=x)
    for data in ("x.npy", "x.npz"):
        out = tmp_path / f"idx_{data[2:]}"
        res = runner.invoke(app, ["index", "build", str(root / "run"), "--data",
                                  str(tmp_path / data), "--out", str(out)])
        assert res.exit_code == 0, res.output
        from dmlkit.index import load_index

        index = load_index(out)
        assert index.ntotal == 7 and index.info["input_shape"] == [1, 8, 8]
    res = runner.invoke(app, ["search", str(tmp_path / "idx_npy"), "-q", str(tmp_path / "x.npy"),
                              "-k", "1", "--as", "inputs", "--json"])
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)
    assert [q["neighbours"][0]["id"] for q in hits] == list(range(7))
    assert all(q["neighbours"][0]["label"] is None for q in hits)
