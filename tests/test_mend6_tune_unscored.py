"""A trial whose folds could not be scored (mean fold MAP@R NaN) fails with its reason,
instead of ending the worker on the missing best trial."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from test_tune import load, write_config  # noqa: E402

from dmlkit.tuning import tune  # noqa: E402
from dmlkit.tuning.study import UNSCORED  # noqa: E402


def test_an_unscored_trial_fails_with_its_reason(tmp_path: Path, monkeypatch) -> None:
    import dmlkit.training.cross_validation as cv
    from dmlkit.config import Config

    real = cv.cross_validate

    def unscored(*args, **kwargs):
        return dataclasses.replace(real(*args, **kwargs), score=float("nan"))

    monkeypatch.setattr(cv, "cross_validate", unscored)
    lines: list[str] = []
    tune(Config.from_yaml(write_config(tmp_path)), 1, out_dir=tmp_path / "out",
         log=lines.append)  # (before: AttributeError on the missing best trial)
    trials = load(tmp_path).get_trials()
    assert [t.state.name for t in trials] == ["FAIL"]
    assert trials[0].user_attrs["error"] == UNSCORED
    assert any(UNSCORED in line for line in lines)
