"""One clear line for NaN rows, images without an embedder and a one-row Deep SVDD batch;
an audio folder with an empty speaker folder refused; the report's EER over the pairs
dmlkit evaluate scores (all of them when affordable), saying how many it used."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmlkit.apps import DeepSVDD, MetricOutlierDetector


@pytest.fixture()
def rows():
    x = np.random.default_rng(0).normal(size=(40, 5)).astype(np.float32)
    bad = x.copy()
    bad[3, 1] = np.nan
    return x, bad


@pytest.mark.parametrize("fit", [
    lambda x: DeepSVDD(epochs=1, dim=4).fit(x),
    lambda x: MetricOutlierDetector().fit(x),
])
def test_nan_rows_are_named_in_one_line(rows, fit):
    _, bad = rows
    with pytest.raises(ValueError) as err:
        fit(bad)
    message = str(err.value)
    assert message == ("X holds NaN or infinite values in 1 of 40 rows (row 3); drop those "
                       "rows or fill in the missing values first")


def test_nan_rows_of_new_data_are_named(rows):
    x, bad = rows
    det = MetricOutlierDetector().fit(x)
    with pytest.raises(ValueError, match=r"^X holds NaN or infinite values in 1 of 40 rows "
                                         r"\(row 3\)"):
        det.score_samples(bad)


def test_images_without_an_embedder_say_how_to_flatten_them():
    images = np.random.default_rng(0).normal(size=(10, 1, 4, 4))
    with pytest.raises(ValueError) as err:
        MetricOutlierDetector().fit(images)
    message = str(err.value)
    assert "\n" not in message and "flatten X to (10, 16) rows" in message
    assert "pass an embedder" in message


@pytest.mark.parametrize("size", [1, 0, True, 2.0])
def test_deep_svdd_batch_of_one_row_is_refused_before_training(rows, size):
    x, _ = rows
    with pytest.raises(ValueError, match="batch_size must be an integer >= 2 .*batch "
                                         "normalization"):
        DeepSVDD(epochs=1, dim=4, batch_size=size).fit(x)
    DeepSVDD(epochs=1, dim=4, batch_size=2).fit(x)  # the least that trains


# -- audio folders: every speaker folder holds recordings ----------------------------------
def test_an_empty_speaker_folder_is_refused(tmp_path):
    from dmlkit.data.audio import load_audio_folder, write_wav

    t = np.arange(8000) / 16_000
    for spk, f0 in (("anna", 220.0), ("carl", 330.0)):
        (tmp_path / spk).mkdir()
        write_wav(tmp_path / spk / "a.wav", (0.3 * np.sin(2 * np.pi * f0 * t)).astype(
            np.float32), 16_000)
    data = load_audio_folder(tmp_path, crop_seconds=0.25, trim=False)
    assert data.class_names == ["anna", "carl"]
    (tmp_path / "bert").mkdir()  # sorts between the two: labels would skip class 1
    (tmp_path / "bert" / "notes.txt").write_text("no recordings")
    with pytest.raises(ValueError) as err:
        load_audio_folder(tmp_path, crop_seconds=0.25, trim=False)
    message = str(err.value)
    assert f"({tmp_path / 'bert'})" in message and "hold no .wav files" in message
    assert "add its recordings or remove the folder" in message


# -- the report's verification: all pairs when affordable, else said to be sampled --------
def _embeddings(n: int):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 10
    z = torch.nn.functional.normalize(torch.randn(10, 16, generator=g)[labels]
                                      + 0.9 * torch.randn(n, 16, generator=g), dim=1)
    return z, labels


def test_report_eer_is_evaluates_over_all_pairs():
    from dmlkit.evaluation.verification import (
        pair_scores,
        pairs_from_labels,
        verification_metrics,
    )
    from dmlkit.report.collect import _verification

    z, labels = _embeddings(400)  # 79,800 pairs: more than the report sampled before
    ver = _verification(z, labels, 0)
    i, j, same = pairs_from_labels(labels, max_pairs=None)
    scores = pair_scores(z[torch.from_numpy(i)], z[torch.from_numpy(j)], "cosine")
    assert ver["pairs"] == ver["all_pairs"] == 400 * 399 // 2
    assert ver["eer"] == pytest.approx(verification_metrics(scores, same)["eer"], abs=1e-9)


def test_report_says_when_its_pairs_are_sampled():
    from dmlkit.report.collect import _verification
    from dmlkit.report.html import _verification as shown

    z, labels = _embeddings(100)
    every = shown(_verification(z, labels, 0))
    assert f"over all {100 * 99 // 2} pairs" in every and "sampled" not in every
    some = _verification(z, labels, 0, max_pairs=1000)
    assert some["pairs"] == 1000 and some["all_pairs"] == 4950
    assert "over a random 1000 of the 4950 pairs (sampled)" in shown(some)
