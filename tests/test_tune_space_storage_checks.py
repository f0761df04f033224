"""dmlkit tune refuses before any trial what a trial could not search as written (a step
that does not divide its range, booleans among numbers), makes the folder of a SQLite
study file it is given, names the driver package of a storage URL, and names --trials."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from tune_helpers import scored_at_once

from dmlkit.config import Config

needs_optuna = pytest.mark.skipif(
    importlib.util.find_spec("optuna") is None, reason="dmlkit tune needs optuna"
)

BASE = """
name: tiny
data: {name: digits, split: classes, train_classes: [0, 1, 2, 3, 4, 5], test_classes: [6, 7],
       max_per_class: 16}
model: {name: mlp, in_features: 64, dim: 8, hidden: [16]}
loss: {name: triplet_margin, margin: 0.2}
sampler: {name: m_per_class, m: 4, batch_size: 8}
training: {epochs: 1, seed: 0, num_threads: 1, progress: false}
"""


def _config(space: str) -> Config:
    return Config.from_yaml(BASE + f"tune:\n  folds: 2\n  space:\n    {space}\n")


# -- a step must divide its range ------------------------------------------------------


@pytest.mark.parametrize(
    ("space", "words"),
    [
        (
            "loss.margin: {low: 0.05, high: 0.3, step: 0.1}",
            "(high - low) = 0.25 is not a multiple of step 0.1: use high: 0.25 or 0.35",
        ),
        (
            "model.dim: {low: 4, high: 8, step: 10}",
            "(high - low) = 4 is not a multiple of step 10: use high: 14",
        ),
        (
            "sampler.m: {low: 2, high: 7, step: 2}",
            "(high - low) = 5 is not a multiple of step 2: use high: 6 or 8",
        ),
        (
            "optimizer.lr: {low: 1e-4, high: 1e-3, step: 4e-4}",
            "(high - low) = 0.0009 is not a multiple of step 0.0004: use high: 0.0009 or 0.0013",
        ),
    ],
)
def test_a_step_that_does_not_divide_the_range_is_refused(space: str, words: str) -> None:
    path = space.partition(":")[0]
    with pytest.raises(ValueError, match=rf"tune.space\['{path}'\]") as err:
        _config(space)
    assert words in str(err.value)


@pytest.mark.parametrize(
    "space",
    [
        "loss.margin: {low: 0.1, high: 0.3, step: 0.1}",  # 0.3 - 0.1 is not 0.2 in floats
        "loss.margin: {low: 0.05, high: 0.25, step: 0.1}",
        "loss.margin: {low: 0.7, high: 0.9, step: 0.1}",
        "optimizer.lr: {low: 1e-4, high: 1.3e-3, step: 4e-4}",
        "sampler.m: {low: 2, high: 6, step: 2}",
        "model.dim: {low: 4, high: 14, step: 10}",
    ],
)
def test_a_step_that_divides_the_range_passes(space: str) -> None:
    from dmlkit.tuning.space import check_space

    check_space(_config(space))


@needs_optuna
@pytest.mark.parametrize(
    "space",
    [
        "loss.margin: {low: 0.1, high: 0.3, step: 0.1}",
        "loss.margin: {low: 0.7, high: 0.9, step: 0.1}",
        "optimizer.lr: {low: 1e-4, high: 1.3e-3, step: 4e-4}",
    ],
)
def test_an_accepted_float_step_reaches_high_without_a_warning(space: str) -> None:
    import warnings

    import optuna

    spec = _config(space).tune.space[space.partition(":")[0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna warns where it replaces high
        dist = optuna.distributions.FloatDistribution(spec["low"], spec["high"], step=spec["step"])
    assert dist.high == spec["high"]


def test_a_step_with_log_is_refused_saying_why() -> None:
    with pytest.raises(
        ValueError,
        match=r"tune.space\['optimizer.lr'\].step cannot be used "
        r"with log: true",
    ) as err:
        _config("optimizer.lr: {low: 1e-4, high: 1e-2, log: true, step: 1e-4}")
    assert "drop step or log" in str(err.value)
    with pytest.raises(ValueError, match=r"step must be > 0, got -0.1"):
        _config("loss.margin: {low: 0.1, high: 0.3, step: -0.1}")


# -- booleans among numbers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "choices"),
    [
        ("training.epochs", "[1, true]"),
        ("training.epochs", "[2, true]"),
        ("loss.margin", "[0, false]"),
        ("loss.margin", "[0.5, true, 0.1]"),
    ],
)
def test_a_boolean_among_number_choices_is_the_wrong_type(path: str, choices: str) -> None:
    with pytest.raises(
        TypeError,
        match=rf"tune.space\['{path}'\].choices mixes true/false "
        "with numbers",
    ) as err:
        _config(f"{path}: {{choices: {choices}}}")
    assert "give numbers only" in str(err.value) and "repeats" not in str(err.value)


def test_choices_of_only_true_and_false_pass() -> None:
    assert _config("loss.margin: {choices: [true, false]}").tune.space["loss.margin"] == {
        "choices": [True, False]
    }


@pytest.mark.parametrize("choices", ["[1, 1.0]", "[true, true]", "[1, 2, 1]"])
def test_choices_equal_in_value_and_kind_still_repeat(choices: str) -> None:
    with pytest.raises(ValueError, match="choices repeats a value"):
        _config(f"training.epochs: {{choices: {choices}}}")


# -- the CLI: --storage folders, drivers, --trials ----------------------------------------


@pytest.fixture
def scored(monkeypatch) -> list[Any]:
    """Trials scored at once (no training); the list holds each trial's config."""
    return scored_at_once(monkeypatch)


def _invoke(*args: Any) -> Any:
    from typer.testing import CliRunner

    from dmlkit.cli.main import app

    return CliRunner().invoke(app, ["tune", *[str(a) for a in args]])


def _write(tmp_path: Path, space: str = "optimizer.lr: {choices: [0.001, 0.01]}") -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(BASE + f"tune:\n  folds: 2\n  space:\n    {space}\n")
    return path


@needs_optuna
def test_a_sqlite_file_in_a_new_folder_is_made_as_the_hint_says(
    tmp_path: Path, monkeypatch, scored: list[Any]
) -> None:
    monkeypatch.chdir(tmp_path)
    # (a continuous space: a second trial never repeats the first's config, which would be
    # taken from it unscored)
    config = _write(tmp_path, "optimizer.lr: {low: 0.001, high: 0.01, log: true}")
    result = _invoke(config, "--trials", 1, "--out", "o", "--storage", "sqlite:///runs/study.db")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "study.db").is_file() and len(scored) == 1
    again = _invoke(
        config, "--trials", 2, "--out", "o", "--storage", "sqlite:///runs/study.db", "--resume"
    )
    assert again.exit_code == 0, again.output
    assert len(scored) == 2


@needs_optuna
def test_the_python_api_makes_the_folder_of_a_sqlite_file_too(
    tmp_path: Path, scored: list[Any]
) -> None:
    from dmlkit.tuning import tune

    url = f"sqlite:///{tmp_path / 'a' / 'b' / 'study.db'}"
    summary = tune(
        _config("optimizer.lr: {choices: [0.001, 0.01]}"),
        1,
        tmp_path / "o",
        storage=url,
        log=lambda _: None,
    )
    assert summary.best_trial == 0 and (tmp_path / "a" / "b" / "study.db").is_file()


@needs_optuna
def test_a_refused_command_makes_no_storage_folder(
    tmp_path: Path, monkeypatch, scored: list[Any]
) -> None:
    monkeypatch.chdir(tmp_path)
    config = _write(tmp_path, "sampler.m: {choices: [4, 40]}")  # no fold has 40 per class
    result = _invoke(
        config, "--trials", 1, "--out", "o", "--storage", "sqlite:///runs/sub/study.db"
    )
    assert result.exit_code == 1 and result.output.startswith("error: "), result.output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "o").exists()
    assert not scored


@needs_optuna
def test_a_storage_that_fails_to_open_leaves_no_folder_it_made(
    tmp_path: Path, monkeypatch, scored: list[Any]
) -> None:
    from sqlalchemy.exc import OperationalError

    from dmlkit.tuning import study

    def refuse(url: str, heartbeat_seconds: int) -> Any:
        raise OperationalError("connect", None, Exception("disk I/O error"))

    monkeypatch.setattr(study, "open_storage", refuse)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "o").mkdir()
    result = _invoke(
        _write(tmp_path),
        "--trials",
        1,
        "--out",
        "o/new",
        "--storage",
        "sqlite:///o/new/db/study.db",
    )
    assert result.exit_code == 1, result.output
    assert "cannot open the study storage" in result.output and "disk I/O" in result.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == []


@needs_optuna
@pytest.mark.parametrize(
    ("url", "package"),
    [
        (
            "mysql://u@localhost/db",
            "pip install mysqlclient (or pip install pymysql and write mysql+pymysql://",
        ),
        ("mysql+mysqldb://u@localhost/db", "pip install mysqlclient"),
        ("mysql+pymysql://u@localhost/db", "pip install pymysql"),
        ("postgresql+psycopg2://u@localhost/db", "pip install psycopg2-binary"),
        ("postgresql+psycopg://u@localhost/db", "pip install 'psycopg[binary]'"),
    ],
)
def test_a_missing_driver_names_the_package_of_the_dialects_driver(
    tmp_path: Path, url: str, package: str, scored: list[Any]
) -> None:
    from dmlkit.cli.tune import _import_error

    err = ImportError(
        "Failed to import DB access module for the specified storage URL. "
        "Please install appropriate one."
    )
    message = _import_error(err, url, None)
    assert package in message, message
    driver = url.partition("://")[0].partition("+")[2] or "mysqldb"
    if importlib.util.find_spec({"mysqldb": "MySQLdb"}.get(driver, driver)) is None:
        result = _invoke(_write(tmp_path), "--trials", 1, "--out", tmp_path / "o", "--storage", url)
        assert result.exit_code == 1 and package in result.output, result.output


@needs_optuna
@pytest.mark.parametrize("n", [0, -2])
def test_trials_below_one_names_the_option(tmp_path: Path, n: int, scored: list[Any]) -> None:
    result = _invoke(_write(tmp_path), "--trials", n, "--out", tmp_path / "o")
    assert result.exit_code == 1
    assert result.output.strip() == f"error: --trials must be >= 1, got {n}"
    assert not (tmp_path / "o").exists() and not scored
