"""Embeddings handed where a run's model takes raw inputs, and NaN rows named by file row."""

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()


def _error(res):
    return res.output.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def run_and_embeddings(tmp_path_factory):
    from dmlkit.config import Config
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("ev9_run")
    cfg = Config.from_dict({
        "name": "tiny",
        "data": {"name": "digits", "max_per_class": 10, "max_heldout_per_class": 10},
        "model": {"name": "mlp", "dim": 8, "hidden": [16]},
        "training": {"epochs": 1, "progress": False},
    })
    train_run(cfg, root / "run", log=lambda *a: None)
    res = runner.invoke(app, ["embed", str(root / "run"), "--out", str(root / "emb.npz")])
    assert res.exit_code == 0, res.output
    return root


@pytest.mark.parametrize("extra", [[], ["--x-key", "embeddings"]])
@pytest.mark.parametrize("command, out_name, fix", [
    ("evaluate", "e.json", "dmlkit evaluate {emb}"),
    ("embed", "again.npz", "use the file as it is"),
])
def test_a_runs_data_of_embeddings_is_refused(run_and_embeddings, extra, command, out_name,
                                              fix):
    root = run_and_embeddings
    out = root / out_name
    res = runner.invoke(app, [command, str(root / "run"), "--data", str(root / "emb.npz"),
                              "-o", str(out), *extra])
    assert res.exit_code == 1, res.output
    err = _error(res)
    assert "holds embeddings" in err and "would embed again" in err
    assert fix.format(emb=root / "emb.npz") in err
    assert not out.exists()


def test_evaluate_refuses_a_file_recording_the_embedding_model(run_and_embeddings):
    root = run_and_embeddings
    with np.load(root / "emb.npz") as z:  # the embeddings renamed 'x': the record still says
        np.savez(root / "renamed.npz", x=z["embeddings"], labels=z["labels"],
                 model_sha256=z["model_sha256"])
    res = runner.invoke(app, ["evaluate", str(root / "run"), "--data",
                              str(root / "renamed.npz"), "-o", str(root / "r.json")])
    assert res.exit_code == 1 and "'model_sha256'" in _error(res), res.output


def test_evaluate_of_the_embeddings_file_itself_still_works(run_and_embeddings):
    root = run_and_embeddings
    res = runner.invoke(app, ["evaluate", str(root / "emb.npz"), "--sections", "retrieval",
                              "-o", str(root / "self.json")])
    assert res.exit_code == 0, res.output


def _nan_at_500(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 60)
    x = (rng.normal(size=(10, 4))[y] + 0.3 * rng.normal(size=(600, 4))).astype(np.float32)
    x[500] = np.nan
    np.savez(tmp_path / "nan500.npz", embeddings=x, labels=y)
    np.savez(tmp_path / "ok.npz", embeddings=np.nan_to_num(x), labels=y)
    return tmp_path / "nan500.npz", tmp_path / "ok.npz"


def test_verify_names_the_file_row_of_a_nan_embedding(tmp_path):
    bad, ok = _nan_at_500(tmp_path)
    res = runner.invoke(app, ["verify", "--data", str(bad), "-o", str(tmp_path / "v.json"),
                              "--bootstrap", "10"])
    assert res.exit_code == 1, res.output
    err = _error(res)
    assert f"{bad}: 'embeddings'" in err and "1 of 600 rows (row 500)" in err
    res = runner.invoke(app, ["verify", "--data", str(ok), "--calibrate", str(bad),
                              "-o", str(tmp_path / "v.json"), "--bootstrap", "10"])
    assert res.exit_code == 1 and f"{bad}: 'embeddings'" in _error(res), res.output
    assert "(row 500)" in _error(res)


def test_identify_names_the_file_row_of_a_nan_query(tmp_path):
    bad, ok = _nan_at_500(tmp_path)
    res = runner.invoke(app, ["identify", "--gallery", str(ok), "--query", str(bad),
                              "-o", str(tmp_path / "i.json")])
    assert res.exit_code == 1 and f"{bad}: 'embeddings'" in _error(res), res.output
    assert "(row 500)" in _error(res)

