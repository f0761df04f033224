"""Audio inputs a speaker run takes or refuses: sample rates, WAV headers, crop lengths,
batch sizes, and folders and query files read with a run's own settings."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.data.audio import load_audio_folder, read_wav, write_wav
from dmlkit.models import SpeakerEncoder
from dmlkit.models.speaker_encoder import LogMel


def speaker_folder(root, rate=16_000, seconds=1.0, n_speakers=3, n_files=2):
    """``root/spk<k>/<i>.wav``: a tone per speaker at its own pitch, with a little noise."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    for k in range(n_speakers):
        d = root / f"spk{k}"
        d.mkdir(parents=True)
        for i in range(n_files):
            x = 0.3 * np.sin(2 * np.pi * 150.0 * 1.5**k * (1 + 0.02 * i) * t)
            write_wav(d / f"{i}.wav", x + 0.01 * rng.standard_normal(t.size), rate)
    return root


def speaker_config(tmp_path, folder, rate=16_000, **training):
    """A small speaker_encoder config over ``folder``, written to ``tmp_path/c.yaml``."""
    raw = {
        "name": "s",
        "data": {
            "name": "audio_folder",
            "path": str(folder),
            "sample_rate": rate,
            "crop_seconds": 0.3,
            "split": "stratified",
            "test_fraction": 0.3,
        },
        "model": {"name": "speaker_encoder", "dim": 8, "channels": 8, "dilations": [2]},
        "loss": {"name": "arcface"},
        "optimizer": {"name": "adam", "lr": 1e-3},
        "training": {"epochs": 1, "batch_size": 8, "num_threads": 1, **training},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def run_44k(tmp_path_factory):
    """A run trained on recordings at 44.1 kHz, and its folder."""
    tmp = tmp_path_factory.mktemp("r44")
    folder = speaker_folder(tmp / "wavs", rate=44_100)
    res = CliRunner().invoke(
        app,
        [
            "train",
            str(speaker_config(tmp, folder, 44_100)),
            "--out",
            str(tmp / "run"),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    return tmp / "run", folder


def test_logmel_takes_rates_whose_window_exceeds_512_samples():
    for rate in (22_050, 44_100, 48_000):
        mel = LogMel(rate)
        assert mel.n_fft >= mel.win and mel.n_fft & (mel.n_fft - 1) == 0
        assert mel.fbank.shape == (40, mel.n_fft // 2 + 1)
        out = mel(torch.randn(2, rate // 2))  # (B, M, N)
        assert out.shape[:2] == (2, 40) and torch.isfinite(out).all()
    assert LogMel(44_100).n_fft == 2048
    # the 16 kHz analysis stays as it was: 512-point FFT, nothing added to fingerprints
    default = LogMel(16_000)
    assert default.n_fft == 512 and default.win == 400 and default.fingerprint_settings() == {}
    assert SpeakerEncoder().features.n_fft == 512
    wav = torch.randn(1, 8000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(default(wav), LogMel(16_000, n_fft=512)(wav), rtol=0, atol=0)


def test_speaker_encoder_embeds_at_44100_hz():
    model = SpeakerEncoder(dim=8, channels=8, dilations=(2,), sample_rate=44_100).eval()
    assert model(torch.randn(2, 22_050)).shape == (2, 8)


def test_a_run_at_44100_hz_trains_and_embeds_its_folder(run_44k, tmp_path):
    run, folder = run_44k
    res = CliRunner().invoke(
        app, ["embed", str(run), "--data", str(folder), "--out", str(tmp_path / "e.npz")]
    )
    assert res.exit_code == 0, res.output
    emb = np.load(tmp_path / "e.npz")["embeddings"]
    assert emb.shape[1] == 8 and np.isfinite(emb).all()


def _with_header_rate(path, rate):
    blob = bytearray(path.read_bytes())
    struct.pack_into("<I", blob, 24, rate)  # the fmt chunk's sample rate
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("rate", [1, 2, 999, 768_001, 4_000_000_000])
def test_implausible_header_sample_rates_are_refused_naming_the_file(tmp_path, rate):
    path = tmp_path / "odd.wav"
    write_wav(path, np.zeros(3200) + 0.1)
    _with_header_rate(path, rate)
    with pytest.raises(ValueError, match=rf"odd\.wav.*{rate} Hz.*replace or remove it"):
        read_wav(path)


def test_plausible_header_sample_rates_are_read(tmp_path):
    path = tmp_path / "ok.wav"
    write_wav(path, np.zeros(3200) + 0.1)
    for rate in (1000, 8000, 768_000):
        _with_header_rate(path, rate)
        assert read_wav(path)[1] == rate


def test_a_folder_holding_a_file_of_implausible_rate_names_it(tmp_path):
    folder = speaker_folder(tmp_path / "wavs", n_speakers=2)
    _with_header_rate(folder / "spk1" / "0.wav", 2)
    with pytest.raises(ValueError, match=r"spk1[/\\]0\.wav"):
        load_audio_folder(folder, 16_000, 0.3)


@pytest.mark.parametrize("seconds", [1e-5, 0.01])
def test_crops_shorter_than_one_analysis_window_are_refused(tmp_path, seconds):
    folder = speaker_folder(tmp_path / "wavs", n_speakers=2)
    with pytest.raises(ValueError, match=r"data\.crop_seconds .* at least 0\.025"):
        load_audio_folder(folder, 16_000, seconds)
    res = CliRunner().invoke(
        app,
        [
            "train",
            str(speaker_config(tmp_path, folder)),
            "--set",
            f"data.crop_seconds={seconds}",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert res.exit_code != 0 and "data.crop_seconds" in res.output, res.output
    assert load_audio_folder(folder, 22_050, 0.025).x.shape[1] == 551  # the minimum fits


def test_batch_size_one_is_refused_for_a_model_with_batch_norm(tmp_path):
    folder = speaker_folder(tmp_path / "wavs", n_speakers=2)
    res = CliRunner().invoke(
        app,
        [
            "train",
            str(speaker_config(tmp_path, folder, batch_size=1)),
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert res.exit_code != 0, res.output
    assert "training.batch_size" in res.output and "Expected more than" not in res.output


def test_batch_size_one_check_names_the_sampler_or_passes_models_without_batch_norm():
    from dmlkit.config import Config
    from dmlkit.data import load_dataset
    from dmlkit.training import Trainer, resolve_config

    train = load_dataset("digits")
    base = {
        "name": "d",
        "data": {"name": "digits"},
        "loss": {"name": "contrastive"},
        "training": {"epochs": 1, "batch_size": 1, "num_threads": 1},
    }
    mlp = {"name": "mlp", "dim": 8, "hidden": [16]}

    def trainer(model, ready=None, **extra):
        cfg = Config.from_dict({**base, "model": model, **extra})
        return Trainer(resolve_config(cfg, train.x[0], 10), train, log=None, model=ready)

    with pytest.raises(ValueError, match=r"training\.batch_size 1.*batch norm"):
        trainer(mlp)
    # the digits config's sampler makes the batches: training.batch_size is unused
    trainer(mlp, sampler={"name": "m_per_class", "m": 8, "batch_size": 80})
    # (the sampler's warning about one-class batches is held back: the run is refused)
    with pytest.raises(ValueError, match=r"sampler\.batch_size 1"):
        trainer(mlp, sampler={"name": "m_per_class", "m": 1, "batch_size": 1})
    # no batch norm: a batch of one trains
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(train.x[0].numel(), 8))
    trainer(mlp, ready=linear)


def test_a_run_reads_a_folder_of_images_and_recordings_as_its_own_kind(run_44k, tmp_path):
    from PIL import Image

    from dmlkit.runs.data import run_data
    from dmlkit.training import load_run

    run, folder = run_44k
    mixed = tmp_path / "mixed"
    speaker_folder(mixed, rate=44_100)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mixed / "spk0" / "notes.png")
    data = run_data(load_run(run), str(mixed))
    assert tuple(data.x.shape[1:]) == (round(0.3 * 44_100),)
    assert data.class_names == ["spk0", "spk1", "spk2"]
    res = CliRunner().invoke(
        app, ["index", "build", str(run), "--data", str(mixed), "--out", str(tmp_path / "idx")]
    )
    assert res.exit_code == 0, res.output


def test_a_recording_query_points_to_embed_then_search(run_44k, tmp_path):
    run, folder = run_44k
    runner = CliRunner()
    res = runner.invoke(
        app, ["index", "build", str(run), "--data", str(folder), "--out", str(tmp_path / "idx")]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app, ["search", str(tmp_path / "idx"), "-q", str(folder / "spk0" / "0.wav")]
    )
    assert res.exit_code != 0
    assert "not an image" not in res.output and "dmlkit embed" in res.output, res.output
    assert "-q" in res.output and ".npz" in res.output
    # what the message says works: the recording embedded by the run, then searched
    query = tmp_path / "query" / "spk0"
    query.mkdir(parents=True)
    (query / "0.wav").write_bytes((folder / "spk0" / "0.wav").read_bytes())
    res = runner.invoke(
        app,
        ["embed", str(run), "--data", str(tmp_path / "query"), "--out", str(tmp_path / "q.npz")],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["search", str(tmp_path / "idx"), "-q", str(tmp_path / "q.npz")])
    assert res.exit_code == 0, res.output


def test_one_weak_tuple_per_batch_still_trains(tmp_path):
    """``training.batch_size`` of a weak run counts tuples: one triplet is three items,
    which batch norms can normalize."""
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[1] / "configs" / "weak_triplets_digits.yaml"
    config = yaml.safe_load(shipped.read_text())
    config["training"].update(batch_size=1, epochs=1, num_threads=1, progress=False)
    config["data"]["num_tuples"] = 20
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    res = CliRunner().invoke(app, ["train", str(path), "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
