"""dmlkit tune: where its outputs may go (never a run directory, never in a saved one),
a --resume that finds no study says it started one, numbers written as 1e-3 among the
choices are numbers, and a Ctrl-C while the command starts exits 130 in one line."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tune_helpers import scored_at_once

from dmlkit.config import Config

needs_optuna = pytest.mark.skipif(
    importlib.util.find_spec("optuna") is None, reason="dmlkit tune needs optuna"
)

CONFIG = """
name: tiny
data: {{name: digits, split: classes, train_classes: [0, 1, 2, 3, 4, 5], test_classes: [6, 7],
       max_per_class: 16}}
model: {{name: mlp, in_features: 64, dim: 8, hidden: [16]}}
loss: {{name: triplet_margin, margin: 0.2}}
sampler: {{name: m_per_class, m: 4, batch_size: 8}}
training: {{epochs: 1, seed: 0, num_threads: 1, progress: false}}
tune:
  folds: 2
  space:
{space}
"""
LR_RANGE = "    optimizer.lr: {low: 0.001, high: 0.01}"
LR_CHOICES = """\
    optimizer.lr: {choices: [1e-3, 1e-2]}
    loss.margin: {low: 0.1, high: 0.3, when: {optimizer.lr: 0.001}}"""


def _config_text(space: str = LR_RANGE) -> str:
    return CONFIG.format(space=space)


@pytest.fixture
def scored(monkeypatch) -> list[Any]:
    """Trials scored at once (no training); the list holds each trial's config."""
    return scored_at_once(monkeypatch)


def _invoke(*args: str) -> Any:
    from typer.testing import CliRunner

    from dmlkit.cli.main import app

    return CliRunner().invoke(app, ["tune", *[str(a) for a in args]])


def _saved_index(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"format": "dmlkit-index", "files": {}}))
    (path / "vectors.npy").write_bytes(b"")
    return path


def _run_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(_config_text())
    (path / "model.pt").write_bytes(b"")
    return path


# -- where the study's files go ------------------------------------------------------


def _saved_folders_and_config(tmp_path: Path) -> tuple[Path, Path, Path, dict]:
    """A saved index ``idx``, a run directory ``run``, a tune config, and what the two
    folders hold (to check that a refusal left them as they were)."""
    idx = _saved_index(tmp_path / "idx")
    run = _run_dir(tmp_path / "run")
    config = tmp_path / "tiny.yaml"
    config.write_text(_config_text())
    return idx, run, config, {p: sorted(q.name for q in p.iterdir()) for p in (idx, run)}


@needs_optuna
@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("idx", "--out {p} is a saved dmlkit-index directory"),
        ("idx/sub", "--out {p} lies inside {idx}, a saved dmlkit-index directory"),
        ("run", "--out {p} is a run directory"),
    ],
)
def test_out_is_never_a_saved_or_run_directory(
    tmp_path: Path, scored: list[Any], where: str, expected: str
) -> None:
    idx, run, config, before = _saved_folders_and_config(tmp_path)
    out = tmp_path / where
    result = _invoke(config, "-n", "1", "--out", out)
    assert result.exit_code == 1, result.output
    line = expected.format(p=out, idx=idx.resolve())
    assert f"error: {line}" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not scored  # refused before any trial
    assert {p: sorted(q.name for q in p.iterdir()) for p in (idx, run)} == before


@needs_optuna
@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("idx", "is a saved dmlkit-index directory"),
        ("run", "is a run directory"),
        ("idx/sub", "a saved dmlkit-index directory"),
    ],
)
def test_a_sqlite_storage_file_is_never_put_in_a_saved_or_run_directory(
    tmp_path: Path, scored: list[Any], where: str, expected: str
) -> None:
    idx, run, config, before = _saved_folders_and_config(tmp_path)
    url = f"sqlite:///{tmp_path / where / 'study.db'}"
    result = _invoke(config, "-n", "1", "--out", tmp_path / "out", "--storage", url)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: the folder of --storage"), result.output
    assert expected in result.output and len(result.output.strip().splitlines()) == 1
    assert not scored and not (tmp_path / "out").exists()
    assert {p: sorted(q.name for q in p.iterdir()) for p in (idx, run)} == before


@needs_optuna
def test_a_storage_file_elsewhere_and_a_new_out_still_run(
    tmp_path: Path, scored: list[Any]
) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(_config_text())
    (tmp_path / "db").mkdir()
    url = f"sqlite:///{tmp_path / 'db' / 'study.db'}"
    result = _invoke(config, "-n", "1", "--out", tmp_path / "out", "--storage", url)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "best.yaml").is_file() and len(scored) == 1


# -- --resume of a study that is not there -------------------------------------------


@needs_optuna
def test_resume_of_a_missing_study_starts_it_and_says_so(tmp_path: Path, scored: list[Any]) -> None:
    from dmlkit.tuning import tune

    lines: list[str] = []
    out = tmp_path / "out"
    summary = tune(Config.from_yaml(_config_text()), 1, out, resume=True, log=lines.append)
    url = f"sqlite:///{(out / 'study.db').resolve()}"
    said = [line for line in lines if line.startswith(f"no study 'tiny' in {url}")]
    assert len(said) == 1, lines
    assert "created study 'tiny'" in said[0]
    assert sum(summary.counts.values()) == 1
    lines.clear()  # joined the second time: no such line
    tune(Config.from_yaml(_config_text()), 2, out, resume=True, log=lines.append)
    assert not [line for line in lines if line.startswith("no study")], lines
    assert lines[0].startswith("joined study 'tiny'"), lines


@needs_optuna
def test_a_new_study_without_resume_says_only_created(tmp_path: Path, scored: list[Any]) -> None:
    from dmlkit.tuning import tune

    lines: list[str] = []
    tune(Config.from_yaml(_config_text()), 1, tmp_path / "out", log=lines.append)
    assert lines[0].startswith("created study 'tiny'") and not any(
        line.startswith("no study") for line in lines
    ), lines


# -- numbers among the choices -------------------------------------------------------


def test_choices_written_like_1e_3_are_numbers() -> None:
    config = Config.from_yaml(_config_text(LR_CHOICES))
    assert config.tune is not None
    assert config.tune.space["optimizer.lr"]["choices"] == [0.001, 0.01]
    assert all(type(c) is float for c in config.tune.space["optimizer.lr"]["choices"])


def test_only_strings_that_are_numbers_become_numbers() -> None:
    from dmlkit.config.tune import TuneConfig

    tc = TuneConfig(
        space={
            "optimizer.name": {"choices": ["adam", "sgd"]},
            "model.hidden": {"choices": [[32], [64, 32]]},
            "loss.distance": {"choices": ["cosine", "nan", "inf"]},
            "optimizer.lr": {"choices": ["2E-3", "-1.5e+1", ".5", 3, None]},
        }
    )
    assert tc.space["optimizer.name"]["choices"] == ["adam", "sgd"]
    assert tc.space["model.hidden"]["choices"] == [[32], [64, 32]]
    assert tc.space["loss.distance"]["choices"] == ["cosine", "nan", "inf"]
    assert tc.space["optimizer.lr"]["choices"] == [0.002, -15.0, 0.5, 3, None]


def test_choices_as_1e_3_repeating_0_001_are_refused() -> None:
    from dmlkit.config.tune import TuneConfig

    with pytest.raises(ValueError, match="repeats a value"):
        TuneConfig(space={"optimizer.lr": {"choices": ["1e-3", 0.001]}})


def test_a_when_on_a_1e_3_choice_holds() -> None:
    from dmlkit.tuning.space import check_space

    check_space(Config.from_yaml(_config_text(LR_CHOICES)))  # no "can never hold"
    written = LR_CHOICES.replace("{optimizer.lr: 0.001}", "{optimizer.lr: 1e-3}")
    config = Config.from_yaml(_config_text(written))  # the when value written so too
    assert config.tune is not None
    assert config.tune.space["loss.margin"]["when"] == {"optimizer.lr": 0.001}
    check_space(config)


@needs_optuna
def test_best_json_records_a_1e_3_choice_as_a_number(tmp_path: Path, scored: list[Any]) -> None:
    from dmlkit.tuning import tune

    out = tmp_path / "out"
    tune(Config.from_yaml(_config_text(LR_CHOICES)), 2, out, log=lambda _m: None)
    params = json.loads((out / "best.json").read_text())["params"]
    assert params["optimizer.lr"] in (0.001, 0.01), params
    assert [c.optimizer.lr for c in scored] and all(
        isinstance(c.optimizer.lr, float) for c in scored
    )
    margins = [c.loss["margin"] for c in scored if c.optimizer.lr == 0.001]
    assert all(m != 0.2 for m in margins)  # the conditional range was searched


# -- a Ctrl-C while the command starts -----------------------------------------------

BLOCKED_CONFIG_LOAD = """
import dmlkit.config
real = dmlkit.config.load_config


def blocking(*args, **kwargs):
    print("loading the config", flush=True)
    try:
        time.sleep(3)  # the Ctrl-C lands here
    except KeyboardInterrupt:  # as an import a Ctrl-C stopped halfway breaks the next
        raise AttributeError("module 'numpy._core' has no attribute 'multiarray'") from None
    return real(*args, **kwargs)


dmlkit.config.load_config = blocking
"""
BLOCKED_IMPORT = """
class Blocking:
    def find_spec(self, name, path=None, target=None):
        if name != "optuna":
            return None
        sys.meta_path.remove(self)
        print("importing optuna", flush=True)
        try:
            time.sleep(3)  # the Ctrl-C lands here
        except KeyboardInterrupt:  # as an import a Ctrl-C stopped halfway breaks the next
            raise AttributeError("module 'numpy._core' has no attribute 'multiarray'") from None
        return None


sys.meta_path.insert(0, Blocking())
"""
WRAPPER = """
import sys, time
{patch}
from dmlkit.cli.main import main

sys.argv = ["dmlkit", *sys.argv[1:]]
main()
"""


@needs_optuna
@pytest.mark.parametrize(
    "patch", [BLOCKED_CONFIG_LOAD, BLOCKED_IMPORT], ids=["config-load", "import"]
)
def test_ctrl_c_while_tune_starts_exits_130_in_one_line(tmp_path: Path, patch: str) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(_config_text())
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            WRAPPER.format(patch=patch),
            "tune",
            str(config),
            "-n",
            "1",
            "--out",
            str(tmp_path / "out"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the process now waits in the blocked call
        assert first.strip() in ("loading the config", "importing optuna"), first
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, rest
    assert rest.strip() == "error: interrupted; continue with the same command and --resume"
    assert not (tmp_path / "out").exists()
