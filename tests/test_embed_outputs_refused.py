"""`dmlkit embed` never writes over its inputs, a run's files or a saved directory, and
writes its .npz whole; a config path that is a directory or holds unknown keys is named."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.config import Config

runner = CliRunner()


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed_outputs")
    cfg = root / "tiny.yaml"
    cfg.write_text(
        "name: tiny\ndata: {name: digits, max_per_class: 10, max_heldout_per_class: 10}\n"
        "model: {name: mlp, dim: 8, hidden: [16]}\nloss: {name: triplet_margin, margin: 0.2}\n"
        "miner: {name: batch_hard}\nsampler: {name: m_per_class, m: 2, batch_size: 10}\n"
        "training: {epochs: 1, num_threads: 1}\n"
    )
    out = root / "run"
    res = runner.invoke(app, ["train", str(cfg), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture
def feats(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "feats.npz"
    np.savez(path, feats=rng.random((30, 64)).astype(np.float32), cls=np.repeat(np.arange(3), 10))
    return path


def _embed(run, *args):
    return runner.invoke(app, ["embed", str(run), *args])


def test_embed_refuses_an_out_that_is_its_data_file(run, feats, monkeypatch):
    before = _digest(feats)
    res = _embed(
        run, "--data", str(feats), "--x-key", "feats", "--labels-key", "cls", "--out", str(feats)
    )
    assert res.exit_code == 1
    assert "--data" in res.output and "would replace it" in res.output
    assert _digest(feats) == before
    # the same file named another way (relative, without the suffix numpy adds)
    monkeypatch.chdir(feats.parent)
    res = _embed(
        run, "--data", str(feats), "--x-key", "feats", "--labels-key", "cls", "--out", "feats"
    )
    assert res.exit_code == 1 and "would replace it" in res.output
    assert _digest(feats) == before


def test_embed_refuses_a_run_file_and_a_path_inside_a_saved_store(run, feats, tmp_path):
    res = _embed(run, "--data", "digits", "--out", str(run / "model.npz"))
    assert res.exit_code == 0, res.output  # (a new file in the run: not one of its own)
    (run / "model.npz").unlink()
    store = tmp_path / "store"
    res = _embed(
        run,
        "--data",
        str(feats),
        "--x-key",
        "feats",
        "--labels-key",
        "cls",
        "--out",
        str(store),
        "--store",
    )
    assert res.exit_code == 0, res.output
    files = _tree(store)
    res = _embed(run, "--data", "digits", "--out", str(store / "e.npz"))
    assert res.exit_code == 1 and "saved dmlkit-embedding-store/1" in res.output
    assert _tree(store) == files


def test_embed_npz_is_written_through_a_temporary_file(run, tmp_path, monkeypatch):
    out = tmp_path / "e.npz"
    out.write_bytes(b"earlier")

    def failing(file, **arrays):
        if hasattr(file, "write"):
            file.write(b"half")
        else:
            with open(file, "wb") as f:
                f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing)
    res = _embed(run, "--data", "digits", "--out", str(out))
    assert res.exit_code == 1 and "disk full" in res.output
    assert out.read_bytes() == b"earlier"
    assert _tree(tmp_path) == ["e.npz"]  # no temporary file left behind
    monkeypatch.undo()
    res = _embed(run, "--data", "digits", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert np.load(out)["embeddings"].shape == (1797, 8)
    assert _tree(tmp_path) == ["e.npz"]


def test_embed_store_refuses_the_run_directory_and_the_input_folder(run, tmp_path):
    files = _tree(run)
    res = _embed(run, "--data", "digits", "--out", str(run), "--store")
    assert res.exit_code == 1 and "run director" in res.output
    assert _tree(run) == files
    assert runner.invoke(app, ["evaluate", str(run)]).exit_code == 0
    images = tmp_path / "images"
    for name in ("a", "b"):
        (images / name).mkdir(parents=True)
    res = _embed(run, "--data", str(images), "--out", str(images), "--store")
    assert res.exit_code == 1 and "--data" in res.output
    assert _tree(images) == ["a", "b"]


def test_a_config_path_that_is_a_directory_is_named(tmp_path):
    with pytest.raises(ValueError, match="is a directory.*YAML") as err:
        Config.from_yaml(tmp_path)
    assert "config.yaml" not in str(err.value)
    (tmp_path / "config.yaml").write_text("name: x\n")
    with pytest.raises(ValueError, match=f"{tmp_path / 'config.yaml'}"):
        Config.from_yaml(tmp_path)
    res = runner.invoke(app, ["crossval", str(tmp_path)])
    assert res.exit_code != 0 and "is a directory" in res.output
    assert "not found" not in res.output


def test_unknown_keys_in_a_config_file_name_the_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("::: not yaml [\n")
    with pytest.raises(ValueError, match="unknown key") as err:
        Config.from_yaml(path)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match="unknown key") as err:  # text: no file to name
        Config.from_yaml("bogus: 1\nother: 2\n")
    assert "config.yaml" not in str(err.value)
