"""Speech: WAV I/O, resampling, VAD trimming, crops, log-mel, SpeakerEncoder, minDCF,
the resemblyzer baseline and flite voices (skipped when flite or resemblyzer is absent)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch

from dmlkit.data.audio import (
    crop_dataset,
    crops,
    load_speaker_folder,
    read_wav,
    resample,
    trim_silence,
    write_wav,
)
from dmlkit.functional.verification import min_dcf, roc_curve
from dmlkit.losses import ArcFaceLoss
from dmlkit.models import SpeakerEncoder
from dmlkit.models.speaker_encoder import LogMel, mel_filterbank

SR = 16_000


def tone(f0: float, seconds: float, sr: int = SR, harmonics: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, harmonics + 1)).astype(
        np.float32) * 0.3


def test_wav_roundtrip_and_errors(tmp_path):
    x = tone(440, 0.1)
    write_wav(tmp_path / "a.wav", x, 22050)
    y, rate = read_wav(tmp_path / "a.wav")
    assert rate == 22050 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=1.0 / 32767)
    with pytest.raises(ValueError, match="no such WAV"):
        read_wav(tmp_path / "missing.wav")
    (tmp_path / "bad.wav").write_bytes(b"not a wav")
    with pytest.raises(ValueError, match="bad.wav"):
        read_wav(tmp_path / "bad.wav")


def test_resample_matches_scipy_and_keeps_frequency():
    signal = pytest.importorskip("scipy.signal")
    x = tone(440, 0.5, sr=22050)
    y = resample(x, 22050, SR)
    ref = signal.resample(x.astype(np.float64), y.size)
    np.testing.assert_allclose(y, ref, atol=1e-4)
    peak = np.argmax(np.abs(np.fft.rfft(y))) * SR / y.size
    assert abs(peak - 440) < 3
    np.testing.assert_array_equal(resample(x, SR, SR), x)
    with pytest.raises(ValueError, match="sample rates"):
        resample(x, 0, SR)


def test_trim_silence_cuts_edges_and_long_gaps():
    rng = np.random.default_rng(0)
    sil = (1e-4 * rng.standard_normal(SR)).astype(np.float32)  # 1 s near-silence
    voice = tone(200, 0.5, harmonics=5)
    x = np.concatenate([sil, voice, sil, voice, sil])
    y = trim_silence(x, SR)
    assert 0.95 * SR <= y.size <= 1.3 * SR  # two 0.5 s tones plus short margins
    short_gap = np.concatenate([voice, sil[: SR // 10], voice])
    assert trim_silence(short_gap, SR).size == short_gap.size  # 0.1 s pause kept
    np.testing.assert_array_equal(trim_silence(np.zeros(100, np.float32)), np.zeros(100))


def test_crops():
    x = np.arange(10, dtype=np.float32)
    c = crops(x, 4, min_fraction=0.75)
    np.testing.assert_array_equal(c, [[0, 1, 2, 3], [4, 5, 6, 7]])
    c = crops(x, 4)  # 2-sample tail >= half a crop: kept, padded by repetition
    np.testing.assert_array_equal(c[-1], [8, 9, 8, 9])
    np.testing.assert_array_equal(crops(x, 4, hop=3)[:, 0], [0, 3, 6])
    np.testing.assert_array_equal(crops(x[:3], 4), [[0, 1, 2, 0]])
    x2, y2, src = crop_dataset([x, x[:4]], np.array([3, 5]), 4)
    assert x2.shape == (4, 4) and y2.tolist() == [3, 3, 3, 5] and src.tolist() == [0, 0, 0, 1]
    with pytest.raises(ValueError, match="length"):
        crops(x, 0)


def test_mel_filterbank_matches_librosa_htk():
    librosa = pytest.importorskip("librosa")
    ours = mel_filterbank(40, 512, SR, f_min=20.0).numpy()
    ref = librosa.filters.mel(sr=SR, n_fft=512, n_mels=40, fmin=20.0, htk=True, norm=None)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_logmel_peak_band_follows_frequency():
    fe = LogMel(normalize=False)
    lo, hi = fe(torch.from_numpy(np.stack([tone(300, 0.5), tone(3000, 0.5)])))  # (M, N) each
    assert lo.mean(1).argmax() < hi.mean(1).argmax()
    assert lo.shape == (40, 51)
    with pytest.raises(ValueError, match="waveform batch"):
        fe(torch.zeros(100))


def test_speaker_encoder_trains_with_arcface():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    f0s = [110.0, 160.0, 230.0, 330.0]  # four tone "speakers", 5 harmonics, random phase
    x = torch.from_numpy(np.stack([
        np.roll(tone(f * rng.uniform(0.97, 1.03), 0.25, harmonics=5), rng.integers(SR // 4))
        for f in f0s for _ in range(3)]))  # (12, 4000)
    y = torch.arange(4).repeat_interleave(3)
    model = SpeakerEncoder(dim=16, channels=16, dilations=(2, 3))
    loss_fn = ArcFaceLoss(num_classes=4, embedding_size=16, margin=10.0, scale=16.0)
    opt = torch.optim.Adam(list(model.parameters()) + list(loss_fn.parameters()), lr=5e-3)
    losses = []
    for _ in range(10):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    e = model(x)  # (12, 16)
    assert e.shape == (12, 16)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(12))
    u = model.embed_utterance(x.reshape(-1)[: SR], crop=SR // 4, hop=SR // 8)
    assert u.shape == (16,) and abs(float(u.norm()) - 1) < 1e-5
    with pytest.raises(ValueError, match="shorter"):
        model(torch.zeros(2, 100))


def _min_dcf_loop(scores, same, p_target, c_miss, c_fa):
    best = np.inf
    for t in [np.inf, *sorted(set(scores.tolist()))]:
        miss = sum(1 for s, y in zip(scores, same, strict=True) if y and s < t) / same.sum()
        fa = sum(1 for s, y in zip(scores, same, strict=True) if not y and s >= t) / (~same).sum()
        best = min(best, c_miss * miss * p_target + c_fa * fa * (1 - p_target))
    return best / min(c_miss * p_target, c_fa * (1 - p_target))


@pytest.mark.parametrize("p_target,c_miss,c_fa", [(0.01, 1.0, 1.0), (0.05, 10.0, 1.0),
                                                   (0.5, 1.0, 3.0)])
def test_min_dcf_matches_loop(p_target, c_miss, c_fa):
    rng = np.random.default_rng(1)
    same = rng.random(300) < 0.2
    scores = np.round(rng.standard_normal(300) + 1.5 * same, 1)  # ties included
    got, thr = min_dcf(*roc_curve(scores, same), p_target=p_target, c_miss=c_miss, c_fa=c_fa)
    assert got == pytest.approx(_min_dcf_loop(scores, same, p_target, c_miss, c_fa), abs=1e-12)
    miss = np.mean(scores[same] < thr)
    fa = np.mean(scores[~same] >= thr)
    cost = (c_miss * miss * p_target + c_fa * fa * (1 - p_target))
    assert cost / min(c_miss * p_target, c_fa * (1 - p_target)) == pytest.approx(got)
    with pytest.raises(ValueError, match="p_target"):
        min_dcf(*roc_curve(scores, same), p_target=1.0)


@pytest.fixture(scope="module")
def flite_speakers(tmp_path_factory):
    """``root/<voice>/<k>.wav``: three flite voices each reading three different sentences."""
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed (apt-get install -y flite)")
    lines = ["The old captain opened the window before morning.",
             "Seven young teachers walked slowly across the market.",
             "Perhaps the river carried a letter to the quiet village."]
    root = tmp_path_factory.mktemp("flite")
    for v in ("awb", "rms", "slt"):
        (root / v).mkdir()
        for k, text in enumerate(lines):
            subprocess.run(["flite", "-voice", v, "-t", text, "-o", str(root / v / f"{k}.wav")],
                           check=True)
    return root


def test_load_speaker_folder_on_flite(flite_speakers):
    waves, labels, names, paths = load_speaker_folder(flite_speakers)
    assert names == ["awb", "rms", "slt"] and labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert all(w.dtype == np.float32 and SR < w.size < 6 * SR for w in waves)
    raw, rate = read_wav(paths[0])
    assert rate == SR and waves[0].size < raw.size  # silence trimmed


@pytest.mark.slow  # loads librosa/numba and an LSTM: tens of seconds on 2 cores
def test_resemblyzer_separates_flite_voices(flite_speakers):
    from dmlkit.models.pretrained import ResemblyzerEncoder

    try:
        enc = ResemblyzerEncoder()
    except ImportError as e:
        assert "dmlkit[audio]" in str(e)
        pytest.skip(f"resemblyzer unavailable: {e}")
    waves, labels, _, _ = load_speaker_folder(flite_speakers)
    e = torch.stack([enc.embed_utterance(torch.from_numpy(w)) for w in waves]).numpy()
    sim = e @ e.T  # (9, 9)
    same = labels[:, None] == labels[None, :]
    off = ~np.eye(len(labels), dtype=bool)
    assert sim[same & off].min() > sim[~same].max()


def write_speaker_folder(root, n_speakers=4, n_files=3, seconds=1.2, seed=0):
    """``root/spk<k>/<i>.wav``: each "speaker" a harmonic tone at its own pitch, with noise."""
    rng = np.random.default_rng(seed)
    for k in range(n_speakers):
        d = root / f"spk{k}"
        d.mkdir(parents=True)
        for i in range(n_files):
            f0 = 110.0 * 1.5**k * (1 + 0.01 * rng.standard_normal())
            x = tone(f0, seconds, harmonics=3) + 0.01 * rng.standard_normal(int(seconds * SR))
            write_wav(d / f"{i}.wav", x, 22050 if i == 0 else SR)  # one resampled file
    return root


def test_audio_folder_source_trains_and_evaluates_from_the_cli(tmp_path):
    import json
    from pathlib import Path

    import yaml
    from typer.testing import CliRunner

    from dmlkit.cli.main import app
    from dmlkit.config import Config
    from dmlkit.data import load_dataset

    folder = write_speaker_folder(tmp_path / "wavs")
    raw = yaml.safe_load(Path("configs/speakers.yaml").read_text())
    assert raw["data"]["name"] == "audio_folder" and raw["model"]["name"] == "speaker_encoder"
    raw["data"].update(path=str(folder), crop_seconds=0.4)
    raw["model"].update(dim=16, channels=16, dilations=[2])
    raw["training"].update(epochs=1, batch_size=8, num_threads=1)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    cfg = Config.from_yaml(tmp_path / "c.yaml")
    data = load_dataset(cfg.data)  # the crops of every file, labelled by speaker folder
    waves, labels, names, _ = load_speaker_folder(folder)
    x, y, _ = crop_dataset(waves, labels, 6400)  # 0.4 s at 16 kHz
    assert data.x.shape[0] >= 4 * 3 * 2 and tuple(data.x.shape[1:]) == (6400,)
    np.testing.assert_array_equal(data.x.numpy(), x)
    np.testing.assert_array_equal(data.labels.numpy(), y)
    assert data.class_names == names == ["spk0", "spk1", "spk2", "spk3"]
    from dmlkit.data.load import data_config

    assert data_config(str(folder)).name == "audio_folder"  # --data FOLDER works too
    runner = CliRunner()
    res = runner.invoke(app, ["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--metric", "cosine",
                              "--sections", "retrieval,verification"])
    assert res.exit_code == 0, res.output
    assert "min_dcf" in res.output and "eer" in res.output
    ver = json.loads((tmp_path / "run" / "evaluation.json").read_text())["verification"]
    assert 0.0 <= ver["eer"] <= 1.0 and 0.0 <= ver["min_dcf"] <= 1.0
    from dmlkit.runs import build_splits

    n = len(build_splits(cfg)[1])
    assert ver["num_pairs"] == n * (n - 1) // 2 and n >= 8  # all pairs of the held-out crops


def test_audio_folder_config_errors(tmp_path):
    from dmlkit.config.schema import DataConfig
    from dmlkit.data import load_dataset

    with pytest.raises(ValueError, match="needs data.path"):
        DataConfig(name="audio_folder")
    with pytest.raises(ValueError, match="crop_seconds"):
        DataConfig(name="audio_folder", path="x", crop_seconds=0)
    (tmp_path / "empty" / "spk0").mkdir(parents=True)
    with pytest.raises(ValueError, match="no .wav files"):
        load_dataset({"name": "audio_folder", "path": str(tmp_path / "empty")})


def test_damaged_wav_files_are_named_or_read_up_to_their_last_whole_frame(tmp_path):
    from dmlkit.data.audio import read_wav

    good = tmp_path / "good.wav"
    write_wav(good, np.sin(np.linspace(0, 50, 8000)).astype(np.float32))
    data = good.read_bytes()
    for name, body in (("empty.wav", b""), ("header.wav", data[:30])):
        (tmp_path / name).write_bytes(body)
        with pytest.raises(ValueError, match=f"{name} is not a PCM WAV"):
            read_wav(tmp_path / name)
    (tmp_path / "odd.wav").write_bytes(data[:10001])  # cut inside a 16-bit sample
    x, rate = read_wav(tmp_path / "odd.wav")
    assert rate == 16000 and x.size == (10001 - 44) // 2


def test_embed_utterance_takes_numpy_and_runs_in_eval_mode():
    torch.manual_seed(0)
    model = SpeakerEncoder().train()
    wav = np.random.default_rng(0).normal(size=20000).astype(np.float32) * 0.1
    a = model.embed_utterance(wav)  # one crop: batch norms would fail in training mode
    assert model.training
    b = model.eval().embed_utterance(torch.from_numpy(wav))
    torch.testing.assert_close(a, b)


def test_the_speaker_encoder_takes_the_data_sample_rate():
    from dmlkit.config import Config
    from dmlkit.training import resolve_config

    cfg = Config.from_dict({"name": "s", "data": {"name": "audio_folder", "path": "wavs",
                                                  "sample_rate": 8000},
                            "model": {"name": "speaker_encoder"}})
    resolved = resolve_config(cfg, torch.zeros(16000), 3)
    assert resolved.model["sample_rate"] == 8000
    cfg.model["sample_rate"] = 16000
    with pytest.raises(ValueError, match="data.sample_rate is 8000"):
        resolve_config(cfg, torch.zeros(16000), 3)
