"""Option mistakes of fewshot, evaluate, index build, text embed and tune end in one
``error:`` line naming the option and what to do; an nprobe past an IVF index's lists is
clamped and said once."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture()
def emb(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), 20)
    x = rng.normal(size=(len(y), 8)).astype(np.float32) + y[:, None]
    path = tmp_path / "emb.npz"
    np.savez(path, embeddings=x, labels=y)
    return path


def _error_line(res) -> str:  # noqa: ANN001
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


# -- fewshot ---------------------------------------------------------------------------
@pytest.mark.parametrize(("given", "words"), [
    (["--support", "S", "--query", "S", "--episodes", "S"], "not both or neither"),
    (["--support", "S", "--episodes", "S"], "not both or neither"),
    ([], "not both or neither"),
    (["--support", "S"], "--support needs --query"),
    (["--query", "S"], "--query needs --support"),
])
def test_fewshot_takes_one_mode(emb, tmp_path, given, words):
    args = [str(emb) if a == "S" else a for a in given]
    res = runner.invoke(app, ["fewshot", *args, "--n-episodes", "3", "-o",
                              str(tmp_path / "f.json")])
    assert res.exit_code == 1 and words in _error_line(res)
    assert not (tmp_path / "f.json").exists()


@pytest.mark.parametrize("ways", ["0", "-3", "5,0"])
def test_fewshot_no_ways_is_not_called_one_class(emb, tmp_path, ways):
    res = runner.invoke(app, ["fewshot", "--episodes", str(emb), f"--way={ways}", "-o",
                              str(tmp_path / "f.json")])
    line = _error_line(res)
    assert res.exit_code == 1 and "--way must be 2 or more" in line
    assert "one class to choose" not in line and "draws none" in line


def test_fewshot_one_way_keeps_its_reason(emb, tmp_path):
    res = runner.invoke(app, ["fewshot", "--episodes", str(emb), "--way", "1", "-o",
                              str(tmp_path / "f.json")])
    assert res.exit_code == 1 and "a 1-way episode has one class" in _error_line(res)


@pytest.mark.parametrize("count", ["99999999999999999999", "1000001", "0"])
def test_fewshot_refuses_absurd_episode_counts(emb, tmp_path, count):
    res = runner.invoke(app, ["fewshot", "--episodes", str(emb), "--n-episodes", count,
                              "-o", str(tmp_path / "f.json")])
    line = _error_line(res)
    assert res.exit_code == 1 and line.startswith("error: --n-episodes must be")
    assert "dimension" not in line


# -- evaluate --------------------------------------------------------------------------
@pytest.mark.parametrize(("count", "words"), [
    ("0", "--episodes must be a positive number"), ("-2", "--episodes must be a positive"),
    ("99999999999999999999", "--episodes must be at most 1,000,000")])
def test_evaluate_episodes_limits_are_error_lines(emb, tmp_path, count, words):
    res = runner.invoke(app, ["evaluate", str(emb), "--episodes", count, "-o",
                              str(tmp_path / "ev.json")])
    assert res.exit_code == 1 and words in _error_line(res)  # (no usage panel)
    assert not (tmp_path / "ev.json").exists()


# -- index build, text embed, tune -----------------------------------------------------
@pytest.mark.parametrize("name", ["nonexist.npz", "nonexist"])
def test_index_build_of_a_missing_source_says_it_does_not_exist(tmp_path, name):
    res = runner.invoke(app, ["index", "build", str(tmp_path / name), "--out",
                              str(tmp_path / "idx")])
    line = _error_line(res)
    assert res.exit_code == 1 and f"{name} does not exist" in line
    assert ".npz/.npy of embeddings" in line and "(no config.yaml)" not in line


def test_text_embed_of_a_directory_says_it_is_one(tmp_path):
    (tmp_path / "texts.csv").mkdir()
    res = runner.invoke(app, ["text", "embed", str(tmp_path / "texts.csv"), "-o",
                              str(tmp_path / "t.npz")])
    line = _error_line(res)
    assert res.exit_code == 1 and "is a directory, not a text data file" in line
    assert "not found" not in line


def test_tune_into_a_file_names_it_and_what_to_do(tmp_path):
    pytest.importorskip("optuna")
    (tmp_path / "existing.yaml").write_text("x: 1\n")
    for out in ("existing.yaml", "existing.yaml/sub"):
        res = runner.invoke(app, ["tune", str(CONFIGS / "digits_unseen_tune.yaml"), "-n", "1",
                                  "--out", str(tmp_path / out)])
        line = _error_line(res)
        assert res.exit_code == 1 and "Errno" not in line
        assert "existing.yaml is a file, not a directory" in line
        assert line.endswith("choose another --out")


# -- nprobe past the lists -------------------------------------------------------------
def test_nprobe_past_the_lists_is_clamped_and_said_once(tmp_path):
    pytest.importorskip("faiss")
    from dmlkit.index import FaissIndex, load_index

    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        index = FaissIndex(8, "l2", "IVF4,Flat", nprobe=1000)
        index.add(x)
    assert [str(w.message)[:35] for w in seen] == ["nprobe 1000 is more than the 4 list"]
    assert index.nprobe == 4  # (saved as searched)
    index.save(tmp_path / "idx")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert load_index(tmp_path / "idx").nprobe == 4
    assert not seen


def test_an_index_saved_with_nprobe_past_its_lists_warns_once_on_load(tmp_path):
    pytest.importorskip("faiss")
    import json

    from dmlkit.index import FaissIndex, load_index

    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    index = FaissIndex(8, "l2", "IVF4,Flat", nprobe=2)
    index.add(x)
    index.save(tmp_path / "idx")
    manifest_path = tmp_path / "idx" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["params"]["nprobe"] = 1000  # (as an index built before the clamp stored it)
    manifest_path.write_text(json.dumps(manifest))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        loaded = load_index(tmp_path / "idx")
        loaded.search(x[:2], 3)
    assert len(seen) == 1 and "nprobe 1000 is more than the 4 lists" in str(seen[0].message)
    assert loaded.nprobe == 4
