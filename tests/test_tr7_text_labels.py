"""Text label columns: ids only when every label is a plain non-negative integer, else
class names (labels written differently stay apart, negative numbers are names); the
truncation of long texts is documented where users embed them."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dmlkit.data.text import TextDataset, read_labelled_sentences


def read(tmp_path, text):
    (tmp_path / "l.csv").write_text(text, encoding="utf-8")
    return read_labelled_sentences(tmp_path / "l.csv")


def test_labels_with_leading_zeros_stay_distinct_classes(tmp_path):
    data = read(tmp_path, "text,label\nhello,007\nworld,7\nfoo,1\n")
    assert data.class_names == ["1", "007", "7"]
    assert data.labels.tolist() == [1, 2, 0]  # 007 and 7: two classes


def test_negative_labels_are_class_names(tmp_path):
    data = read(tmp_path, "text,label\nhello,-1\nworld,1\nbar,0\nbaz,-1\n")
    assert data.class_names == ["-1", "0", "1"]
    assert data.labels.tolist() == [0, 2, 1, 0]


def test_plain_integer_labels_are_ids(tmp_path):
    data = read(tmp_path, "text,label\na,0\nb,7\nc,12\n")
    assert data.class_names is None and data.labels.tolist() == [0, 7, 12]
    jsonl = tmp_path / "l.jsonl"
    jsonl.write_text('{"text": "a", "label": 3}\n{"text": "b", "label": 10}\n')
    assert read_labelled_sentences(jsonl).labels.tolist() == [3, 10]


@pytest.mark.parametrize("label", ["+7", "7.0", "\u0667"])
def test_other_spellings_of_numbers_are_names(tmp_path, label):
    data = read(tmp_path, f"text,label\na,{label}\nb,7\n")
    assert data.class_names is not None and len(data.classes) == 2


def test_a_negative_label_given_as_an_id_names_its_text():
    with pytest.raises(ValueError, match=r"labels must be integers >= 0 \(class ids\), got "
                                         r"-1 for text 1 \('world'\)"):
        TextDataset(["hello", "world"], [1, -1])


def test_the_embed_cli_reads_negative_labels_as_names(tmp_path, monkeypatch):
    from dmlkit.cli.main import app

    monkeypatch.setattr("dmlkit.cli.text._model", lambda run_dir, device: object())
    monkeypatch.setattr("dmlkit.text.embed_texts",
                        lambda model, texts, batch_size: torch.ones(len(texts), 3))
    (tmp_path / "neg.csv").write_text("text,label\nhello,-1\nworld,1\n")
    out = tmp_path / "e.npz"
    result = CliRunner().invoke(app, ["text", "embed", str(tmp_path / "neg.csv"), "-o",
                                      str(out)])
    assert result.exit_code == 0, result.output
    saved = np.load(out)
    assert saved["labels"].tolist() == [0, 1]
    assert saved["class_names"].tolist() == ["-1", "1"]


def test_truncation_is_documented():
    from dmlkit.cli.main import app

    result = CliRunner().invoke(app, ["text", "embed", "--help"], env={"COLUMNS": "200"})
    help_text = " ".join(result.output.split())
    assert "truncated" in help_text and "256" in help_text
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Text: sentence encoders", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"longer\s+than the model's `max_length` tokens \(256", section)
    assert "truncated" in section


def test_an_integer_class_that_is_also_another_class_name_is_refused():
    """Labels ``-1``, ``0``, ``7``, ``007`` are names (ids 0..3 in sorted order): an
    integer 0 in test_classes would pick the class named ``-1``; refused, naming both."""
    from types import SimpleNamespace

    from dmlkit.text.run import _class_ids

    data = SimpleNamespace(class_names=["-1", "0", "7", "007"])
    with pytest.raises(ValueError, match=r"0 is the id of class '-1', but a class is named "
                                         r"'0' \(id 1\)"):
        _class_ids([0], data, "test_classes")
    with pytest.raises(ValueError, match=r"7 is no id, but a class is named '7'"):
        _class_ids([7], data, "test_classes")
    assert _class_ids(["7", "007", 1], data, "test_classes") == [2, 3, 1]
    plain = SimpleNamespace(class_names=None)  # (integer labels: ids as they are)
    assert _class_ids([0, 7], plain, "train_classes") == [0, 7]
