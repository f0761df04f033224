"""The storage of a tune study: in-memory SQLite is refused, a SQLite file is recorded by
its absolute path, and the same file named two ways is the same study's."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from dmlkit.config import Config

needs_optuna = pytest.mark.skipif(importlib.util.find_spec("optuna") is None,
                                  reason="dmlkit tune needs optuna")

CONFIG = """
name: tiny
data: {name: digits, split: classes, train_classes: [0, 1, 2, 3, 4, 5], test_classes: [6, 7],
       max_per_class: 16}
model: {name: mlp, in_features: 64, dim: 8, hidden: [16]}
loss: {name: multi_similarity}
sampler: {name: m_per_class, m: 4, batch_size: 8}
training: {epochs: 1, seed: 0, num_threads: 1, progress: false}
tune: {folds: 2, space: {optimizer.lr: {choices: [0.001, 0.01]}}}
"""


@needs_optuna
@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:",
                                 "sqlite+pysqlite:///:memory:",
                                 "sqlite:///file::memory:?uri=true"])
def test_an_in_memory_sqlite_storage_is_refused(tmp_path: Path, url: str) -> None:
    from dmlkit.tuning import tune

    with pytest.raises(ValueError, match=r"is an in-memory SQLite database: .* give a file"):
        tune(Config.from_yaml(CONFIG), 1, tmp_path / "out", storage=url, log=print)
    config = Config.from_yaml(CONFIG)
    config.tune.storage = url
    with pytest.raises(ValueError, match="in-memory SQLite"):
        tune(config, 1, tmp_path / "out", log=print)
    assert not (tmp_path / "out").exists()


def test_in_memory_and_absolute_storage_forms(tmp_path: Path, monkeypatch) -> None:
    from dmlkit.tuning.storage import absolute_storage, in_memory, same_storage

    monkeypatch.chdir(tmp_path)
    here = tmp_path.resolve()
    assert not in_memory("sqlite:///x.db") and not in_memory("postgresql://u:p@h/db")
    assert absolute_storage("sqlite:///runs/x/study.db") == f"sqlite:///{here}/runs/x/study.db"
    assert absolute_storage("sqlite:///./rel.db") == f"sqlite:///{here}/rel.db"
    assert absolute_storage(f"sqlite:///{here}/a/../b.db") == f"sqlite:///{here}/b.db"
    assert absolute_storage("sqlite+pysqlite:///x.db?timeout=5") == (
        f"sqlite+pysqlite:///{here}/x.db?timeout=5")
    for kept in ("postgresql://u:p@h:5432/db", "sqlite:///:memory:", "mysql://h/db"):
        assert absolute_storage(kept) == kept
    assert same_storage("sqlite:///runs/x.db", f"sqlite:///{here}/runs/x.db")
    assert same_storage("sqlite:///./runs/x.db", "sqlite:///runs/x.db")
    assert not same_storage("sqlite:///runs/x.db", "sqlite:///runs/y.db")


def test_the_same_sqlite_file_named_two_ways_is_the_same_study(tmp_path: Path,
                                                                monkeypatch) -> None:
    from dmlkit.tuning.best import BEST_JSON, check_best_owner

    monkeypatch.chdir(tmp_path)
    absolute = f"sqlite:///{tmp_path.resolve()}/runs/x/study.db"
    (tmp_path / BEST_JSON).write_text(json.dumps({"study": "conc", "storage": absolute}))
    check_best_owner(tmp_path, "conc", "sqlite:///runs/x/study.db")
    check_best_owner(tmp_path, "conc", "sqlite:///./runs/x/study.db")
    (tmp_path / BEST_JSON).write_text(json.dumps(  # (recorded as given before)
        {"study": "conc", "storage": "sqlite:///runs/x/study.db"}))
    check_best_owner(tmp_path, "conc", absolute)
    with pytest.raises(FileExistsError) as err:
        check_best_owner(tmp_path, "conc", "sqlite:///other.db")
    text = str(err.value)
    assert "another storage" in text and "not of study" not in text
    assert f"stored in sqlite:///{tmp_path.resolve()}/other.db" in text
    assert "--storage sqlite:///runs/x/study.db --resume" in text


@needs_optuna
def test_a_relative_sqlite_url_is_recorded_absolute_and_joined_from_elsewhere(
        tmp_path: Path, monkeypatch) -> None:
    from dmlkit.tuning import tune

    monkeypatch.chdir(tmp_path)
    config = Config.from_yaml(CONFIG)
    lines: list[str] = []
    tune(config, 1, "runs/x", storage="sqlite:///runs/x/study.db", log=lines.append)
    url = f"sqlite:///{tmp_path.resolve()}/runs/x/study.db"
    assert lines[0].startswith(f"created study 'tiny' in {url} ")
    assert json.loads((tmp_path / "runs/x/best.json").read_text())["storage"] == url
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")  # the same file, named from another directory
    summary = tune(config, 2, "../runs/x", storage="sqlite:///../runs/x/study.db",
                   resume=True, log=lines.append)
    assert summary.storage == url and sum(summary.counts.values()) == 2
    assert not (tmp_path / "sub" / "runs").exists()
    config.tune.storage = "sqlite:///../runs/x/study.db"  # (tune.storage alike)
    summary = tune(config, 3, "../runs/x", resume=True, log=lines.append)
    assert summary.storage == url and sum(summary.counts.values()) == 3
    best = Config.from_yaml(tmp_path / "runs/x/best.yaml")
    assert best.tune.storage in (None, url)
