"""Text data checks made before a model loads: STS-B parts apart, held-out pairs enough to
score; score and label values read as written; duplicate columns; how ``dmlkit text
embed`` reads a ``.txt`` and a pairs file; ``dmlkit embed`` of a text run and a text file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.config import Config
from dmlkit.data.text import (
    read_labelled_sentences,
    read_records,
    read_scored_pairs,
    read_sentences,
)
from dmlkit.text import build_text_splits, train_text_run

SENTENCES = ["The team won the match.", "The runner finished the marathon.",
             "A chef cooks pasta.", "The soup is too salty.", "Rain fell all day.",
             "The sun is shining.", "He reads a novel.", "She writes a poem."]
TOPICS = ["sports", "sports", "food", "food", "weather", "weather", "books", "books"]


def _text_config(data: dict) -> Config:
    return Config.from_dict({
        "name": "t", "data": data, "model": {"name": "sentence_encoder", "max_length": 32},
        "loss": {"name": "infonce", "temperature": 0.1, "distance": {"name": "cosine"}},
        "training": {"epochs": 1, "batch_size": 4, "progress": False, "num_threads": 1}})


def _fake_sts(folder):
    folder.mkdir()
    for part in ("train", "test"):
        lines = [f"g\tf\t2012{part}\t{i:04d}\t{i % 5}.0\t{SENTENCES[i]}\t{SENTENCES[-1 - i]}"
                 for i in range(len(SENTENCES))]
        (folder / f"sts-{part}.csv").write_text("\n".join(lines) + "\n")
    return folder


def _write_pairs(path, n: int):
    rows = [f"{SENTENCES[i % 8]} {i},{SENTENCES[(i + 3) % 8]},{i % 5}" for i in range(n)]
    path.write_text("sentence1,sentence2,score\n" + "\n".join(rows) + "\n")
    return path


def _fake_embedding(monkeypatch, seen: list) -> None:
    """``dmlkit text embed`` without loading a model: each text embeds to zeros."""
    import dmlkit.cli.text as cli_text
    import dmlkit.text

    def embed_texts(model, texts, batch_size=64):
        seen.extend(texts)
        return torch.zeros(len(texts), 4)

    monkeypatch.setattr(cli_text, "_model", lambda run_dir, device: object())
    monkeypatch.setattr(dmlkit.text, "embed_texts", embed_texts)


def _text_embed(tmp_path, data):
    out = tmp_path / "e.npz"
    result = CliRunner().invoke(app, ["text", "embed", str(data), "-o", str(out)])
    return result, out


# STS-B parts ----------------------------------------------------------------------------

@pytest.mark.parametrize("parts", [{"part": "test"}, {"part": "train", "heldout_part": "train"},
                                   {"part": "test", "heldout_part": "test"}])
def test_stsb_training_on_its_heldout_part_is_refused_before_a_run_starts(tmp_path, parts):
    cfg = _text_config({"name": "stsb", "kind": "pairs", "path": str(_fake_sts(tmp_path / "s")),
                        **parts})
    held = parts.get("heldout_part", "test")
    with pytest.raises(ValueError, match=rf"data.part and data.heldout_part are both {held!r}"
                                         r".*set data.heldout_part to another part") as err:
        build_text_splits(cfg)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="data.heldout_part"):
        train_text_run(cfg, tmp_path / "run", log=lambda _m: None)
    assert not (tmp_path / "run").exists()


def test_stsb_distinct_parts_still_split(tmp_path):
    cfg = _text_config({"name": "stsb", "kind": "pairs", "path": str(_fake_sts(tmp_path / "s")),
                        "part": "test", "heldout_part": "train"})
    train, heldout = build_text_splits(cfg)
    assert len(train) == len(heldout) == len(SENTENCES)


# held-out pairs enough for Spearman -----------------------------------------------------

def test_a_pairs_split_with_fewer_than_three_heldout_pairs_is_refused_before_the_run_dir(
        tmp_path):
    cfg = _text_config({"name": "text", "kind": "pairs", "test_fraction": 0.05,
                        "path": str(_write_pairs(tmp_path / "p.csv", 16))})
    with pytest.raises(ValueError, match=r"holds out 1 of 16 pairs .*at least 3.*"
                                         r"data.test_fraction"):
        build_text_splits(cfg)
    with pytest.raises(ValueError, match="at least 3"):
        train_text_run(cfg, tmp_path / "run", log=lambda _m: None)
    assert not (tmp_path / "run").exists()
    cfg.data.test_fraction = 0.2  # 3 of 16
    train, heldout = build_text_splits(cfg)
    assert (len(train), len(heldout)) == (13, 3)


# scores ---------------------------------------------------------------------------------

def test_a_jsonl_pair_without_its_score_names_the_row(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"sentence1": "a b", "sentence2": "c d", "score": 3}\n'
                    '{"sentence1": "e f", "sentence2": "g h"}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl, row 2: column 'score' must hold "
                                         r"numbers, got no value"):
        read_scored_pairs(path)


@pytest.mark.parametrize("score", ["1_0", "٣", "３"])
def test_a_score_in_a_python_only_spelling_is_refused_naming_the_row(tmp_path, score):
    path = tmp_path / "p.csv"
    path.write_text(f"sentence1,sentence2,score\na,b, 3 \nc,d,{score}\n")
    with pytest.raises(ValueError, match=rf"p\.csv, row 3: column 'score' must hold numbers, "
                                         rf"got '{score}'"):
        read_scored_pairs(path)


def test_a_json_boolean_score_is_refused_naming_the_row(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"sentence1": "a b", "sentence2": "c d", "score": 3}\n'
                    '{"sentence1": "i", "sentence2": "j", "score": true}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl, row 2: column 'score' must hold numbers, "
                                         r"got the JSON boolean true"):
        read_scored_pairs(path)


def test_plain_scores_still_read(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("sentence1,sentence2,score\na,b, 3 \nc,d,4.5\ne,f,1e0\ng,h,-2\n")
    assert read_scored_pairs(path).scores.tolist() == [3.0, 4.5, 1.0, -2.0]
    path = tmp_path / "p.jsonl"
    path.write_text('{"sentence1": "a", "sentence2": "b", "score": 3}\n'
                    '{"sentence1": "c", "sentence2": "d", "score": 0.5}\n')
    assert read_scored_pairs(path).scores.tolist() == [3.0, 0.5]


# labels beyond int64 --------------------------------------------------------------------

def test_integer_labels_beyond_int64_are_class_names(tmp_path):
    path = tmp_path / "big.csv"
    path.write_text("text,label\na,99999999999999999999\nb,0\nc,99999999999999999999\n")
    data = read_labelled_sentences(path)
    assert data.class_names == ["0", "99999999999999999999"]
    assert data.labels.tolist() == [1, 0, 1]
    path = tmp_path / "big.jsonl"
    path.write_text('{"text": "a", "label": 99999999999999999999}\n{"text": "b", "label": 0}\n')
    assert read_labelled_sentences(path).class_names == ["0", "99999999999999999999"]
    path.write_text('{"text": "a", "label": 9223372036854775807}\n{"text": "b", "label": 0}\n')
    assert read_labelled_sentences(path).labels.tolist() == [9223372036854775807, 0]


def test_text_embed_of_labels_beyond_int64_saves_their_names(tmp_path, monkeypatch):
    _fake_embedding(monkeypatch, [])
    path = tmp_path / "big.csv"
    path.write_text("text,label\na,99999999999999999999\nb,0\n")
    result, out = _text_embed(tmp_path, path)
    assert result.exit_code == 0, result.output
    with np.load(out) as saved:
        assert saved["labels"].tolist() == [1, 0]
        assert saved["class_names"].tolist() == ["0", "99999999999999999999"]


# duplicate columns ----------------------------------------------------------------------

@pytest.mark.parametrize(("name", "content"), [
    ("dup.csv", "text,label,text\nfirst text,x,second text\n"),
    ("dup.tsv", "text\tlabel\ttext\nfirst text\tx\tsecond text\n"),
    ("dup.txt", "text\tlabel\ttext\nfirst text\tx\tsecond text\n"),
])
def test_a_header_naming_a_column_twice_is_refused(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    for read in (read_records, read_sentences, read_labelled_sentences):
        with pytest.raises(ValueError, match=rf"{name}:1: the header names the column 'text' "
                                             r"twice \(fields 1 and 3\); rename one"):
            read(path)


def test_a_jsonl_object_naming_a_key_twice_is_refused(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y", "text": "c"}\n')
    with pytest.raises(ValueError, match=r"dup\.jsonl:2: the object names the key 'text' "
                                         r"twice; keep one"):
        read_labelled_sentences(path)


# dmlkit text embed: .txt and pairs files ------------------------------------------------

def test_text_embed_reads_a_tab_separated_txt_with_a_header_as_training_does(
        tmp_path, monkeypatch):
    seen: list = []
    _fake_embedding(monkeypatch, seen)
    path = tmp_path / "labels.txt"
    path.write_text("text\tlabel\n" + "".join(f"{t}\t{c}\n" for t, c in zip(
        SENTENCES, TOPICS, strict=True)))
    trained = read_labelled_sentences(path)
    result, out = _text_embed(tmp_path, path)
    assert result.exit_code == 0, result.output
    assert "8 embeddings" in result.output and "with labels" in result.output
    assert seen == SENTENCES == trained.texts
    with np.load(out) as saved:
        assert saved["texts"].tolist() == SENTENCES
        assert saved["labels"].tolist() == trained.labels.tolist()
        assert saved["class_names"].tolist() == trained.class_names


def test_text_embed_reads_a_txt_without_a_header_one_text_a_line(tmp_path, monkeypatch):
    seen: list = []
    _fake_embedding(monkeypatch, seen)
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(SENTENCES[:3]) + "\n\n")
    result, _ = _text_embed(tmp_path, path)
    assert result.exit_code == 0, result.output
    assert seen == SENTENCES[:3] and "note:" not in result.output


def test_text_embed_notes_tabs_kept_in_the_texts_of_a_txt_without_a_header(
        tmp_path, monkeypatch):
    seen: list = []
    _fake_embedding(monkeypatch, seen)
    path = tmp_path / "lines.txt"
    path.write_text("The team won.\tsports\nRain fell.\tweather\n")
    result, _ = _text_embed(tmp_path, path)
    assert result.exit_code == 0, result.output
    assert seen == ["The team won.\tsports", "Rain fell.\tweather"]
    assert f"note: {path} has no header row naming a 'text' column" in " ".join(
        result.output.split())


def test_text_embed_of_a_pairs_file_embeds_both_sentences_of_each_pair(tmp_path, monkeypatch):
    seen: list = []
    _fake_embedding(monkeypatch, seen)
    path = tmp_path / "pairs.csv"
    path.write_text("sentence1,sentence2,label\na b,c d,1\ne f,g h,0\n")
    result, out = _text_embed(tmp_path, path)
    assert result.exit_code == 0, result.output
    assert seen == ["a b", "e f", "c d", "g h"]
    assert "4 embeddings" in result.output and "2 pairs" in result.output
    with np.load(out) as saved:
        assert saved["texts"].tolist() == seen and "labels" not in saved.files
    help_text = " ".join(CliRunner().invoke(app, ["text", "embed", "--help"]).output.split())
    assert "sentence2" in help_text


# dmlkit embed of a text run -------------------------------------------------------------

@pytest.mark.parametrize("name", ["x.csv", "x.tsv", "x.jsonl", "x.txt"])
def test_embed_of_a_text_run_with_a_text_file_points_to_text_embed(tmp_path, name):
    run = tmp_path / "run"
    run.mkdir()
    _text_config({"name": "text", "kind": "labels", "path": "labels.csv"}).to_yaml(
        run / "config.yaml")
    data = tmp_path / name
    data.write_text("text,label\na,x\nb,y\n")
    result = CliRunner().invoke(app, ["embed", str(run), "--data", str(data),
                                      "-o", str(tmp_path / "e.npz")])
    assert result.exit_code == 1
    msg = " ".join(result.output.split())
    assert f"dmlkit text embed {data} --run {run}" in msg
    assert "unknown data format" not in msg
