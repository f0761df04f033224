"""dmlkit tune: the median pruner's rule follows the objective, --study is a folder name,
a bare --storage path is answered with the URL to write, a full study says why it ran
nothing, a joining worker waits for the creator's saved config, and the README says
which test-class data tune reads."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("sqlalchemy")

from test_tune import CONFIG, load, write_config  # noqa: E402
from tune_helpers import scored_at_once  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from dmlkit.cli.main import app  # noqa: E402
from dmlkit.config import Config  # noqa: E402
from dmlkit.tuning import study as study_module  # noqa: E402
from dmlkit.tuning import tune  # noqa: E402
from dmlkit.tuning.pruning import LatestMedianPruner, make_pruner  # noqa: E402
from dmlkit.tuning.storage import check_storage  # noqa: E402
from dmlkit.tuning.study import fingerprint, open_storage, open_study  # noqa: E402
from dmlkit.tuning.study_name import default_out_dir  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
FLAT = {1: 0.5, 2: 0.5, 3: 0.5, 4: 0.5}
HIGHER = {1: 0.6, 2: 0.6, 3: 0.6, 4: 0.6}


def _study(pruner, curves=(FLAT, HIGHER)):
    """An in-memory study with complete trials of the given per-epoch curves."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for curve in curves:
        study.add_trial(optuna.trial.create_trial(
            value=curve[max(curve)], intermediate_values=curve, params={}, distributions={}))
    return study


def _prunes(pruner, values: list[float], curves=(FLAT, HIGHER)) -> list[bool]:
    """``should_prune`` after each value of a new trial's curve (epochs 1, 2, ...)."""
    trial = _study(pruner, curves).ask()
    out = []
    for epoch, value in enumerate(values, start=1):
        trial.report(value, epoch)
        out.append(trial.should_prune())
    return out


# --- 1. the median pruner compares what the objective scores -----------------------

def test_final_prunes_a_trial_that_falls_below_the_median_best_epoch_does_not() -> None:
    falling = [0.9, 0.1, 0.1]  # peaks at epoch 1, then below the median 0.55
    final = make_pruner("median", "final", startup_trials=2, warmup_epochs=0)
    best = make_pruner("median", "best_epoch", startup_trials=2, warmup_epochs=0)
    assert isinstance(final, LatestMedianPruner)
    assert isinstance(best, optuna.pruners.MedianPruner)
    assert _prunes(final, falling) == [False, True, True]
    # Optuna's MedianPruner keeps its best so far (0.9): never pruned, right for best_epoch
    assert _prunes(best, falling) == [False, False, False]
    assert _prunes(optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
                   falling) == [False, False, False]
    # both prune a trial below the median from the start
    assert _prunes(final, [0.1, 0.1]) == _prunes(best, [0.1, 0.1]) == [True, True]


def test_latest_median_pruner_spares_warmup_startup_ties_and_nan() -> None:
    falling = [0.9, 0.1, 0.1]
    warm = make_pruner("median", "final", startup_trials=2, warmup_epochs=2)
    assert _prunes(warm, falling) == [False, False, True]  # epochs 1-2 spared
    startup = make_pruner("median", "final", startup_trials=3, warmup_epochs=0)
    assert _prunes(startup, falling) == [False, False, False]  # 2 complete < 3
    tie = make_pruner("median", "final", startup_trials=2, warmup_epochs=0)
    assert _prunes(tie, [0.55, 0.55]) == [False, False]  # at the median: goes on
    assert _prunes(tie, [0.9, float("nan")]) == [False, False]  # (then fails unscored)
    assert isinstance(make_pruner("none", "final", 2, 0), optuna.pruners.NopPruner)
    with pytest.raises(ValueError, match="must be >= 0"):
        LatestMedianPruner(n_startup_trials=-1)


def test_tune_with_objective_final_prunes_the_falling_trial(tmp_path: Path, monkeypatch) -> None:
    from dmlkit.training import cross_validation
    from dmlkit.training.cross_validation import CrossValResult

    curves = [[0.5] * 4, [0.6] * 4, [0.9, 0.1, 0.1, 0.1]]  # trial 2 falls after epoch 1
    reported: list[list[float]] = []

    def fake(cfg, k, *, on_epoch, **_):
        curve = curves[len(reported)]
        reported.append([])
        for epoch, mean in enumerate(curve, start=1):
            reported[-1].append(mean)
            on_epoch(epoch, mean)
        return CrossValResult(curve[-1], curve[-1], max(curve), 0.4, "final", [], curve, 0.1)

    monkeypatch.setattr(cross_validation, "cross_validate", fake)
    path = tmp_path / "tiny.yaml"
    text = CONFIG.format(epochs=4, startup=2)
    assert "optimizer.lr: {choices: [0.003, 1.0e-7]}" in text
    path.write_text(text.replace("optimizer.lr: {choices: [0.003, 1.0e-7]}",
                                 "optimizer.lr: {low: 1.0e-4, high: 1.0e-2, log: true}"))
    lines: list[str] = []
    tune(Config.from_yaml(path), 3, tmp_path / "out", log=lines.append)
    states = [t.state.name for t in load(tmp_path).get_trials()]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"], (states, lines)
    assert reported[2] == [0.9, 0.1]  # stopped after epoch 2
    assert any("trial 2 pruned at epoch 2" in line for line in lines)


# --- 2. --study is a folder name ----------------------------------------------------

@pytest.mark.parametrize("name", ["../../evil", "a/b", "", ".", "a\\b"])
def test_a_study_name_that_is_no_folder_name_is_refused(tmp_path: Path, monkeypatch,
                                                        name: str) -> None:
    config = Config.from_yaml(write_config(tmp_path))
    with pytest.raises(ValueError, match="study_name .* is not a study name"):
        default_out_dir(config, name)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["tune", str(tmp_path / "tiny.yaml"), "--trials", "1",
                                      "--study", name])
    assert result.exit_code == 1, result.output
    assert f"--study {name!r} is not a study name" in result.output
    assert "runs/<study>-tune" in result.output and "--out" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]  # nothing written
    assert default_out_dir(config, "b") == Path("runs/b-tune")  # a plain name still works


# --- 3. a bare path as --storage ------------------------------------------------------

def test_a_bare_storage_path_is_answered_with_the_url_to_write(tmp_path: Path,
                                                               monkeypatch) -> None:
    with pytest.raises(ValueError, match=r"write sqlite:///st/plain.db \(a SQLite file\) "
                                         "or another SQLAlchemy URL"):
        check_storage("st/plain.db")
    with pytest.raises(ValueError) as err:
        check_storage("bob:s3cret@st/plain.db")
    assert "s3cret" not in str(err.value) and "sqlite:///st/plain.db" in str(err.value)
    check_storage("sqlite:///st/plain.db")
    check_storage("postgresql+psycopg2://u@host/db")
    write_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["tune", "tiny.yaml", "--trials", "1",
                                      "--storage", "st/plain.db"])
    assert result.exit_code == 1, result.output
    assert ("cannot open the study storage st/plain.db: it is not a SQLAlchemy URL "
            "(dialect://...); write sqlite:///st/plain.db (a SQLite file) or another "
            "SQLAlchemy URL") in " ".join(result.output.split())
    assert not (tmp_path / "st").exists() and not (tmp_path / "runs").exists()


# --- 5. a study already as large as --trials --------------------------------------------

def test_a_resume_of_a_full_study_says_that_no_trial_was_run(tmp_path: Path,
                                                             monkeypatch) -> None:
    scored_at_once(monkeypatch)
    config = Config.from_yaml(write_config(tmp_path))
    lines: list[str] = []
    tune(config, 3, tmp_path / "out", log=lines.append)
    assert not any("no trial was run" in line for line in lines)
    lines.clear()
    summary = tune(config, 2, tmp_path / "out", resume=True, log=lines.append)
    assert summary.counts == {"COMPLETE": 3}
    said = [line for line in lines if "no trial was run" in line]
    assert said == ["study 'tiny' already holds 3 counted trials (finished, or running in "
                    "another worker), at least the 2 asked for: no trial was run (trials is "
                    "the size of the whole study); to run more, ask for more, e.g. "
                    "--trials 5"]
    lines.clear()
    summary = tune(config, 4, tmp_path / "out", resume=True, log=lines.append)  # runs one
    assert summary.counts == {"COMPLETE": 4}
    assert not any("no trial was run" in line for line in lines)


# --- 6. a worker joining while the creator has not yet saved its config ----------------

def test_a_joining_worker_waits_for_the_creators_saved_config(tmp_path: Path) -> None:
    config = Config.from_yaml(write_config(tmp_path, epochs=1))
    other = Config.from_yaml(write_config(tmp_path, epochs=2))
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", 30)
    created = optuna.create_study(storage=storage, study_name="tiny", direction="maximize")
    # the creator's second write (its config) lands while the joining worker reads
    timer = threading.Timer(0.5, created.set_user_attr, ("config", fingerprint(other)))
    timer.start()
    try:
        with pytest.raises(ValueError, match="started from a different config: "
                                             "training.epochs: 2 -> 1"):
            open_study(config, storage, "tiny", resume=True)
    finally:
        timer.join()


def test_the_wait_for_a_saved_config_is_bounded(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(study_module, "FINGERPRINT_WAIT_S", 0.3)
    config = Config.from_yaml(write_config(tmp_path))
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}", 30)
    optuna.create_study(storage=storage, study_name="tiny", direction="maximize")
    start = time.monotonic()
    study, created = open_study(config, storage, "tiny", resume=True)  # creator died
    assert not created and 0.3 <= time.monotonic() - start < 5
    study.add_trial(optuna.trial.create_trial(value=0.5))
    start = time.monotonic()
    open_study(config, storage, "tiny", resume=True)  # has trials: an old study, no wait
    assert time.monotonic() - start < 0.3


# --- 4. the README says which test-class data is read -----------------------------------

def test_readme_says_an_npz_is_read_whole_and_checked(tmp_path: Path) -> None:
    text = " ".join(README.read_text().split())
    assert "the test classes are never read" not in text
    assert "an `.npz` file is read whole and checked whole" in text
    assert "not an IDX dataset's `heldout_part`, not the images of an image folder's " \
        "`test_classes`" in text
    # what it says: a NaN in a test class's rows of an .npz stops tuning
    from dmlkit.data.digits import load_digits

    digits = load_digits()
    x = digits.x.reshape(len(digits.x), -1).numpy().astype(np.float32)
    labels = digits.labels.numpy()
    x[np.flatnonzero(labels == 9)[0], 0] = np.nan
    np.savez(tmp_path / "d.npz", x=x, labels=labels)
    path = tmp_path / "n.yaml"
    path.write_text(f"""
name: n
data: {{name: npz, path: {tmp_path / 'd.npz'}, split: classes,
        train_classes: [0, 1, 2, 3, 4, 5], test_classes: [6, 7, 8, 9]}}
model: {{name: mlp, in_features: 64, dim: 8, hidden: [16]}}
loss: {{name: multi_similarity}}
sampler: {{name: m_per_class, m: 4, batch_size: 8}}
training: {{epochs: 1, seed: 0, num_threads: 1, progress: false}}
tune: {{folds: 2, space: {{optimizer.lr: {{choices: [0.001, 0.01]}}}}}}
""")
    with pytest.raises(ValueError, match="NaN"):
        tune(Config.from_yaml(path), 1, tmp_path / "out", log=lambda _m: None)
