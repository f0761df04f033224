"""`dmlkit train` / `dmlkit embed` end to end on a tiny run (typer's CliRunner)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.training import embed, load_run
from dmlkit.training.run import METRIC_KEYS

TINY = """
name: tiny
data: {name: digits, max_per_class: 10, max_heldout_per_class: 10}
model: {name: mlp, dim: 8, hidden: [16]}
loss: {name: triplet_margin, margin: 0.2}
miner: {name: batch_hard}
sampler: {name: m_per_class, m: 2, batch_size: 10}
training: {epochs: 2, num_threads: 1}
"""

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    (root / "tiny.yaml").write_text(TINY)
    out = root / "run"
    result = runner.invoke(
        app, ["train", str(root / "tiny.yaml"), "--out", str(out), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "MAP@R" in result.output and str(out) in result.output
    return out


def test_run_directory_contents(run_dir):
    for name in ("config.yaml", "model.pt", "checkpoint.pt", "metrics.json", "train.log"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert 0.0 <= metrics[key] <= 1.0 and 0.0 <= metrics["baseline"][key] <= 1.0
    assert len((run_dir / "train.log").read_text().splitlines()) == 2
    state = torch.load(run_dir / "model.pt", weights_only=True)
    run = load_run(run_dir)
    assert not run.model.training
    for key, value in run.model.state_dict().items():
        assert torch.equal(value, state[key])
    assert run.config.model["in_features"] == 64  # resolved shape saved with the run


def test_embed_command(run_dir, tmp_path):
    out = tmp_path / "emb.npz"
    result = runner.invoke(app, ["embed", str(run_dir), "--data", "heldout", "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = np.load(out)
    run = load_run(run_dir)
    from dmlkit.training import build_splits

    _, heldout = build_splits(run.config)
    expected, labels = embed(run.model, heldout)
    np.testing.assert_allclose(saved["embeddings"], expected.numpy(), rtol=1e-6, atol=1e-6)
    assert saved["labels"].tolist() == labels.tolist() and saved["embeddings"].shape[1] == 8
    result = runner.invoke(app, ["embed", str(run_dir), "--data", "digits", "--out", str(out)])
    assert result.exit_code == 0 and np.load(out)["embeddings"].shape == (1797, 8)


def test_resume_extends_and_refuses_overwrite(run_dir, tmp_path):
    again = runner.invoke(app, ["train", str(run_dir / "config.yaml"), "--out", str(run_dir)])
    assert again.exit_code == 1 and "already holds a run" in again.output
    result = runner.invoke(
        app, ["train", "--resume", "--out", str(run_dir), "--epochs", "3", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "after epoch 2" in result.output
    assert len((run_dir / "train.log").read_text().splitlines()) == 3


def test_clear_errors(tmp_path):
    result = runner.invoke(app, ["train", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 1 and "config file not found" in result.output
    (tmp_path / "bad.yaml").write_text("training: {epochz: 1}\n")
    result = runner.invoke(app, ["train", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 1 and "epochz" in result.output
    result = runner.invoke(app, ["train", "--resume", "--out", str(tmp_path / "none")])
    assert result.exit_code == 1 and "config.yaml" in result.output


def test_help_does_not_import_torch():
    code = "import sys, dmlkit.cli.main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_set_overrides_any_config_value(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    out = tmp_path / "run"
    result = runner.invoke(app, [
        "train", str(tmp_path / "tiny.yaml"), "--out", str(out), "--no-progress",
        "--set", "training.epochs=1", "--set", "model.dim=4", "--set", "data.seed=3",
        "--set", "loss={name: contrastive, neg_margin: 0.7}"])  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = (out / "config.yaml").read_text()
    import yaml

    cfg = yaml.safe_load(saved)
    assert cfg["training"]["epochs"] == 1 and cfg["model"]["dim"] == 4
    assert cfg["data"]["seed"] == 3
    assert cfg["loss"]["name"] == "contrastive" and cfg["loss"]["neg_margin"] == 0.7
    for bad, message in (("training.epoch=1", "unknown key"), ("nokey", "KEY=VALUE"),
                         ("model.name.x=1", "holds a value"), ("training.epochs=[1", "not YAML")):
        res = runner.invoke(app, ["train", str(tmp_path / "tiny.yaml"), "--out",
                                  str(tmp_path / "bad"), "--set", bad])  # fmt: skip
        assert res.exit_code != 0 and message in res.output, (bad, res.output)
        assert not (tmp_path / "bad").exists()
    # on resume, --set may repeat the saved config or raise the epochs; not change it
    res = runner.invoke(app, ["train", "--resume", "--out", str(out), "--set", "model.dim=8"])
    assert res.exit_code != 0 and "--set differs in model.dim: 4 -> 8" in res.output
    assert "dmlkit train --resume --out" in res.output
    res = runner.invoke(app, ["train", str(tmp_path / "tiny.yaml"), "--resume", "--out",
                              str(out), "--no-progress", "--set", "model.dim=4",
                              "--set", "data.seed=3", "--set",
                              "loss={name: contrastive, neg_margin: 0.7}",
                              "--set", "training.epochs=2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert len((out / "train.log").read_text().splitlines()) == 2  # one more epoch


@pytest.mark.parametrize("args, words", [
    (["--epochs", "0"], "training.epochs"),
    (["--epochs", "-1"], "training.epochs"),
    (["--seed", "-3"], "--seed must be an integer from 0 to 9223372036854775807"),
    (["--set", "training.grad_clip=-1"], "training.grad_clip must be a number > 0"),
    (["--set", "training.grad_clip=0"], "training.grad_clip must be a number > 0"),
    (["--set", "training.num_threads=0"], "training.num_threads must be an integer >= 1"),
    (["--set", "model.dim=32.5"], "model.dim must be int, got 32.5"),
    (["--set", "model.hidden=abc"], "model.hidden must be Sequence[int], got 'abc'"),
    (["--set", "loss.margin=wide"], "loss.margin must be float, got 'wide'"),
    (["--set", "sampler.batch_size=3"], "multiple of m"),  # found while building the sampler
])
def test_bad_settings_fail_before_training_and_leave_no_run_directory(tmp_path, args, words):
    (tmp_path / "tiny.yaml").write_text(TINY)
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(tmp_path / "tiny.yaml"), "--out", str(out),
                                 "--no-progress", *args])
    assert result.exit_code != 0 and words in result.output, result.output
    assert not out.exists()


@pytest.mark.parametrize("cause", ["broken model", "first line of the cause\nframe 0\nframe 1"])
def test_a_run_that_fails_in_its_first_epoch_does_not_offer_a_resume(tmp_path, cause):
    """...and its log line is one line (the first of a multi-line error)."""
    import yaml

    from dmlkit.config import Config
    from dmlkit.training import Trainer
    from dmlkit.training.run import build_splits

    class Broken(torch.nn.Linear):
        def forward(self, x):
            raise RuntimeError(cause)

    cfg = Config.from_dict(yaml.safe_load(TINY))
    train, _ = build_splits(cfg)
    lines = []
    trainer = Trainer(cfg, train, out_dir=tmp_path / "run", model=Broken(64, 8),
                      log=lines.append)
    with pytest.raises(RuntimeError, match=cause.splitlines()[-1]):
        trainer.fit()
    assert "training stopped during epoch 1" in lines[-1] and "resume" not in lines[-1]
    first, more = cause.splitlines()[0], len(cause.splitlines()) > 1
    assert "\n" not in lines[-1]
    assert f"(RuntimeError: {first}{' ...' if more else ''})" in lines[-1]


def test_a_failed_checkpoint_write_names_the_checkpoint_really_kept(tmp_path, monkeypatch):
    """Epoch 2's save fails: the kept checkpoint is epoch 1's, and the log says so."""
    import yaml

    from dmlkit.config import Config
    from dmlkit.training import Trainer, load_checkpoint
    from dmlkit.training import trainer as trainer_module
    from dmlkit.training.build import resolve_config
    from dmlkit.training.run import build_splits

    cfg = Config.from_dict(yaml.safe_load(TINY))
    cfg.training.epochs = 3
    train, _ = build_splits(cfg)
    cfg = resolve_config(cfg, train.x[0], int(train.labels.max()) + 1)
    lines = []
    trainer = Trainer(cfg, train, out_dir=tmp_path / "run", log=lines.append)
    real, calls = trainer_module.atomic_save, []

    def save(obj, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(obj, path)

    monkeypatch.setattr(trainer_module, "atomic_save", save)
    with pytest.raises(OSError, match="No space"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1
    assert "training stopped finishing epoch 2" in lines[-1]
    assert "checkpoint of epoch 1 kept at" in lines[-1]


def test_a_callback_failing_after_a_saved_epoch_says_after_that_epoch(tmp_path):
    import yaml

    from dmlkit.config import Config
    from dmlkit.training import Trainer
    from dmlkit.training.build import resolve_config
    from dmlkit.training.run import build_splits

    cfg = Config.from_dict(yaml.safe_load(TINY))
    cfg.training.epochs = 3
    train, _ = build_splits(cfg)
    cfg = resolve_config(cfg, train.x[0], int(train.labels.max()) + 1)

    def fail(trainer, record):
        if record["epoch"] == 2:
            raise OSError("callback failed")

    lines = []
    trainer = Trainer(cfg, train, out_dir=tmp_path / "run", log=lines.append, callbacks=(fail,))
    with pytest.raises(OSError, match="callback failed"):
        trainer.fit()
    assert "training stopped after epoch 2" in lines[-1]
    assert "checkpoint of epoch 2 kept at" in lines[-1]


def test_saved_files_follow_the_umask(run_dir):
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("model.pt", "checkpoint.pt", "config.yaml"):
        mode = (run_dir / name).stat().st_mode & 0o777
        assert mode == 0o666 & ~mask, (name, oct(mode))


def test_embed_names_the_file_it_wrote(run_dir, tmp_path):
    result = runner.invoke(app, ["embed", str(run_dir), "--out", str(tmp_path / "emb")])
    assert result.exit_code == 0 and f"to {tmp_path / 'emb.npz'}" in result.output
    assert (tmp_path / "emb.npz").is_file()


@pytest.mark.parametrize("setting, words", [
    ("loss=center", "remove the miner"),  # (arcface takes mined tuples, as weights)
    ("miner=packed_triplets", "takes no labels"),
    ("model={name: speaker_encoder}", "cannot take this data's inputs"),
    ("loss={name: ranked_list}", "needs parameter(s) ['margin', 'Tn']"),
])  # fmt: skip
def test_parts_that_cannot_train_on_the_data_are_refused_before_any_epoch(
        tmp_path, setting, words):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--epochs", "1", "--no-progress", "--out", str(out),
                              "--set", "data.max_per_class=20", "--set", setting])
    assert res.exit_code == 1 and words in res.output, res.output
    assert "epoch" not in res.output.lower() and not out.exists()


def test_a_run_records_its_data_files_absolute_and_resumes_from_anywhere(tmp_path, monkeypatch):
    import yaml

    rng = np.random.default_rng(0)
    home = tmp_path / "home"
    home.mkdir()
    np.savez(home / "d.npz", x=rng.normal(size=(60, 6)).astype(np.float32),
             labels=np.arange(60) % 3)
    (home / "c.yaml").write_text(
        "name: rel\ndata: {name: npz, path: d.npz}\nmodel: {name: mlp, dim: 4, hidden: [8]}\n"
        "sampler: {name: m_per_class, m: 4, batch_size: 12}\ntraining: {epochs: 1}\n")
    monkeypatch.chdir(home)
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "c.yaml", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["path"] == str(home / "d.npz")  # the file the run read
    res = runner.invoke(app, ["train", "c.yaml", "--resume", "--out", str(out), "--epochs", "2",
                              "--no-progress"])  # the relative config names the same file
    assert res.exit_code == 0, res.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no d.npz here: the run still finds its own data
    res = runner.invoke(app, ["train", "--resume", "--out", str(out), "--epochs", "3",
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    assert len((out / "train.log").read_text().splitlines()) == 3


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_stopped_torchrun_job_speaks_once_and_does_not_blame_an_interrupt(
        tmp_path, monkeypatch, rank):
    """torchrun stops every process when one fails: only rank 0 reports, and says the
    stop may come from another process, not that the user pressed Ctrl-C."""
    import dmlkit.training

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dmlkit.training, "train_run", stopped)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    result = CliRunner().invoke(app, ["train", "--epochs", "1", "--out", str(tmp_path / "r")])
    assert result.exit_code == 130
    if rank == "1":
        assert "error" not in result.output
    else:
        assert "another process of the job failed: if so, its error is above" in result.output
        assert "start again with the same command" not in result.output


def test_embed_keeps_the_class_names_of_each_file(run_dir, tmp_path):
    """Two files number their classes apart; the names saved with the ids say which is
    which (identify and index compare files by them)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    for name, digits in (("a", (3, 5)), ("b", (5, 7))):
        rows = np.isin(y, digits)
        np.savez(tmp_path / f"{name}.npz", x=(x[rows] / 16.0).astype(np.float32),
                 labels=np.searchsorted(digits, y[rows]),
                 class_names=np.array([f"digit{d}" for d in digits]))
        result = runner.invoke(app, ["embed", str(run_dir), "--data", str(tmp_path / f"{name}.npz"),
                                     "--out", str(tmp_path / f"{name}_emb.npz")])
        assert result.exit_code == 0, result.output
        saved = np.load(tmp_path / f"{name}_emb.npz")
        named = saved["class_names"][saved["labels"]]
        assert named.tolist() == [f"digit{d}" for d in y[rows]]


def test_a_missing_optional_package_is_one_error_line(tmp_path, monkeypatch):
    import dmlkit.text

    def missing(*args, **kwargs):
        raise ImportError("STS-B is read from the PyPI package x: pip install x")

    monkeypatch.setattr(dmlkit.text, "train_text_run", missing)
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "configs" / "stsb.yaml"
    result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1, result.output
    assert "error: STS-B is read from the PyPI package x: pip install x" in result.output
    assert "Traceback" not in result.output
