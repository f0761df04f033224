"""Rebuilding an index folder that holds other files, searches that find fewer than k
neighbours, and a moved run of an index."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.index import ExactIndex

runner = CliRunner()


def _emb(tmp_path, n=900, dim=8):  # noqa: ANN001, ANN202
    rng = np.random.default_rng(0)
    path = tmp_path / "emb.npz"
    np.savez(path, embeddings=rng.normal(size=(n, dim)).astype(np.float32), labels=np.arange(n) % 5)
    return path


def test_rebuild_refuses_a_folder_holding_other_files_and_keeps_them(tmp_path):
    emb = _emb(tmp_path, n=50)
    out = tmp_path / "idx"
    res = runner.invoke(app, ["index", "build", str(emb), "--out", str(out)])
    assert res.exit_code == 0, res.output
    (out / "NOTES.txt").write_text("mine")
    (out / "sub").mkdir()
    (out / "sub" / "f").write_text("mine too")
    res = runner.invoke(app, ["index", "build", str(emb), "--out", str(out)])
    assert res.exit_code != 0
    err = res.output.strip()
    assert "NOTES.txt" in err and "sub" in err and "--out" in err
    assert len(err.splitlines()) == 1
    assert (out / "NOTES.txt").read_text() == "mine"
    assert (out / "sub" / "f").read_text() == "mine too"
    ix = ExactIndex(8)  # the Python API refuses it too
    ix.add(np.zeros((2, 8), np.float32))
    with pytest.raises(FileExistsError, match="NOTES.txt"):
        ix.save(out)
    assert (out / "sub" / "f").is_file()


def test_rebuild_replaces_a_folder_of_only_the_index_files(tmp_path):
    out = tmp_path / "idx"
    first = ExactIndex(8)
    first.add(np.zeros((3, 8), np.float32))
    first.save(out)
    second = ExactIndex(8)
    second.add(np.ones((5, 8), np.float32))
    second.save(out)
    from dmlkit.index import load_index

    assert load_index(out).ntotal == 5


def test_search_notes_once_when_probed_lists_hold_fewer_than_k(tmp_path):
    pytest.importorskip("faiss")
    emb = _emb(tmp_path)
    out = tmp_path / "idx"
    res = runner.invoke(
        app,
        ["index", "build", str(emb), "--out", str(out), "--factory", "IVF4,Flat", "--nprobe", "1"],
    )
    assert res.exit_code == 0, res.output
    q = tmp_path / "q.npy"
    np.save(q, np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32))
    res = runner.invoke(app, ["search", str(out), "-q", str(q), "-k", "500", "--json"])
    assert res.exit_code == 0, res.output
    assert res.stderr.count("--nprobe") == 1
    assert "fewer than" in res.stderr


def test_search_notes_when_k_exceeds_the_index_size(tmp_path):
    emb = _emb(tmp_path, n=20)
    out = tmp_path / "idx"
    assert runner.invoke(app, ["index", "build", str(emb), "--out", str(out)]).exit_code == 0
    q = tmp_path / "q.npy"
    np.save(q, np.zeros((2, 8), np.float32))
    res = runner.invoke(app, ["search", str(out), "-q", str(q), "-k", "50", "--json"])
    assert res.exit_code == 0, res.output
    assert res.stderr.count("holds 20 items") == 1
    assert "--nprobe" not in res.stderr
    res = runner.invoke(app, ["search", str(out), "-q", str(q), "-k", "5", "--json"])
    assert res.stderr == ""


def test_raw_search_names_the_moved_run_recorded_in_the_index(tmp_path):
    from dmlkit.config import Config
    from dmlkit.data import load_digits
    from dmlkit.training.build import build_model, resolve_config

    cfg = Config.from_dict(
        {
            "name": "tiny",
            "data": {"name": "digits", "max_per_class": 5, "max_heldout_per_class": 5},
            "model": {"name": "mlp", "dim": 4, "hidden": [8]},
            "training": {"epochs": 1},
        }
    )
    resolved = resolve_config(cfg, load_digits().x[0], 10)
    run = tmp_path / "run"
    run.mkdir()
    resolved.to_yaml(run / "config.yaml")
    torch.manual_seed(0)
    torch.save(build_model(resolved).state_dict(), run / "model.pt")
    res = runner.invoke(app, ["index", "build", str(run), "--out", str(tmp_path / "idx")])
    assert res.exit_code == 0, res.output
    raw = tmp_path / "raw.npy"
    np.save(raw, load_digits().x[:2].numpy().astype(np.float32))
    shutil.move(run, tmp_path / "moved")
    res = runner.invoke(app, ["search", str(tmp_path / "idx"), "-q", str(raw)])
    assert res.exit_code != 0
    err = res.output.strip()
    assert "recorded" in err and "--run" in err and "give the folder" not in err
