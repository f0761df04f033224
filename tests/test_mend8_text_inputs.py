"""Text data files read field by field as written, and ``dmlkit text embed``'s output,
device and line handling."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.data.text import read_labelled_sentences, read_records, read_scored_pairs


def test_a_csv_row_with_more_fields_than_the_header_is_refused(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\nHello, world,greet\nThe cat sleeps,animal\n")
    with pytest.raises(ValueError, match=r"t\.csv:2 has 3 fields but the header names 2; "
                                         r"quote each field that holds a comma") as err:
        read_labelled_sentences(path)
    assert "\n" not in str(err.value)
    path.write_text('text,label\n"Hello, world",greet\nThe cat sleeps,animal\n')
    assert read_labelled_sentences(path).texts == ["Hello, world", "The cat sleeps"]


def test_a_tsv_row_with_more_fields_names_the_tabs(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("text\tlabel\nfine\ta\nA\ttab\tb\n")
    with pytest.raises(ValueError, match=r"t\.tsv:3 has 3 fields but the header names 2; "
                                         r"separate the fields by one tab"):
        read_records(path)


def test_a_row_with_fewer_fields_is_refused_where_a_value_is_needed(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label,note\nHello,greet,x\nThe cat sleeps\n")
    with pytest.raises(ValueError, match=r"t\.csv, row 3: no label"):
        read_labelled_sentences(path)
    # a column no reader needs may be left off a row
    path.write_text("text,label,note\nHello,greet,x\nThe cat sleeps,animal\n")
    assert read_labelled_sentences(path).texts == ["Hello", "The cat sleeps"]
    # the score column is optional per file, not per row
    pairs = tmp_path / "p.tsv"
    pairs.write_text("sentence1\tsentence2\tscore\na\tb\t1\nc\td\n")
    with pytest.raises(ValueError, match=r"p\.tsv, row 3: column 'score' must hold numbers, "
                                         r"got no value; fix the score"):
        read_scored_pairs(pairs)
    pairs.write_text("sentence1\tsentence2\na\tb\nc\td\n")
    assert len(read_scored_pairs(pairs)) == 2


def test_a_tsv_keeps_its_quotes_and_one_record_a_line(tmp_path):
    lines = ['"Stop" and "go" he said\tq', '"Open quote text\tq', 'closing" quote text\tr',
             "plain\tr"]
    for name in ("t.tsv", "t.txt"):
        path = tmp_path / name
        path.write_text("text\tlabel\n" + "\n".join(lines) + "\n")
        rows = read_records(path)
        assert len(rows) == len(lines)
        assert [r["text"] for r in rows] == [line.split("\t")[0] for line in lines]
    assert read_labelled_sentences(tmp_path / "t.tsv").texts[0] == '"Stop" and "go" he said'


def _fake_embedding(monkeypatch, seen: list | None = None) -> None:
    """``dmlkit text embed`` without loading a model: each text embeds to zeros."""
    import dmlkit.cli.text as cli_text
    import dmlkit.text

    def embed_texts(model, texts, batch_size=64):
        if seen is not None:
            seen.extend(texts)
        return torch.zeros(len(texts), 4)

    monkeypatch.setattr(cli_text, "_model", lambda run_dir, device: object())
    monkeypatch.setattr(dmlkit.text, "embed_texts", embed_texts)


def test_text_embed_adds_npz_and_prints_the_real_path(tmp_path, monkeypatch):
    _fake_embedding(monkeypatch)
    data = tmp_path / "t.csv"
    data.write_text("text\nHello\nWorld\n")
    res = CliRunner().invoke(app, ["text", "embed", str(data), "-o", str(tmp_path / "emb")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "emb.npz").is_file() and not (tmp_path / "emb").exists()
    assert f"wrote {tmp_path / 'emb.npz'}:" in res.output


def test_text_embed_checks_the_output_before_embedding(tmp_path, monkeypatch):
    seen: list[str] = []
    _fake_embedding(monkeypatch, seen)
    data = tmp_path / "t.csv"
    data.write_text("text\nHello\n")
    (tmp_path / "adir.npz").mkdir()
    res = CliRunner().invoke(app, ["text", "embed", str(data), "-o", str(tmp_path / "adir")])
    assert res.exit_code == 1
    assert "is a directory; give a .npz file name" in res.output
    assert seen == []  # refused before embedding
    (tmp_path / "file").write_text("x")
    res = CliRunner().invoke(app, ["text", "embed", str(data), "-o",
                                   str(tmp_path / "file" / "e.npz")])
    assert res.exit_code == 1 and "is a file, not a directory" in res.output
    assert seen == []


def test_text_embed_reports_a_failed_write_on_one_line(tmp_path, monkeypatch):
    _fake_embedding(monkeypatch)
    data = tmp_path / "t.csv"
    data.write_text("text\nHello\n")

    def full(path, **arrays):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(np, "savez", full)
    res = CliRunner().invoke(app, ["text", "embed", str(data), "-o", str(tmp_path / "e.npz")])
    assert res.exit_code == 1
    assert res.output.strip() == f"error: {tmp_path / 'e.npz'}: No space left on device"


@pytest.mark.parametrize("device, says", [
    ("bogus", "--device 'bogus' is not a device name"),
    ("meta", "--device is 'meta'"),
])
def test_text_embed_checks_the_device_of_the_pretrained_model(tmp_path, device, says):
    data = tmp_path / "t.csv"
    data.write_text("text\nHello\n")
    res = CliRunner().invoke(app, ["text", "embed", str(data), "-o", str(tmp_path / "e.npz"),
                                   "--device", device])
    assert res.exit_code == 1
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert says in res.output and "Traceback" not in res.output
    assert not (tmp_path / "e.npz").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_text_embed_refuses_cuda_where_there_is_none(tmp_path):
    data = tmp_path / "t.csv"
    data.write_text("text\nHello\n")
    res = CliRunner().invoke(app, ["text", "embed", str(data), "-o", str(tmp_path / "e.npz"),
                                   "--device", "cuda"])
    assert res.exit_code == 1 and "CUDA is not available here" in res.output


def test_text_embed_reads_one_text_a_line_split_at_newlines_only(tmp_path, monkeypatch):
    seen: list[str] = []
    _fake_embedding(monkeypatch, seen)
    data = tmp_path / "lines.TXT"
    texts = ["First text\u2028still first", "Second\x0ctext", "Third \x85 text", "Fourth"]
    data.write_bytes(("\n".join(texts[:3]) + "\r\n\n" + texts[3] + "\r\n").encode())
    res = CliRunner().invoke(app, ["text", "embed", str(data), "-o", str(tmp_path / "e.npz")])
    assert res.exit_code == 0, res.output
    assert seen == texts
    with np.load(tmp_path / "e.npz") as saved:
        assert saved["texts"].tolist() == texts


def _text_run(path: Path) -> Path:
    path.mkdir()
    (path / "config.yaml").write_text(json.dumps({"name": "t", "data": {"name": "text"}}))
    return path


def test_a_text_runs_mismatch_suggests_building_from_text_embeddings(tmp_path):
    from dmlkit.index.provenance import check_index_source

    served = _text_run(tmp_path / "served")
    info = {"run_dir": str(tmp_path / "built"), "model_sha256": "1" * 64}
    embedder = SimpleNamespace(run_dir=str(served), model_sha256="2" * 64)
    for use in ("serve", "search"):
        with pytest.raises(ValueError) as err:
            check_index_source(info, embedder, use=use)
        message = str(err.value)
        assert "\n" not in message
        assert (f"(dmlkit text embed FILE --run {served} -o e.npz, then dmlkit index build "
                "e.npz --out INDEX)") in message
        assert f"dmlkit index build {served}" not in message
    # the same run trained further: its index is rebuilt from text embeddings too
    stale = {"run_dir": str(served), "model_sha256": "1" * 64}
    with pytest.raises(ValueError, match=r"stale; rebuild the index \(dmlkit text embed FILE "
                                         r"--run .*served -o e\.npz"):
        check_index_source(stale, embedder)
    # a served text embedder says so itself; other runs keep the run's index build
    other = SimpleNamespace(run_dir=str(tmp_path / "x"), model_sha256="2" * 64,
                            input_kind="text")
    with pytest.raises(ValueError, match="dmlkit text embed FILE --run"):
        check_index_source(info, other)
    numeric = SimpleNamespace(run_dir=str(tmp_path / "x"), model_sha256="2" * 64)
    with pytest.raises(ValueError, match=r"dmlkit index build .*x \.\.\."):
        check_index_source(info, numeric)
