"""Ctrl-C in dmlkit tune: never lost, never a traceback; the trial it interrupts ends
FAIL (not counted), the worker says how to go on and exits 130."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dmlkit.config import Config
from dmlkit.tuning.interrupt import SigintGuard

needs_optuna = pytest.mark.skipif(importlib.util.find_spec("optuna") is None,
                                  reason="dmlkit tune needs optuna")

CONFIG = """
name: tiny
data: {{name: digits, split: classes, train_classes: [0, 1, 2, 3, 4, 5], test_classes: [6, 7],
       max_per_class: 16}}
model: {{name: mlp, in_features: 64, dim: 8, hidden: [16]}}
loss: {{name: multi_similarity}}
sampler: {{name: m_per_class, m: 4, batch_size: 8}}
training: {{epochs: {epochs}, seed: 0, num_threads: 1, progress: false}}
tune: {{folds: 2, space: {{optimizer.lr: {{low: 0.001, high: 0.01}}}}}}
"""


def _ctrl_c() -> None:
    signal.raise_signal(signal.SIGINT)
    time.sleep(0.01)  # (the handler runs here at the latest)


def test_the_guard_defers_a_first_ctrl_c_outside_interruptible_blocks() -> None:
    before = signal.getsignal(signal.SIGINT)
    with SigintGuard() as guard:
        _ctrl_c()  # (e.g. while the storage writes): recorded, not raised
        assert guard.requested
        with pytest.raises(KeyboardInterrupt):
            guard.check()
        with pytest.raises(KeyboardInterrupt):  # a second one: at once
            _ctrl_c()
    assert signal.getsignal(signal.SIGINT) is before


def test_the_guard_raises_inside_an_interruptible_block() -> None:
    with SigintGuard() as guard:
        with pytest.raises(KeyboardInterrupt):
            with guard.interruptible():
                _ctrl_c()
                pytest.fail("not interrupted")
        assert guard.requested
        with pytest.raises(KeyboardInterrupt):  # (already requested: no block starts)
            with guard.interruptible():
                pytest.fail("a block started after the interrupt")


def test_the_guard_defers_in_storage_code_even_inside_a_block() -> None:
    namespace: dict[str, Any] = {}
    code = compile("def cleanup(ctrl_c):\n    ctrl_c()\n    return 'done'\n",
                   "/site-packages/sqlalchemy/orm/fake.py", "exec")
    exec(code, namespace)  # a function of storage code, as its cleanup callbacks are
    with SigintGuard() as guard, pytest.raises(KeyboardInterrupt):
        with guard.interruptible():
            assert namespace["cleanup"](_ctrl_c) == "done"
            assert guard.requested
            guard.check()


def test_the_guard_keeps_an_ignored_sigint_ignored() -> None:
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with SigintGuard():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def _result() -> Any:
    from dmlkit.training.cross_validation import CrossValResult, FoldResult

    folds = [FoldResult([0, 1, 2], [3, 4, 5], 0.5, 0.5, 0.4, 1, [0.5]),
             FoldResult([3, 4, 5], [0, 1, 2], 0.5, 0.5, 0.4, 1, [0.5])]
    return CrossValResult(0.5, 0.5, 0.5, 0.4, "final", folds, [0.5], 0.1)


def _swallowed(cfg: Any, k: Any, *, on_epoch: Any, **_: Any) -> Any:
    try:
        _ctrl_c()
    except KeyboardInterrupt:
        pass  # lost, as in a storage callback whose exceptions are ignored
    on_epoch(1, 0.5)
    return _result()


def _broken_import(cfg: Any, k: Any, **_: Any) -> Any:
    try:
        _ctrl_c()
    except KeyboardInterrupt as err:  # as class creation during an import wraps it
        raise RuntimeError("Error calling __set_name__ on '_Field' instance") from err
    return _result()


def _trials(out: Path) -> list[Any]:
    import optuna

    from dmlkit.tuning.study import open_storage

    storage = open_storage(f"sqlite:///{out / 'study.db'}", 30)
    return optuna.load_study(study_name="tiny", storage=storage).trials


@needs_optuna
@pytest.mark.parametrize("fake", [_swallowed, _broken_import])
def test_a_lost_or_wrapped_ctrl_c_still_stops_the_worker(tmp_path: Path, monkeypatch,
                                                         fake: Any) -> None:
    from dmlkit.training import cross_validation
    from dmlkit.tuning import tune

    monkeypatch.setattr(cross_validation, "cross_validate", fake)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        tune(Config.from_yaml(CONFIG.format(epochs=1)), 3, tmp_path / "out",
             log=lambda _m: None)
    assert signal.getsignal(signal.SIGINT) is before
    trials = _trials(tmp_path / "out")
    assert [t.state.name for t in trials] == ["FAIL"]  # the interrupted trial: not counted
    assert "error" not in trials[0].user_attrs


@needs_optuna
def test_the_cli_says_interrupted_and_exits_130(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from dmlkit.cli.main import app
    from dmlkit.training import cross_validation

    monkeypatch.setattr(cross_validation, "cross_validate", _broken_import)
    path = tmp_path / "tiny.yaml"
    path.write_text(CONFIG.format(epochs=1))
    result = CliRunner().invoke(app, ["tune", str(path), "-n", "2", "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code == 130, result.output
    assert "error: interrupted; continue with the same command and --resume" in result.output
    assert "Traceback" not in result.output and "RuntimeError" not in result.output


@needs_optuna
def test_a_ctrl_c_while_the_best_files_are_written_waits_for_them(tmp_path: Path,
                                                                   monkeypatch) -> None:
    from dmlkit.training import cross_validation
    from dmlkit.tuning import study, tune

    real = study.write_best

    def write_best(*args: Any) -> Any:
        _ctrl_c()
        return real(*args)

    monkeypatch.setattr(cross_validation, "cross_validate",
                        lambda *a, on_epoch, **k: on_epoch(1, 0.5) or _result())
    monkeypatch.setattr(study, "write_best", write_best)
    with pytest.raises(KeyboardInterrupt):
        tune(Config.from_yaml(CONFIG.format(epochs=1)), 3, tmp_path / "out",
             log=lambda _m: None)
    assert [t.state.name for t in _trials(tmp_path / "out")] == ["COMPLETE"]
    assert (tmp_path / "out" / "best.json").is_file()  # written whole, then stopped


@needs_optuna
def test_ctrl_c_during_a_trial_of_the_cli_worker(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(CONFIG.format(epochs=400))  # a trial far longer than the test
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dmlkit.cli.main", "tune", str(path), "-n", "2", "--out",
         str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 40
        for line in proc.stdout:  # wait until the first trial has started
            lines.append(line)
            if line.startswith("trial 0 epoch 1/") or time.monotonic() > deadline:
                break
        assert any(line.startswith("trial 0 epoch 1/") for line in lines), "".join(lines)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(lines) + rest
    assert proc.returncode == 130, output
    assert "error: interrupted; continue with the same command and --resume" in output
    assert "Traceback" not in output and "Exception ignored" not in output, output
    assert "trial 0 finished" not in output
    assert [t.state.name for t in _trials(tmp_path / "out")] == ["FAIL"]
