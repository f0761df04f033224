"""``dmlkit classical fit --out`` follows the output-folder rules: never inside or onto a
saved index, never a run directory or its own source; a bad ``--param`` is one line."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()


@pytest.fixture
def saved_index(tmp_path):
    from dmlkit.index import ExactIndex

    index = ExactIndex(4)
    index.add(np.eye(4, dtype=np.float32))
    index.save(tmp_path / "idx")
    return tmp_path / "idx"


def fit(source, out, *extra):
    return runner.invoke(app, ["classical", "fit", str(source), "-m", "lfda", "--out",
                               str(out), *extra])


def test_fit_refuses_an_out_inside_or_onto_a_saved_index(emb_npz, saved_index):
    before = sorted(p.name for p in saved_index.iterdir())
    for out, said in ((saved_index / "sub", "lies inside"), (saved_index, "is a saved")):
        res = fit(emb_npz, out)
        assert res.exit_code == 1, res.output
        assert said in res.output and "dmlkit-index" in res.output, res.output
        assert "Traceback" not in res.output
    assert sorted(p.name for p in saved_index.iterdir()) == before  # nothing written


def test_fit_refuses_a_run_directory_and_its_own_source(emb_npz, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}\n")
    (run / "model.pt").write_bytes(b"")
    res = fit(emb_npz, run)
    assert res.exit_code == 1, res.output
    assert "is a run directory" in res.output and str(run / "metric") in res.output
    assert not (run / "metric.json").exists()
    res = fit(emb_npz, emb_npz)  # the source itself
    assert res.exit_code == 1, res.output
    assert "error:" in res.output and "Traceback" not in res.output


def test_fit_still_writes_a_new_folder(emb_npz, tmp_path):
    res = fit(emb_npz, tmp_path / "m")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m" / "metric.json").is_file()


def test_a_param_without_equals_is_one_error_line(emb_npz, tmp_path):
    res = runner.invoke(app, ["classical", "fit", str(emb_npz), "-p", "foo", "--out",
                              str(tmp_path / "m")])
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --param needs key=value"), lines
    assert "'foo'" in lines[0]
    assert not (tmp_path / "m").exists()
