"""``--device`` on the commands that embed with a run's model (verify, identify, fewshot,
detect-anomalies, report, explain), checked as ``dmlkit evaluate`` checks it, and
``--k`` beside ``-k`` on ``dmlkit recommend evaluate`` and ``recommend top``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import INTERACTIONS, only_error_line, trained_recommender
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()

COMMANDS = ("verify", "identify", "fewshot", "detect-anomalies", "report", "explain")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A one-epoch MLP run on digits (60 training, 40 held-out items of 10 classes), and
    ``data.npz`` (raw held-out-like digits with labels) beside it."""
    from dmlkit.config import Config
    from dmlkit.data import load_digits
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("device")
    train_run(Config.from_dict({
        "name": "tiny", "data": {"name": "digits", "max_per_class": 6,
                                 "max_heldout_per_class": 4},
        "model": {"name": "mlp", "dim": 4, "hidden": [8]},
        "loss": {"name": "triplet_margin", "margin": 0.2},
        "sampler": {"name": "m_per_class", "m": 2, "batch_size": 8},
        "training": {"epochs": 1, "num_threads": 1, "progress": False}}), root / "run",
        log=lambda *a: None)
    digits = load_digits()
    rows = np.concatenate([np.flatnonzero(digits.labels.numpy() == c)[:12] for c in range(5)])
    np.savez(root / "data.npz", x=digits.x.numpy()[rows], labels=digits.labels.numpy()[rows])
    return root / "run"


def _args(command: str, run_dir: Path, out: Path) -> list[str]:
    """A working call of ``command`` on ``run_dir`` writing under ``out``."""
    data = str(run_dir.parent / "data.npz")
    return {
        "verify": ["verify", str(run_dir), "--data", data, "--bootstrap", "5",
                   "-o", str(out / "v.json")],
        "identify": ["identify", str(run_dir), "--gallery", data, "--query", data,
                     "--closed-set", "-o", str(out / "i.json")],
        "fewshot": ["fewshot", str(run_dir), "--episodes", data, "--way", "2", "--shot", "1",
                    "--n-query", "2", "--n-episodes", "3", "-o", str(out / "f.json")],
        "detect-anomalies": ["detect-anomalies", str(run_dir), "--normal", data,
                             "--data", data, "-o", str(out / "a.csv")],
        "report": ["report", str(run_dir), "--projection", "pca", "--max-items", "20",
                   "-o", str(out / "r.html")],
        "explain": ["explain", str(run_dir), "--a", "heldout:0", "--b", "heldout:1",
                    "--steps", "2", "-o", str(out / "explain")],
    }[command]


@pytest.mark.parametrize("command", COMMANDS)
def test_device_is_in_the_help(command):
    res = runner.invoke(app, [command, "--help"])
    assert res.exit_code == 0, res.output
    assert "--device" in res.output


@pytest.mark.parametrize("command", COMMANDS)
def test_device_cpu_runs_end_to_end(command, run, tmp_path):
    res = runner.invoke(app, [*_args(command, run, tmp_path), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output or "flagged" in res.output or "explain.json" in res.output


def _evaluate_error(run: Path, device: str, tmp_path: Path) -> str:
    res = runner.invoke(app, ["evaluate", str(run), "--device", device,
                              "-o", str(tmp_path / "e.json")])
    return only_error_line(res)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("device", ["tpu", "cuda"])
def test_unusable_device_is_refused_as_evaluate_refuses_it(command, device, run, tmp_path):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    expected = _evaluate_error(run, device, tmp_path)
    res = runner.invoke(app, [*_args(command, run, tmp_path), "--device", device])
    assert only_error_line(res) == expected
    assert not any(tmp_path.glob("[virfa]*.*")) and not (tmp_path / "explain").exists()


def test_fewshot_loads_and_embeds_the_episodes_on_the_device(run, tmp_path, monkeypatch):
    import dmlkit.runs

    loaded, embedded = [], []
    real_load, real_embed = dmlkit.runs.load_run, dmlkit.runs.embed

    def load_run(run_dir, device="cpu", **kwargs):
        loaded.append(str(device))  # (a model moved to "cpu:0" is on the CPU)
        return real_load(run_dir, "cpu", **kwargs)

    def embed(model, data, *args, device="cpu", **kwargs):
        embedded.append(str(device))
        return real_embed(model, data, *args, device="cpu", **kwargs)

    monkeypatch.setattr(dmlkit.runs, "load_run", load_run)
    monkeypatch.setattr(dmlkit.runs, "embed", embed)
    res = runner.invoke(app, [*_args("fewshot", run, tmp_path), "--device", "cpu:0"])
    assert res.exit_code == 0, res.output
    assert set(loaded) == {"cpu:0"} and embedded == ["cpu:0"]
    assert "2way_1shot" in json.loads((tmp_path / "f.json").read_text())


@pytest.mark.parametrize("command", ["verify", "identify", "detect-anomalies", "report",
                                     "explain"])
def test_a_device_the_command_cannot_embed_on_is_refused(command, run, tmp_path,
                                                         monkeypatch):
    import dmlkit.training.device

    monkeypatch.setattr(dmlkit.training.device, "check_device",
                        lambda device, where="device": torch.device("cuda"))
    res = runner.invoke(app, [*_args(command, run, tmp_path), "--device", "cuda"])
    only_error_line(res, "--device cuda", "CPU only", "--device cpu")
    assert not any(tmp_path.glob("[virfa]*.*")) and not (tmp_path / "explain").exists()


def test_device_is_checked_without_a_run(tmp_path):
    x = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    np.savez(tmp_path / "e.npz", x=x, labels=np.repeat(np.arange(4), 10))
    res = runner.invoke(app, ["verify", "--data", str(tmp_path / "e.npz"), "--bootstrap", "5",
                              "--device", "tpu", "-o", str(tmp_path / "v.json")])
    assert "--device" in only_error_line(res)
    res = runner.invoke(app, ["verify", "--data", str(tmp_path / "e.npz"), "--bootstrap", "5",
                              "--device", "cpu", "-o", str(tmp_path / "v.json")])
    assert res.exit_code == 0, res.output


ROWS = INTERACTIONS


@pytest.fixture
def recommender(tmp_path):
    return trained_recommender(runner, app, tmp_path)


@pytest.mark.parametrize("spelling", ["-k", "--k"])
def test_recommend_top_takes_k_in_both_spellings(recommender, spelling):
    _, model = recommender
    res = runner.invoke(app, ["recommend", "top", str(model), "-u", "u0", spelling, "2"])
    assert res.exit_code == 0, res.output
    assert len(res.stdout.split("\t")[1].split()) == 2


@pytest.mark.parametrize("spelling", ["-k", "--k"])
def test_recommend_evaluate_takes_k_in_both_spellings(recommender, spelling, tmp_path):
    data, model = recommender
    res = runner.invoke(app, ["recommend", "evaluate", str(model), "--data", str(data),
                              spelling, "2", "--out", str(tmp_path / "e.json")])
    assert res.exit_code == 0, res.output
    assert "recall_at_2" in json.loads((tmp_path / "e.json").read_text())


@pytest.mark.parametrize("command", ["top", "evaluate"])
def test_recommend_suggests_k_for_a_misspelled_long_option(recommender, command):
    data, model = recommender
    given = ["-u", "u0"] if command == "top" else ["--data", str(data)]
    res = runner.invoke(app, ["recommend", command, str(model), *given, "--kk", "3"])
    assert res.exit_code == 2
    assert "--k" in res.output.split("No such option: --kk", 1)[1]


def test_weights_load_onto_an_indexed_cpu_device(tmp_path):
    """``cpu:0`` names the CPU: a good weights file loads onto it (it is not called
    corrupt)."""
    from dmlkit.training.checkpoint import torch_load

    torch.save({"w": torch.ones(2)}, tmp_path / "model.pt")
    for device in ("cpu:0", torch.device("cpu", 0)):
        assert torch.equal(torch_load(tmp_path / "model.pt", device)["w"], torch.ones(2))
