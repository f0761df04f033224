"""`dmlkit search` names the query file and rows holding NaN / infinite values, as the
build path does; a run whose model embeds to another width than the index's is named
with both widths; and values that overflow float32 are said to, not reported as NaN."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from test_index_search_fixes import TINY, _error
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()



@pytest.fixture
def index16(tmp_path):
    """An exact index of 16-d embeddings (built from a file: no run of its own)."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "e.npz", embeddings=rng.normal(size=(30, 16)).astype("float32"))
    res = runner.invoke(app, ["index", "build", str(tmp_path / "e.npz"), "--out",
                              str(tmp_path / "idx")])
    assert res.exit_code == 0, res.output
    return tmp_path / "idx"


def test_search_names_the_query_file_and_its_non_finite_rows(index16, tmp_path):
    q = np.random.default_rng(1).normal(size=(5, 16)).astype(np.float32)
    q[[1, 3]] = np.nan
    np.savez(tmp_path / "qnan.npz", embeddings=q)
    res = runner.invoke(app, ["search", str(index16), "-q", str(tmp_path / "qnan.npz")])
    assert res.exit_code != 0
    assert _error(res) == (f"error: {tmp_path / 'qnan.npz'}: embeddings holds NaN or "
                           "infinite values in 2 of 5 rows (rows 1, 3); drop those rows or "
                           "fill in the missing values first")


@pytest.mark.parametrize("command", ["search", "build"])
def test_values_beyond_float32_are_said_to_overflow(index16, tmp_path, command):
    q = np.zeros((4, 16))
    q[2, 5] = 1e39
    np.savez(tmp_path / "big.npz", embeddings=q)
    args = (["search", str(index16), "-q", str(tmp_path / "big.npz")] if command == "search"
            else ["index", "build", str(tmp_path / "big.npz"), "--out", str(tmp_path / "o")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy overflow warning on the way
        res = runner.invoke(app, args)
    assert res.exit_code != 0
    message = _error(res)
    assert message.startswith(f"error: {tmp_path / 'big.npz'}: embeddings holds values that "
                              "overflow float32 (|value| up to 1e+39")
    assert "in 1 of 4 rows (row 2)" in message and "NaN" not in message


def test_index_api_says_values_overflow_float32():
    from dmlkit.index import ExactIndex

    index = ExactIndex(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"^x holds values that overflow float32 .* in 2 "
                           r"of 3 rows \(rows 0, 2\)"):
            index.add(np.array([[1e39, 0, 0, 0], [1, 1, 1, 1], [0, 0, -1e300, 0]]))
        with pytest.raises(ValueError, match=r"^q contains NaN or infinite values in 1 of 2 "
                           r"rows \(row 1\)$"):
            index.search(np.array([[0, 0, 0, 0], [0, np.inf, 0, 0]], np.float32), 1)
    assert index.ntotal == 0


def test_a_run_whose_model_embeds_to_another_width_is_named(index16, tmp_path):
    from dmlkit.config import Config
    from dmlkit.training import train_run

    train_run(Config.from_dict(TINY), tmp_path / "run", log=lambda *a: None)  # 8-d embeddings
    np.save(tmp_path / "raw.npy", np.random.default_rng(0).random((3, 1, 8, 8)))
    res = runner.invoke(app, ["search", str(index16), "-q", str(tmp_path / "raw.npy"),
                              "--run", str(tmp_path / "run")])
    assert res.exit_code != 0
    message = _error(res)
    assert f"the model of run {tmp_path / 'run'} produces 8-d embeddings" in message
    assert f"the index {index16} holds 16-d ones" in message and "(n, 16)" not in message
