"""``dmlkit verify``, ``identify``, ``fewshot`` and ``detect-anomalies`` take their options as
the rest of the CLI does: ``--x-key`` / ``--labels-key`` (alias ``--y-key``) name the arrays
of every ``.npz`` read (``detect-anomalies``: ``--x-key``, ``--key`` kept, ``-k`` for
``--k``); ``--metric`` takes evaluate's names and aliases (l2, ip, any case); a bad value
is refused naming the option typed, not the library's parameter."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()


@pytest.fixture
def files(tmp_path):
    """The same embeddings as ``x`` / ``labels`` and as ``feats`` / ``classes``."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), 8)
    x = (rng.normal(size=(48, 4)) + 2.0 * np.eye(6, 4)[y] * 3).astype(np.float32)
    np.savez(tmp_path / "std.npz", x=x, labels=y)
    np.savez(tmp_path / "named.npz", feats=x, classes=y)
    return tmp_path


def _run(args, out):
    res = runner.invoke(app, [*args, "-o", str(out)])
    return res, (json.loads(out.read_text()) if res.exit_code == 0 else None)


def _args(command, f):
    return {"verify": ["verify", "--data", f, "--bootstrap", "20"],
            "identify": ["identify", "--gallery", f, "--query", f],
            "fewshot": ["fewshot", "--support", f, "--query", f],
            "episodes": ["fewshot", "--episodes", f, "--way", "2", "--shot", "1",
                         "--n-query", "2", "--n-episodes", "5"]}[command]


NUMBERS = {"verify": ("auc", "eer", "num_pairs"), "identify": ("rank1", "threshold", "map"),
           "fewshot": ("accuracy", "num_classes"), "episodes": ("2way_1shot",)}


@pytest.mark.parametrize("command", list(NUMBERS))
@pytest.mark.parametrize("labels_option", ["--labels-key", "--y-key"])
def test_array_names_read_the_same_data(files, command, labels_option):
    _, want = _run(_args(command, str(files / "std.npz")), files / "a.json")
    res, got = _run([*_args(command, str(files / "named.npz")), "--x-key", "feats",
                     labels_option, "classes"], files / "b.json")
    assert res.exit_code == 0, res.output
    for key in NUMBERS[command]:
        assert got[key] == want[key], key


@pytest.mark.parametrize("command", list(NUMBERS))
def test_a_named_array_the_file_lacks_is_refused_naming_its_arrays(files, command):
    res, _ = _run([*_args(command, str(files / "named.npz")), "--x-key", "feats",
                   "--labels-key", "nope"], files / "b.json")
    assert res.exit_code == 1
    assert "no array 'nope' (the labels)" in res.output and "'classes', 'feats'" in res.output
    res, _ = _run(_args(command, str(files / "named.npz")), files / "b.json")
    assert res.exit_code == 1 and "--x-key" in res.output


@pytest.mark.parametrize("command", ["verify", "identify", "fewshot", "episodes"])
@pytest.mark.parametrize("alias,name", [("l2", "euclidean"), ("L2", "euclidean"),
                                        ("ip", "dot"), ("IP", "dot"), ("Cosine", "cosine")])
def test_metric_aliases_are_those_of_evaluate(files, command, alias, name):
    f = str(files / "std.npz")
    _, want = _run([*_args(command, f), "--metric", name], files / "a.json")
    res, got = _run([*_args(command, f), "--metric", alias], files / "b.json")
    assert res.exit_code == 0, res.output
    for key in NUMBERS[command]:
        assert got[key] == want[key], key


@pytest.mark.parametrize("command", ["verify", "identify", "fewshot"])
def test_an_unknown_metric_names_the_option(files, command):
    res, _ = _run([*_args(command, str(files / "std.npz")), "--metric", "manhattan"],
                  files / "b.json")
    assert res.exit_code == 1
    assert "--metric must be cosine, euclidean (alias l2) or dot (alias ip)" in res.output


@pytest.mark.parametrize("command,extra,option,internal", [
    ("verify", ["--target-far", "2"], "--target-far", "target_far"),
    ("verify", ["--target-far", "0"], "--target-far", "target_far"),
    ("verify", ["--bootstrap", "-1"], "--bootstrap", "n_bootstrap"),
    ("verify", ["--max-pairs", "0"], "--max-pairs", "max_pairs"),
    ("verify", ["--calibration", "sigmoid"], "--calibration", "None"),
    ("identify", ["--target-far", "1.5"], "--target-far", "target_far"),
    ("identify", ["--index", "IVF2,Flat", "--nprobe", "0"], "--nprobe", "positive integer"),
    ("identify", ["--index", "HNSW8", "--ef-search", "0"], "--ef-search", "efSearch"),
    ("identify", ["--nprobe", "3"], "--nprobe / --ef-search", "index='exact'"),
    ("identify", ["--mode", "centroid"], "--mode", "('nearest'"),
    ("identify", ["--multi-shot", "median"], "--multi-shot", "multi_shot"),
])
def test_bad_values_name_the_option_typed(files, command, extra, option, internal):
    res, _ = _run([*_args(command, str(files / "std.npz")), *extra], files / "b.json")
    assert res.exit_code == 1
    line = res.output.strip().splitlines()[-1]
    assert line.startswith(f"error: {option}"), line
    assert internal not in line


# -- detect-anomalies ------------------------------------------------------------------------
def _detect(files, *extra, out="s.csv"):
    res = runner.invoke(app, ["detect-anomalies", *extra, "-o", str(files / out)])
    return res, (files / out).read_text() if res.exit_code == 0 else None


@pytest.mark.parametrize("option", ["--x-key", "--key"])
def test_detect_anomalies_names_the_rows_with_x_key(files, option):
    f = str(files / "std.npz")
    _, want = _detect(files, "--normal", f, "--data", f, out="a.csv")
    g = str(files / "named.npz")
    res, got = _detect(files, "--normal", g, "--data", g, option, "feats")
    assert res.exit_code == 0, res.output
    assert got == want
    res, _ = _detect(files, "--normal", g, "--data", g)
    assert res.exit_code == 1 and "name it with --x-key" in res.output


def test_detect_anomalies_takes_k_as_a_short_form(files):
    f = str(files / "std.npz")
    _, want = _detect(files, "--normal", f, "--data", f, "--k", "3", out="a.csv")
    res, got = _detect(files, "--normal", f, "--data", f, "-k", "3")
    assert res.exit_code == 0, res.output
    assert got == want
    _, default = _detect(files, "--normal", f, "--data", f, out="c.csv")
    assert got != default  # (-k 3 is not the default 5)


@pytest.mark.parametrize("extra,option,internal", [
    (["--k", "0"], "--k", "n_neighbors"),
    (["-k", "-2"], "--k", "n_neighbors"),
    (["--contamination", "0.9"], "--contamination", "error: contamination"),
])
def test_detect_anomalies_bad_values_name_the_option(files, extra, option, internal):
    f = str(files / "std.npz")
    res, _ = _detect(files, "--normal", f, "--data", f, *extra)
    assert res.exit_code == 1
    line = res.output.strip().splitlines()[-1]
    assert line.startswith(f"error: {option} "), line
    assert internal not in line


def test_the_reader_takes_the_array_names(files):
    from dmlkit.cli.recognition import DataReader

    x, y, _ = DataReader(None, "feats", "classes").read(str(files / "named.npz"), "--data")
    want = np.load(files / "std.npz")
    np.testing.assert_array_equal(x, want["x"])
    np.testing.assert_array_equal(y, want["labels"])


def test_detect_anomalies_reads_embeddings_as_dmlkit_embed_writes_them(files):
    """Without --x-key: ``x``, else ``embeddings`` (as verify, identify and fewshot)."""
    f = str(files / "std.npz")
    _, want = _detect(files, "--normal", f, "--data", f, out="a.csv")
    data = np.load(files / "std.npz")
    np.savez(files / "emb.npz", embeddings=data["x"], labels=data["labels"])
    e = str(files / "emb.npz")
    res, got = _detect(files, "--normal", e, "--data", e)
    assert res.exit_code == 0, res.output
    assert got == want


@pytest.mark.parametrize("extra", [["--n-query", "0"], ["--way", "3"], ["--shot", "2"],
                                   ["--n-episodes", "5"]])
def test_fewshot_refuses_episode_settings_with_a_support_set(files, extra):
    """They would do nothing there: the support set and queries are classified as given."""
    f = str(files / "std.npz")
    res = runner.invoke(app, ["fewshot", "--support", f, "--query", f, *extra,
                              "-o", str(files / "o.json")])
    assert res.exit_code == 1 and extra[0] in res.output and "--episodes" in res.output
    res = runner.invoke(app, ["fewshot", "--support", f, "--query", f,
                              "-o", str(files / "o.json")])
    assert res.exit_code == 0, res.output
