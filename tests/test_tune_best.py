"""dmlkit tune's best.yaml / best.json: absolute data paths, and no lost update when two
workers write them at once; the per-trial progress line reads one snapshot."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")

from typer.testing import CliRunner  # noqa: E402

import dmlkit.tuning.study as study_mod  # noqa: E402
from dmlkit.cli.main import app  # noqa: E402
from dmlkit.config import Config  # noqa: E402
from dmlkit.data.digits import load_digits  # noqa: E402
from dmlkit.tuning import tune  # noqa: E402
from dmlkit.tuning.study import open_storage, open_study, write_best  # noqa: E402

CONFIG = """
name: rel
data: {name: npz, path: data.npz, split: classes, train_classes: [0, 1, 2, 3, 4, 5],
       test_classes: [6, 7, 8, 9], max_per_class: 20, max_heldout_per_class: 8}
model: {name: small_cnn, in_channels: 1, image_size: 8, dim: 8, width: 4}
loss: {name: triplet_margin, margin: 0.1}
sampler: {name: m_per_class, m: 5, batch_size: 10}
training: {epochs: 1, seed: 0, num_threads: 1, progress: false}
tune:
  folds: 2
  space:
    optimizer.lr: {choices: [0.003, 0.01]}
"""


def _npz(path: Path, shuffle_seed: int | None = None) -> None:
    data = load_digits()
    labels = data.labels.numpy()
    if shuffle_seed is not None:  # other data under the same name
        labels = np.random.default_rng(shuffle_seed).permutation(labels)
    np.savez(path, x=data.x.numpy(), labels=labels)


def test_best_yaml_scores_the_same_data_from_any_directory(tmp_path, monkeypatch) -> None:
    here, elsewhere = tmp_path / "a", tmp_path / "b"
    here.mkdir()
    elsewhere.mkdir()
    _npz(here / "data.npz")
    _npz(elsewhere / "data.npz", shuffle_seed=1)  # a data.npz that is not the tuned one
    (here / "rel.yaml").write_text(CONFIG)
    monkeypatch.chdir(here)
    summary = tune(Config.from_yaml("rel.yaml"), 1, "out", log=lambda _m: None)
    score = f"over 2 class-disjoint folds: {summary.best_value:.6f}"
    for cwd in (here / "out", elsewhere):  # the tune's output dir; a dir with other data
        monkeypatch.chdir(cwd)
        out = CliRunner().invoke(app, ["crossval", str(here / "out" / "best.yaml")])
        assert out.exit_code == 0, out.output
        assert score in out.output, (cwd, out.output)
    best = Config.from_yaml(here / "out" / "best.yaml")
    assert best.data.path == str((here / "data.npz").resolve())
    # a worker joining from a directory whose data.npz is other data is refused
    with pytest.raises(ValueError, match="started from a different config"):
        tune(Config.from_yaml(here / "rel.yaml"), 2, here / "out", resume=True,
             log=lambda _m: None)


def _study(tmp_path: Path) -> tuple[Config, str, object]:
    config = Config.from_yaml(CONFIG.replace("path: data.npz", "path: /nonexistent.npz"))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study, _ = open_study(config, open_storage(url, 30), "race", resume=False)
    return config, url, study


def _finished(study: object, value: float, lr: float, config: Config) -> None:
    cfg = config.to_dict()
    cfg["optimizer"]["lr"] = lr
    study.add_trial(optuna.trial.create_trial(  # type: ignore[attr-defined]
        value=value, user_attrs={"config": cfg}))


def test_a_stale_writer_cannot_overwrite_a_better_best(tmp_path, monkeypatch) -> None:
    """Worker B reads the trials (best: 0.5), worker A then finishes a better trial (0.9)
    and writes its best, then B writes: the files must hold A's trial, not B's stale one
    (without the lock B's write lands last and the better trial is lost)."""
    config, url, study_b = _study(tmp_path)
    _finished(study_b, 0.5, 0.003, config)
    out = tmp_path / "out"
    out.mkdir()
    names = write_best.__globals__  # the module that writes the files
    real_write, real_fcntl = names["write_text"], names.get("fcntl")
    a_waits, a_done = threading.Event(), threading.Event()

    def worker_a() -> None:
        study_a = optuna.load_study(study_name="race", storage=open_storage(url, 30))
        _finished(study_a, 0.9, 0.3, config)
        write_best(study_a, config, out, url)
        a_done.set()

    class SpyLock:  # fcntl, noting when worker A starts waiting for the lock
        def __getattr__(self, name: str) -> object:
            return getattr(real_fcntl, name)

        def flock(self, fd: int, op: int) -> None:
            if threading.current_thread().name == "worker-a" and op == real_fcntl.LOCK_EX:
                a_waits.set()
            real_fcntl.flock(fd, op)

    thread = threading.Thread(target=worker_a, name="worker-a")

    def b_writes(text: str, path: Path) -> None:
        if threading.current_thread() is threading.main_thread() and not thread.is_alive() \
                and path.name == "best.yaml" and not a_done.is_set():
            thread.start()  # B has read the trials; A finishes a better one now
            deadline = time.time() + 60
            while not (a_waits.is_set() or a_done.is_set()) and time.time() < deadline:
                time.sleep(0.01)
        real_write(text, path)

    monkeypatch.setitem(names, "write_text", b_writes)
    if real_fcntl is not None:
        monkeypatch.setitem(names, "fcntl", SpyLock())
    write_best(study_b, config, out, url)
    thread.join(60)
    assert a_done.is_set()
    summary = json.loads((out / "best.json").read_text())
    assert (summary["trial"], summary["value"]) == (1, 0.9)
    text = (out / "best.yaml").read_text()
    assert "trial 1, mean MAP@R 0.900000" in text and Config.from_yaml(text).optimizer.lr == 0.3


def test_the_progress_line_reads_best_and_count_from_one_snapshot(tmp_path, monkeypatch) -> None:
    """Another worker finishes a better trial between two reads of the study: the line
    must not pair the old best with the new count."""
    _npz(tmp_path / "data.npz")
    config = Config.from_yaml(CONFIG.replace("data.npz", str(tmp_path / "data.npz")))
    real_open = study_mod.open_study

    class OtherWorkerFinishesAfterARead:
        def __init__(self, study: object) -> None:
            self._study, self._told, self._done = study, False, False

        def __getattr__(self, name: str) -> object:
            return getattr(self._study, name)

        def tell(self, *args: object, **kwargs: object) -> object:
            self._told = True
            return self._study.tell(*args, **kwargs)

        def _after_read(self) -> None:
            if self._told and not self._done:
                self._done = True
                _finished(self._study, 2.0, 0.3, config)

        @property
        def best_trial(self) -> object:
            best = self._study.best_trial
            self._after_read()
            return best

        def get_trials(self, *args: object, **kwargs: object) -> object:
            trials = self._study.get_trials(*args, **kwargs)
            self._after_read()
            return trials

    def open_racing(*args: object, **kwargs: object) -> tuple[object, bool]:
        study, created = real_open(*args, **kwargs)
        return OtherWorkerFinishesAfterARead(study), created

    monkeypatch.setattr(study_mod, "open_study", open_racing)
    lines: list[str] = []
    tune(config, 2, tmp_path / "out", log=lines.append)
    line = next(m for m in lines if m.startswith("trial 0 finished"))
    reported = line.split("(best: trial ")[1]
    best, done = reported.split(",")[0], reported.split("; ")[1].split("/")[0]
    assert (best, done) in {("0", "1"), ("1", "2")}, line
    assert json.loads((tmp_path / "out" / "best.json").read_text())["trial"] == 1
