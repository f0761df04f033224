"""Audio folders: one listing rule for detection and loading, the sample rate a
pretrained speaker encoder takes, too-short recordings, crop lengths, messages."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest

from dmlkit.data.audio import (
    MAX_CROP_SAMPLES,
    MIN_SECONDS,
    check_crop_length,
    is_speaker_folder,
    load_audio_folder,
    load_wav,
    resample,
    speaker_files,
    write_wav,
)
from dmlkit.data.load import data_config, load_dataset

SR = 8000


def tone(f0: float, seconds: float, rate: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * f0 * t)).astype(np.float32)


def nested_folder(root, seconds=2.2):
    """``root/<speaker>/session1/<i>.wav``: WAVs one level below the speaker folders."""
    for k, spk in enumerate(("awb", "slt")):
        d = root / spk / "session1"
        d.mkdir(parents=True)
        for i in range(2):
            write_wav(d / f"u{i}.wav", tone(150.0 * (k + 1) + 7 * i, seconds), SR)
    return root


def upper_folder(root, seconds=2.2):
    """``root/<speaker>/U<i>.WAV``: upper-case suffixes."""
    for k, spk in enumerate(("awb", "slt")):
        (root / spk).mkdir(parents=True)
        for i in range(2):
            write_wav(root / spk / f"U{i}.WAV", tone(150.0 * (k + 1) + 7 * i, seconds), SR)
    return root


def test_nested_and_upper_case_speaker_folders_are_read_as_audio(tmp_path):
    for folder in (nested_folder(tmp_path / "nested"), upper_folder(tmp_path / "upper")):
        assert is_speaker_folder(folder)
        cfg = data_config(str(folder))
        assert cfg.name == "audio_folder"  # not an image folder without images
        data = load_dataset(str(folder))
        assert data.class_names == ["awb", "slt"] and len(data) == 4
        assert tuple(data.x.shape[1:]) == (int(cfg.crop_seconds * cfg.sample_rate),)
    # the same listing rule: hidden files are neither loaded nor detected
    hidden = tmp_path / "hidden" / "spk"
    hidden.mkdir(parents=True)
    write_wav(hidden / ".u0.wav", tone(200.0, 0.5), SR)
    assert not is_speaker_folder(tmp_path / "hidden")
    assert speaker_files(tmp_path / "hidden") == {"spk": []}
    assert data_config(str(tmp_path / "hidden")).name == "image_folder"


def test_identify_reads_nested_and_upper_case_speaker_folders(tmp_path):
    from typer.testing import CliRunner

    from dmlkit.cli.main import app

    nested, upper = nested_folder(tmp_path / "nested"), upper_folder(tmp_path / "upper")
    res = CliRunner().invoke(app, ["identify", "--gallery", str(nested), "--query", str(upper),
                                   "--out", str(tmp_path / "id.json")])
    assert res.exit_code == 0, res.output
    assert "no images" not in res.output and (tmp_path / "id.json").is_file()


def _speaker_config(model: dict, rate: int):
    from dmlkit.config import Config

    return Config.from_dict({"name": "s", "data": {"name": "audio_folder", "path": "wavs",
                                                   "sample_rate": rate},
                             "model": model, "loss": {"name": "arcface"}})


def test_a_fixed_rate_model_refuses_data_at_another_rate():
    import torch

    from dmlkit.models.pretrained.resemblyzer_encoder import ResemblyzerEncoder
    from dmlkit.registry import MODELS
    from dmlkit.training import resolve_config

    assert MODELS.get("resemblyzer") is ResemblyzerEncoder  # the class, not built
    assert ResemblyzerEncoder.input_sample_rate == 16_000
    example = torch.zeros(1600)
    with pytest.raises(ValueError, match="model 'resemblyzer' takes 16000 Hz audio, but "
                                         "data.sample_rate is 8000; set data.sample_rate: 16000"):
        resolve_config(_speaker_config({"name": "resemblyzer"}, 8000), example, 3)
    # at its rate, the config resolves without building (nor importing) the encoder
    resolved = resolve_config(_speaker_config({"name": "resemblyzer"}, 16_000), example, 3)
    assert resolved.loss["embedding_size"] == 256 and "sample_rate" not in resolved.model
    # a model that takes the rate as a parameter still gets the data's
    resolved = resolve_config(_speaker_config({"name": "speaker_encoder", "dim": 8,
                                               "channels": 8, "dilations": [2]}, 8000),
                              example, 3)
    assert resolved.model["sample_rate"] == 8000


def test_too_short_recordings_are_refused_naming_the_file(tmp_path):
    import wave

    one = tmp_path / "spk0" / "one.wav"
    one.parent.mkdir()
    with wave.open(str(one), "wb") as w:  # one frame at 44.1 kHz: no sample at 16 kHz
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(44_100)
        w.writeframes(b"\x10\x00")
    with pytest.raises(ValueError, match=r"one.wav is too short: 1 samples at 44100 Hz "
                                         r"\(0.0227 ms\), under the 25 ms"):
        load_wav(one)
    with pytest.raises(ValueError, match="resample to no sample at 16000 Hz"):
        resample(np.ones(1, np.float32), 44_100, 16_000)
    (tmp_path / "spk1").mkdir()
    write_wav(tmp_path / "spk1" / "ok.wav", tone(200.0, 1.0), SR)
    with pytest.raises(ValueError, match="one.wav is too short"):
        load_dataset(str(tmp_path))
    # one analysis window is enough
    write_wav(one, tone(200.0, MIN_SECONDS, 16_000), 16_000)
    assert load_wav(one, 16_000, trim=False).size == int(MIN_SECONDS * 16_000)


def test_crops_longer_than_the_recordings_are_warned_of_or_refused(tmp_path):
    folder = nested_folder(tmp_path / "wavs", seconds=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_audio_folder(folder, 16_000, 0.5)  # shorter than every recording
    assert tuple(data.x.shape[1:]) == (8000,)
    with pytest.warns(UserWarning, match=r"crop_seconds 3 is longer than 4 of 4 recordings "
                                         r".*\(100%; the longest is 1 s\).*at most 1 "):
        load_audio_folder(folder, 16_000, 3.0)
    with pytest.raises(ValueError, match=r"crop_seconds 20 is 20x the longest recording .* "
                                         r"\(1 s\); .*at most 1 "):
        load_audio_folder(folder, 16_000, 20.0)
    with pytest.raises(ValueError, match=r"crop_seconds 1000 at 16000 Hz makes crops of "
                                         r"16000000 samples \(61 MiB each\)"):
        load_audio_folder(tmp_path / "not_read", 16_000, 1000.0)  # before reading files
    with pytest.warns(UserWarning, match="longer than 2 of 3 recordings"):
        check_crop_length([8000, 8000, 40_000], 16_000, 16_000, "x")


def test_the_shipped_speaker_config_is_within_the_crop_limits():
    from pathlib import Path

    from dmlkit.config import Config

    data = Config.from_yaml(Path(__file__).parents[1] / "configs" / "speakers.yaml").data
    length = int(round(data.crop_seconds * data.sample_rate))
    assert length <= MAX_CROP_SAMPLES
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # recordings of 1.5 s and up: no warning
        check_crop_length([length, 2 * length, 3 * length], length, data.sample_rate, "x")


def test_messages_name_audio_folders(tmp_path):
    from dmlkit.cli.train import embed

    with pytest.raises(FileNotFoundError, match=r"audio folder \(one sub-folder of .wav files "
                                                r"per speaker\)"):
        data_config(str(tmp_path / "nope"))
    wav = tmp_path / "spk" / "u0.wav"
    wav.parent.mkdir()
    write_wav(wav, tone(200.0, 0.5), SR)
    with pytest.raises(ValueError, match="u0.wav is one recording, not a dataset"):
        data_config(str(wav))
    with pytest.raises(ValueError, match=r"u0.wav is a file, not a folder of speaker "
                                         r"sub-folders"):
        load_dataset({"name": "audio_folder", "path": str(wav)})
    help_text = inspect.signature(embed).parameters["data"].default.help
    assert "audio folder" in help_text


def test_a_folder_of_both_images_and_wavs_asks_which_to_read(tmp_path):
    from PIL import Image

    from dmlkit.data.load import data_config

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / name / "0.png")
    write_wav(tmp_path / "a" / "note.wav", np.zeros(1600, np.float32), 16000)
    with pytest.raises(ValueError, match=r"holds both images and \.wav files.*name: "
                                         r"image_folder"):
        data_config(str(tmp_path))
