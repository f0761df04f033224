"""Array files named with an upper-case suffix (``X.NPZ``, ``X.NPY``, as some tools and
file systems write them) are read as their lower-case twins."""

import re
import shutil

import numpy as np
from typer.testing import CliRunner

from dmlkit.cli.main import app


def _run(args):
    res = CliRunner().invoke(app, args)
    return res.exit_code, res.output


def _twin(path, upper):
    target = path.with_name(path.stem.upper() + upper)
    shutil.copy(path, target)
    return target


def test_evaluate_reads_an_upper_case_npz_of_embeddings(emb_npz):
    lower = _run(["evaluate", str(emb_npz)])
    upper = _run(["evaluate", str(_twin(emb_npz, ".NPZ"))])
    assert lower[0] == 0, lower[1]
    assert upper[0] == 0, upper[1]
    def metrics(out):  # the table's rows, without timings and file names
        return [line for line in out.splitlines() if re.match(r"\s+\w+\s+-?[0-9.]+$", line)]

    assert any(line.split()[0] == "map_at_r" for line in metrics(upper[1])), upper[1]
    assert metrics(upper[1]) == metrics(lower[1])


def test_classical_fit_reads_an_upper_case_npz(emb_npz, tmp_path):
    code, out = _run(["classical", "fit", str(_twin(emb_npz, ".NPZ")), "--method", "nca",
                      "--out", str(tmp_path / "m")])  # fmt: skip
    assert code == 0, out
    assert (tmp_path / "m").is_dir()


def test_verify_reads_an_upper_case_npz(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # verify.json is written to the working directory
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 12)
    x = rng.normal(size=(48, 6)) + 3 * np.eye(6)[y]
    np.savez(tmp_path / "v.npz", embeddings=x, labels=y)
    lower = _run(["verify", "--data", str(tmp_path / "v.npz")])
    upper = _run(["verify", "--data", str(_twin(tmp_path / "v.npz", ".NPZ"))])
    assert lower[0] == 0, lower[1]
    assert upper[0] == 0, upper[1]
    assert "eer" in upper[1]
    assert upper[1] == lower[1]
