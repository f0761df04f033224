"""`dmlkit evaluate`, `verify`, `identify` and `fewshot`: --out never replaces an input or a
run's file, --seed is never negative, class names key per-class results, and what cannot
be measured shows as n/a."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()


def blobs(n_classes=6, per_class=20, d=5, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), per_class)
    x = 2.0 * rng.normal(size=(n_classes, d))[y] + 0.4 * rng.normal(size=(y.size, d))
    return x.astype(np.float32), y


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    x, y = blobs()
    np.savez(tmp_path / "emb.npz", embeddings=x, labels=y)
    np.savez(tmp_path / "set.npz", x=x, labels=y)
    np.savez(tmp_path / "query.npz", x=x[1::2], labels=y[1::2])
    np.savez(tmp_path / "raw.npz", x=np.random.default_rng(1).random((20, 64), np.float32),
             labels=np.arange(20) % 10)
    run = tmp_path / "run"  # what makes a run directory (checked before it is loaded)
    run.mkdir()
    (run / "config.yaml").write_text("name: r\n")
    (run / "model.pt").write_bytes(b"weights")
    return tmp_path


def refused(args, path, expected):
    before = digest(path)
    res = runner.invoke(app, args)
    assert res.exit_code != 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], res.output
    assert "Traceback" not in res.output and "wrote" not in res.output
    assert digest(path) == before


@pytest.mark.parametrize("args, victim, expected", [
    (["evaluate", "emb.npz", "-o", "emb.npz"], "emb.npz", "is the embeddings file"),
    (["evaluate", "run", "-o", "run/model.pt"], "run/model.pt", "own model.pt"),
    (["evaluate", "run", "--data", "raw.npz", "-o", "raw.npz"], "raw.npz",
     "is the --data input"),
    (["verify", "--data", "set.npz", "-o", "set.npz"], "set.npz", "is the --data input"),
    (["fewshot", "--episodes", "set.npz", "-o", "set.npz"], "set.npz",
     "is the --episodes input"),
    (["identify", "--gallery", "set.npz", "--query", "query.npz", "-o", "set.npz"], "set.npz",
     "is the --gallery input"),
    (["identify", "--gallery", "set.npz", "--query", "query.npz", "-o", "query.npz"],
     "query.npz", "is the --query input"),
    (["verify", "run", "--data", "raw.npz", "-o", "run/config.yaml"], "run/config.yaml",
     "own config.yaml"),
])
def test_out_never_replaces_an_input_or_a_run_file(files, args, victim, expected):
    refused(args, files / victim, expected)


@pytest.mark.parametrize("args", [
    ["verify", "--data", "set.npz"],
    ["fewshot", "--episodes", "set.npz", "--n-episodes", "3"],
    ["identify", "--gallery", "set.npz", "--query", "query.npz"],
])
def test_an_existing_directory_as_out_is_refused_before_any_work(files, args):
    (files / "folder").mkdir()
    res = runner.invoke(app, [*args, "-o", "folder"])
    assert res.exit_code != 0
    assert "error: --out folder is a directory; give a JSON file name" in res.output
    assert "Traceback" not in res.output and not any(files.joinpath("folder").iterdir())


def test_evaluate_writes_its_own_file_in_the_run(files):
    from dmlkit.cli._outputs import check_output_path

    run = files / "run"  # (the default --out of a run: allowed, every other run file not)
    check_output_path(run / "evaluation.json", "--out", run_dir=run,
                      allow=("evaluation.json",))
    with pytest.raises(ValueError, match="own metrics.json"):
        check_output_path(run / "metrics.json", "--out", run_dir=run,
                          allow=("evaluation.json",))


@pytest.mark.parametrize("args", [["evaluate", "emb.npz"], ["verify", "--data", "set.npz"],
                                  ["fewshot", "--episodes", "set.npz"]])
def test_a_negative_seed_is_refused(files, args):
    res = runner.invoke(app, [*args, "--seed", "-1", "-o", "out.json"])
    assert res.exit_code == 1 and "--seed" in res.output
    assert not (files / "out.json").exists()


def test_per_class_results_are_keyed_by_class_names(files):
    x, y = blobs()
    names = np.array(["zebra", "apple", "mango", "kiwi", "fig", "lime"])
    np.savez(files / "named.npz", embeddings=x, labels=names[y])
    res = runner.invoke(app, ["evaluate", "named.npz", "--per-class", "--sections",
                              "retrieval", "-o", "named.json"])
    assert res.exit_code == 0, res.output
    per_class = json.loads((files / "named.json").read_text())["retrieval"]["per_class"]
    assert sorted(per_class) == sorted(names)
    assert all(v["count"] == 20 for v in per_class.values())


def test_metric_is_echoed_canonical_and_one_episode_has_no_interval(files):
    res = runner.invoke(app, ["evaluate", "emb.npz", "--metric", "COSINE", "--episodes", "1",
                              "--sections", "few_shot", "-o", "ev.json"])
    assert res.exit_code == 0, res.output
    assert "metric cosine" in res.output and "COSINE" not in res.output
    assert "few-shot 5way_1shot: " in res.output and "±" not in res.output
    result = json.loads((files / "ev.json").read_text())
    assert result["metric"] == "cosine" and result["few_shot"]["5way_1shot"]["ci95"] is None
    res = runner.invoke(app, ["fewshot", "--episodes", "set.npz", "--n-episodes", "1",
                              "--shot", "1", "-o", "fs.json"])
    assert res.exit_code == 0, res.output
    assert "(1 episode)" in res.output and "±" not in res.output
    assert json.loads((files / "fs.json").read_text())["5way_1shot"]["ci95"] is None


def test_an_unmeasured_tar_shows_as_n_a(files):
    x, y = blobs(n_classes=4, per_class=5)
    np.savez(files / "small.npz", x=x, labels=y)
    with pytest.warns(UserWarning, match="TAR at FAR 0.001, 0.01 is NaN: 25 different"):
        res = runner.invoke(app, ["verify", "--data", "small.npz", "--bootstrap", "20",
                                  "-o", "v.json"])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if "tar_at_far_0.001" in ln)
    assert line.split() == ["tar_at_far_0.001", "n/a"]
    result = json.loads((files / "v.json").read_text())
    assert result["tar_at_far_0.001"] is None and result["ci95"]["tar_at_far_0.001"] is None
    assert result["tar_at_far_0.1"] is not None


def test_report_tables_show_nan_as_n_a():
    from dmlkit.cli.evaluate import format_report

    text = format_report({"metric": "dot", "verification": {"tar_at_far_0.0001": float("nan"),
                                                            "auc": 0.5}})
    assert "tar_at_far_0.0001  n/a" in text and "nan" not in text
