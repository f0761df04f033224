"""A trial that samples a config already scored (a categorical space repeats itself) takes
that score instead of training the same folds again."""

from __future__ import annotations

from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from test_tune import load, write_config  # noqa: E402

from dmlkit.tuning import tune  # noqa: E402

ONE_POINT = """
  space:
    optimizer.lr: {{choices: [0.003]}}
"""


def test_a_repeated_config_reuses_its_score_without_training(tmp_path: Path, monkeypatch) -> None:
    import dmlkit.training.cross_validation as cv
    from dmlkit.config import Config

    path = write_config(tmp_path)
    text = path.read_text()
    text = text[: text.index("  space:")] + ONE_POINT.format()  # one point: every trial the same
    path.write_text(text)
    calls = []
    real = cv.cross_validate

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(cv, "cross_validate", counted)
    lines: list[str] = []
    summary = tune(Config.from_yaml(path), 3, out_dir=tmp_path / "out", log=lines.append)
    assert len(calls) == 1  # trained once; trials 1 and 2 are trial 0's config again
    trials = load(tmp_path).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert len({t.value for t in trials}) == 1 and summary.best_value == trials[0].value
    assert [t.user_attrs.get("same_as") for t in trials] == [None, 0, 0]
    assert trials[1].intermediate_values == trials[0].intermediate_values  # its curve too
    assert trials[2].user_attrs["folds"] == trials[0].user_attrs["folds"]
    assert sum("not trained again" in line for line in lines) == 2
