"""Commands that combine two embeddings files (identify, fewshot, verify --calibrate,
classical evaluate with a fitted metric) refuse files embedded by models with different
weights, as `dmlkit search` does, instead of printing silently wrong results."""

from __future__ import annotations

import json

import pytest
from test_index_search_fixes import TINY, _error
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Held-out and train embeddings of two runs of one config with other seeds."""
    from dmlkit.config import Config
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("fingerprints")
    for name, seed in (("a", 0), ("b", 7)):
        cfg = {**TINY, "training": {**TINY["training"], "seed": seed}}
        train_run(Config.from_dict(cfg), root / name, log=lambda *a: None)
        for split in ("heldout", "train"):
            res = runner.invoke(app, ["embed", str(root / name), "--data", split, "--out",
                                      str(root / f"{name}_{split}.npz")])
            assert res.exit_code == 0, res.output
    return root


def _mixed(res, first, second):
    assert res.exit_code != 0, res.output
    err = _error(res)
    assert str(first) in err and str(second) in err
    assert "embedded by models with different weights" in err and "same run" in err


def test_identify_refuses_a_gallery_and_queries_of_two_models(files, tmp_path):
    g, q, own = files / "a_train.npz", files / "b_heldout.npz", files / "a_heldout.npz"
    out = ["--closed-set", "--out", str(tmp_path / "i.json")]
    _mixed(runner.invoke(app, ["identify", "--gallery", str(g), "--query", str(q), *out]), g, q)
    res = runner.invoke(app, ["identify", "--gallery", str(g), "--query", str(own), *out])
    assert res.exit_code == 0, res.output


def test_fewshot_refuses_support_and_queries_of_two_models(files, tmp_path):
    s, q, own = files / "a_train.npz", files / "b_heldout.npz", files / "a_heldout.npz"
    out = ["--out", str(tmp_path / "f.json")]
    _mixed(runner.invoke(app, ["fewshot", "--support", str(s), "--query", str(q), *out]), s, q)
    res = runner.invoke(app, ["fewshot", "--support", str(s), "--query", str(own), *out])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "f.json").read_text())["accuracy"] > 0.3


def test_verify_refuses_calibration_of_another_model(files, tmp_path):
    d, c, own = files / "b_heldout.npz", files / "a_train.npz", files / "a_heldout.npz"
    out = ["--bootstrap", "10", "--out", str(tmp_path / "v.json")]
    _mixed(runner.invoke(app, ["verify", "--data", str(d), "--calibrate", str(c), *out]), d, c)
    res = runner.invoke(app, ["verify", "--data", str(own), "--calibrate", str(c), *out])
    assert res.exit_code == 0, res.output


def test_classical_metric_records_and_checks_its_model(files, tmp_path):
    fit_on, other = files / "a_train.npz", files / "b_heldout.npz"
    metric = tmp_path / "m"
    res = runner.invoke(app, ["classical", "fit", str(fit_on), "--method", "lfda",
                              "--out", str(metric)])
    assert res.exit_code == 0, res.output
    from dmlkit.index.provenance import embeddings_fingerprint

    meta = json.loads((metric / "metric.json").read_text())
    assert meta["model_sha256"] == embeddings_fingerprint(fit_on)
    res = runner.invoke(app, ["classical", "evaluate", str(other), "--metric", str(metric)])
    assert res.exit_code == 1
    err = _error(res)
    assert str(metric) in err and str(other) in err and "different weights" in err
    res = runner.invoke(app, ["classical", "evaluate", str(files / "a_heldout.npz"),
                              "--metric", str(metric)])
    assert res.exit_code == 0, res.output
    # a run directory's weights are its embeddings' model: refused against run b's metric
    res = runner.invoke(app, ["classical", "evaluate", str(files / "b"), "--metric",
                              str(metric)])
    assert res.exit_code == 1 and "different weights" in _error(res)


def test_files_without_fingerprints_pass(tmp_path):
    import numpy as np

    from dmlkit.index.provenance import check_same_model

    np.savez(tmp_path / "x.npz", embeddings=np.zeros((2, 3)), model_sha256=np.asarray("aa"))
    np.savez(tmp_path / "y.npz", embeddings=np.zeros((2, 3)))
    np.save(tmp_path / "z.npy", np.zeros((2, 3)))
    check_same_model(tmp_path / "x.npz", tmp_path / "y.npz")
    check_same_model(tmp_path / "z.npy", tmp_path / "x.npz")
    np.savez(tmp_path / "w.npz", embeddings=np.zeros((2, 3)), model_sha256=np.asarray("bb"))
    with pytest.raises(ValueError, match="different weights"):
        check_same_model(tmp_path / "x.npz", tmp_path / "w.npz")
