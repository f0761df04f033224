"""An empty, truncated or foreign ``.npz`` given where a model fingerprint is looked up
(``detect-anomalies --normal``, and every command comparing two embeddings files) is the
one-line message every reader of such files gives, never numpy's error or a traceback."""

from __future__ import annotations

import re

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.index.provenance import EMBEDDINGS_MODEL_KEY, check_same_model, embeddings_fingerprint

runner = CliRunner()

BAD = {  # file content -> the words of the shared message
    b"PK\x03\x04junk": "cannot be read",
    b"": "is empty (0 bytes)",
    bytes(range(100)): "is not a numpy array file",
}


@pytest.mark.parametrize("content, words", BAD.items())
def test_fingerprint_of_an_unreadable_file_is_a_value_error_naming_it(tmp_path, content,
                                                                       words):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(words)) as info:
        embeddings_fingerprint(bad)
    assert str(bad) in str(info.value) and "allow_pickle" not in str(info.value)
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((2, 2)), **{EMBEDDINGS_MODEL_KEY: np.array("abc")})
    with pytest.raises(ValueError, match=re.escape(words)):
        check_same_model(bad, good)


def test_fingerprints_of_readable_files_are_unchanged(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((2, 2)), **{EMBEDDINGS_MODEL_KEY: np.array("abc")})
    np.savez(tmp_path / "b.npz", x=np.zeros((2, 2)))
    assert embeddings_fingerprint(tmp_path / "a.npz") == "abc"
    assert embeddings_fingerprint(tmp_path / "b.npz") is None


@pytest.mark.parametrize("content, words", BAD.items())
def test_detect_anomalies_with_an_unreadable_normal_file_is_one_error_line(tmp_path, content,
                                                                           words):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(content)
    data = tmp_path / "test.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(10, 4)))
    res = runner.invoke(app, ["detect-anomalies", "--normal", str(bad), "--data", str(data),
                              "--out", str(tmp_path / "s.csv")])
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad} {words}"), res.output
    assert not (tmp_path / "s.csv").exists()
