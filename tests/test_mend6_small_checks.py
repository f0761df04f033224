"""A .npy saved under an .npz name, a NaN rate limit and a checkpoint interval below 1."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dmlkit.data.npz import read_arrays
from dmlkit.service.security import RateLimiter
from dmlkit.service.store import DurableIndex


def test_a_single_array_under_an_npz_name_is_one_clear_error(tmp_path):
    path = tmp_path / "emb.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=r"emb\.npz cannot be read \(a single \.npy array"):
        read_arrays(path)


def test_an_npz_archive_still_reads(tmp_path):
    path = tmp_path / "ok.npz"
    np.savez(path, x=np.arange(4.0), y=np.arange(4))
    arrays = read_arrays(path)
    assert sorted(arrays) == ["x", "y"] and arrays["x"].tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("rate", [math.nan, math.inf, 0.0, -1.0])
def test_a_rate_limiter_refuses_a_rate_that_is_not_a_positive_number(rate):
    with pytest.raises(ValueError, match="rate must be > 0"):
        RateLimiter(rate, 5)


@pytest.mark.parametrize("every", [0, -3, 2.5, True])
def test_a_durable_index_refuses_a_checkpoint_interval_below_one(tmp_path, every):
    with pytest.raises(ValueError, match="checkpoint_every must be an integer >= 1"):
        DurableIndex(tmp_path / "idx", checkpoint_every=every)


def test_a_file_given_as_an_image_folder_is_called_a_file(tmp_path):
    from dmlkit.data.image_folder import folder_images

    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((2, 8, 8)), labels=np.arange(2))
    with pytest.raises(ValueError, match=r"d\.npz is a file, not an image folder"):
        folder_images(path)


@pytest.mark.parametrize("n_way, why", [(1, "a 1-way episode has one class"),
                                        (0, "a 0-way episode draws no class"),
                                        (-3, "a -3-way episode draws no class")])
def test_episode_way_below_two_is_refused_with_the_right_reason(n_way, why):
    from dmlkit.apps.few_shot import FewShotClassifier

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)), np.repeat(np.arange(4), 10)
    with pytest.raises(ValueError, match=why):
        FewShotClassifier().evaluate_episodes(x, y, n_way=n_way)


def test_a_hand_edited_train_log_gives_numbers_only(tmp_path):
    from dmlkit.report.collect import _history_from_log
    from dmlkit.report.html import _curves

    (tmp_path / "train.log").write_text(
        "epoch 1 loss 0.5 lr 0.001 seconds 2.0\nepoch abc loss 0.4\nepoch 2 loss x lr y\n"
        "note: resumed\n")
    history = _history_from_log(tmp_path)
    assert history == [{"epoch": 1.0, "loss": 0.5, "lr": 0.001, "seconds": 2.0},
                       {"epoch": 2.0}]
    assert "<svg" in _curves(history)  # draws without a KeyError or a float() of a word


def test_a_corrupt_compressed_npz_is_one_clear_error(tmp_path):
    import zipfile

    path = tmp_path / "emb.npz"
    np.savez_compressed(path, x=np.random.default_rng(0).normal(size=(200, 50)))
    with zipfile.ZipFile(path) as z:
        info = z.infolist()[0]
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data = bytearray(path.read_bytes())
    for i in range(start + 20, start + 200):  # garble the deflate stream, not the headers
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"emb\.npz cannot be read"):
        read_arrays(path)


def test_a_scale_too_small_for_the_pixel_group_is_named_a_scale():
    from dmlkit.models.pretrained.lite0_settings import check_pixels

    with pytest.raises(ValueError, match=r"pools it from \(scale 32\)"):
        check_pixels(48, (96, 32), 1)
    with pytest.raises(ValueError, match=r"pools it from \(resolution 32\)"):
        check_pixels(48, (32,), 1)


@pytest.mark.parametrize("every", [math.inf, math.nan])
def test_a_durable_index_refuses_a_non_finite_checkpoint_interval(tmp_path, every):
    with pytest.raises(ValueError, match="checkpoint_every must be an integer >= 1"):
        DurableIndex(tmp_path / "idx", checkpoint_every=every)


@pytest.mark.parametrize("n, rates", [(16, (8000, 16000)), (32, (16000, 8000)), (17, (8000, 16000)),
                                      (33, (16000, 8000)), (100, (16000, 22050)),
                                      (1000, (8000, 16000)), (1000, (16000, 8000))])
def test_resample_matches_scipy_fourier_resampling_at_the_nyquist_bin(n, rates):
    signal = pytest.importorskip("scipy.signal")
    from dmlkit.data.audio import resample

    x = np.random.default_rng(n).normal(size=n)
    y = resample(x, *rates)
    np.testing.assert_allclose(y, signal.resample(x, len(y)), atol=1e-6)


def test_a_tone_at_nyquist_keeps_its_amplitude_when_upsampled():
    from dmlkit.data.audio import resample

    y = resample(np.array([1.0, -1.0] * 8), 8000, 16000)
    np.testing.assert_allclose(y[:4], [1.0, 0.0, -1.0, 0.0], atol=1e-6)


def test_an_all_silent_recording_is_warned_of_by_name(tmp_path):
    import wave

    from dmlkit.data.audio import load_wav

    path = tmp_path / "silent.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.zeros(16000, dtype=np.int16).tobytes())
    with pytest.warns(UserWarning, match=r"silent\.wav is silent"):
        x = load_wav(path)
    assert x.size and not x.any()


def test_the_stop_line_of_a_lost_process_gives_the_gist_not_gloos_text(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from dmlkit.training.stop_message import stop_message

    monkeypatch.setenv("WORLD_SIZE", "2")
    err = RuntimeError("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] "
                       "Connection closed by peer [127.0.0.1]:14004. This is typically caused "
                       "by a remote worker crashing. GLHF!")
    trainer = SimpleNamespace(checkpoint_path=tmp_path / "none.pt", out_dir=None, epoch=2,
                              saved_epoch=2)
    line = stop_message(trainer, err, None)
    assert "pair.cc" not in line and "GLHF" not in line
    assert "lost the connection to another process of the job: Connection closed by peer" in line


@pytest.mark.parametrize("bad", ["normal", "data"])
def test_detect_anomalies_refuses_a_1d_array_naming_option_and_file(tmp_path, bad):
    from typer.testing import CliRunner

    from dmlkit.cli.main import app

    rows = np.random.default_rng(0).normal(size=(40, 3))
    np.save(tmp_path / "rows.npy", rows)
    np.save(tmp_path / "flat.npy", np.arange(50.0))
    files = {"normal": "rows.npy", "data": "rows.npy", bad: "flat.npy"}
    res = CliRunner().invoke(app, ["detect-anomalies", "--normal",
                                   str(tmp_path / files["normal"]), "--data",
                                   str(tmp_path / files["data"]), "--out",
                                   str(tmp_path / "s.csv")])
    assert res.exit_code != 0
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1, res.output
    assert f"--{bad} {tmp_path / 'flat.npy'} holds a 1-D array of 50 values" in lines[0]


def test_a_float_id_of_integral_value_is_found_as_the_integer():
    from dmlkit.apps import CMLRecommender

    m = CMLRecommender(dim=4, epochs=1).fit(np.array([0.0, 1.0, 2.0, 0.0]),
                                            np.array([5.0, 6.0, 7.0, 7.0]))
    np.testing.assert_array_equal(m.recommend([0], k=3), m.recommend([0.0], k=3))
    assert m.fitted_on([0, 0], [5, 6]).tolist() == [True, False]


@pytest.mark.parametrize("name", ["NCA", "LMNN"])
def test_a_classical_learner_learns_the_same_metric_whatever_the_memory_order(name):
    from sklearn.datasets import load_iris

    import dmlkit.classical as classical

    X, y = load_iris(return_X_y=True)
    a = getattr(classical, name)(random_state=0).fit(X, y).components_
    b = getattr(classical, name)(random_state=0).fit(np.asfortranarray(X), y).components_
    np.testing.assert_allclose(a, b, atol=1e-10)


def test_serving_a_torchscript_export_advises_a_new_onnx_file_not_overwriting_it(tmp_path):
    import json

    from dmlkit.service.embedders import read_export_description

    model = tmp_path / "cnn.pt"
    model.write_bytes(b"torchscript")
    info = {"format": "torchscript", "input_name": "x", "output_name": "embeddings",
            "n_features": 64, "dim": 16, "run_dir": str(tmp_path / "run")}
    (tmp_path / "cnn.pt.json").write_text(json.dumps(info))
    with pytest.raises(ValueError) as err:
        read_export_description(model)
    message = str(err.value)
    assert "--force" not in message
    assert f"--format onnx --out {tmp_path / 'cnn.onnx'}" in message


def test_unscored_pairs_with_min_score_above_one_say_they_have_no_scores(tmp_path):
    from dmlkit.data.text import TextPairDataset, read_scored_pairs

    path = tmp_path / "pairs.tsv"
    path.write_text("sentence1\tsentence2\na cat\ta kitten\na car\tan auto\n")
    pairs = read_scored_pairs(path, min_score=3.0)
    with pytest.raises(ValueError, match="the pairs have no scores, so each counts as 1"):
        pairs.positives()
    with pytest.raises(ValueError, match="the pairs have no scores"):
        pairs.subset([0]).positives()
    scored = TextPairDataset(["a"], ["b"], [2.0], min_score=3.0)
    with pytest.raises(ValueError, match=r"no pair scores at least min_score 3.0$"):
        scored.positives()
    assert len(read_scored_pairs(path).positives()) == 2


def test_the_classical_table_names_its_first_column_by_the_inputs():
    """``raw`` in ``dmlkit train``'s table means raw pixels; here the column is the
    inputs as given (a run's embeddings), so it is named so."""
    from dmlkit.cli.classical import _table

    text = _table({"raw": {"map_at_r": 0.5}, "learned": {"map_at_r": 0.6}})
    header = text.splitlines()[0].split()
    assert header == ["metric", "inputs", "learned"]
