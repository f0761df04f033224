"""Options alike across commands: ``classical fit``'s output folder follows ``index build``'s
rule and says its progress on stderr, ``classical`` reads named arrays and checks its data
input first, ``search --k``, ``index build --metric euclidean|dot``, ``recommend evaluate
-o``, and errors that name the option typed rather than a parameter."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()

TINY = {
    "name": "tiny",
    "data": {"name": "digits", "max_per_class": 10, "max_heldout_per_class": 10},
    "model": {"name": "mlp", "dim": 8, "hidden": [16]},
    "training": {"epochs": 1, "progress": False, "num_threads": 1},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from dmlkit.config import Config
    from dmlkit.training import train_run

    out = tmp_path_factory.mktemp("cd7") / "run"
    train_run(Config.from_dict(TINY), out, log=lambda *a: None)
    return out


def error_lines(res) -> list[str]:  # noqa: ANN001
    return [line for line in res.stderr.splitlines() if line.startswith("error: ")]


# -- classical fit --out: new, empty, or an earlier fit's (replaced) ----------------------
def fit(source, out, *extra):
    return runner.invoke(app, ["classical", "fit", str(source), "--out", str(out), *extra])


def test_classical_fit_refuses_a_folder_of_other_files(emb_npz, tmp_path):
    out = tmp_path / "cf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    res = fit(emb_npz, out, "-m", "lfda")
    assert res.exit_code == 1, res.output
    [line] = error_lines(res)
    assert f"--out {out} holds other files (notes.txt)" in line and "new or empty" in line
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing written


def test_classical_fit_replaces_an_earlier_fit_and_writes_into_an_empty_folder(emb_npz,
                                                                              tmp_path):
    out = tmp_path / "cf"
    out.mkdir()  # empty
    assert fit(emb_npz, out, "-m", "lfda").exit_code == 0
    res = fit(emb_npz, out, "-m", "nca")  # an earlier fit's folder: replaced
    assert res.exit_code == 0, res.output
    assert json.loads((out / "metric.json").read_text())["method"] == "nca"
    assert sorted(p.name for p in out.iterdir()) == ["components.npy", "metric.json"]


# -- classical fit: progress on stderr ---------------------------------------------------
def test_classical_fit_says_what_it_fits_and_the_solver_progress_on_stderr(emb_npz,
                                                                          tmp_path):
    res = fit(emb_npz, tmp_path / "m", "-m", "nca")
    assert res.exit_code == 0, res.output
    assert f"classical fit: fitting nca on 30 x 4 train embeddings of {emb_npz}" in res.stderr
    assert "classical fit: [NCA] evaluation" in res.stderr
    assert "[NCA]" not in res.stdout  # stdout: the summary line and the table alone
    assert res.stdout.splitlines()[0].startswith("nca: fit on 30 x 4")
    assert res.stdout.splitlines()[1].split() == ["metric", "inputs", "learned"]
    params = json.loads((tmp_path / "m" / "metric.json").read_text())["params"]
    assert params["verbose"] is False  # as the user gave them


def test_a_verbose_param_shows_every_solver_line(emb_npz, tmp_path):
    quiet = fit(emb_npz, tmp_path / "a", "-m", "nca")
    loud = fit(emb_npz, tmp_path / "b", "-m", "nca", "-p", "verbose=true")
    assert quiet.exit_code == loud.exit_code == 0
    assert loud.stderr.count("[NCA] evaluation") >= quiet.stderr.count("[NCA] evaluation")
    assert "[NCA]" not in loud.stdout


def test_solver_lines_are_thinned_but_the_last_one_is_shown(capsys):
    from dmlkit.cli.classical import _SolverProgress

    stream = _SolverProgress("p: ", every=3600.0)
    stream.write("one\ntwo\n")
    stream.write("thr")
    stream.write("ee\n")
    stream.close()
    assert capsys.readouterr().err.splitlines() == ["p: one", "p: three"]


# -- classical: the data input first; named arrays ----------------------------------------
def test_classical_evaluate_names_a_missing_data_file_first(tmp_path):
    res = runner.invoke(app, ["classical", "evaluate", str(tmp_path / "nope.npz"),
                              "--metric", str(tmp_path / "c")])
    assert res.exit_code == 1, res.output
    [line] = error_lines(res)
    assert line.startswith(f"error: {tmp_path / 'nope.npz'} is neither") and (
        "it does not exist" in line), line


def test_classical_evaluate_names_a_missing_metric_folder(emb_npz, tmp_path):
    res = runner.invoke(app, ["classical", "evaluate", str(emb_npz), "--metric",
                              str(tmp_path / "c")])
    assert res.exit_code == 1, res.output
    [line] = error_lines(res)
    assert f"--metric {tmp_path / 'c'} does not exist" in line, line


def test_classical_fit_and_evaluate_read_named_arrays(emb_npz, tmp_path):
    d = dict(np.load(emb_npz))
    keyed = tmp_path / "k.npz"
    np.savez(keyed, feats=d["embeddings"], cls=d["labels"],
             heldout_feats=d["heldout_embeddings"], heldout_cls=d["heldout_labels"])
    plain = fit(emb_npz, tmp_path / "plain", "-m", "lfda")
    res = fit(keyed, tmp_path / "m", "-m", "lfda", "--x-key", "feats", "--labels-key", "cls")
    assert res.exit_code == plain.exit_code == 0, res.output
    assert res.stdout.splitlines()[1:] == plain.stdout.splitlines()[1:]  # (the table)
    res = runner.invoke(app, ["classical", "evaluate", str(keyed), "--metric",
                              str(tmp_path / "m"), "--x-key", "feats", "--y-key", "cls"])
    assert res.exit_code == 0, res.output
    assert "precision_at_1" in res.stdout
    res = runner.invoke(app, ["classical", "evaluate", str(keyed), "--metric",
                              str(tmp_path / "m"), "--x-key", "feat", "--labels-key", "cls"])
    assert res.exit_code == 1
    [line] = error_lines(res)
    assert "has no array 'feat'" in line and "'feats'" in line


def test_classical_refuses_array_names_for_a_run_directory(run_dir, tmp_path):
    res = fit(run_dir, tmp_path / "m", "--x-key", "x")
    assert res.exit_code == 1
    [line] = error_lines(res)
    assert "--x-key / --labels-key name the arrays of an .npz" in line


# -- index build --metric aliases, search --k ---------------------------------------------
@pytest.mark.parametrize(("given", "kept"), [("euclidean", "l2"), ("Euclidean", "l2"),
                                              ("dot", "ip"), ("DOT", "ip"), ("cosine", "cosine"),
                                              ("l2", "l2")])
def test_index_build_takes_the_metric_names_of_evaluate(emb_npz, tmp_path, given, kept):
    from dmlkit.index import load_index

    res = runner.invoke(app, ["index", "build", str(emb_npz), "-o", str(tmp_path / "idx"),
                              "--metric", given])
    assert res.exit_code == 0, res.output
    assert load_index(tmp_path / "idx").metric == kept


def test_index_build_names_the_metric_option(emb_npz, tmp_path):
    res = runner.invoke(app, ["index", "build", str(emb_npz), "-o", str(tmp_path / "idx"),
                              "--metric", "manhattan"])
    assert res.exit_code == 1
    [line] = error_lines(res)
    assert line.startswith("error: --metric must be l2 (or euclidean), ip (or dot) or cosine")


def test_search_takes_a_long_k_and_names_the_options_it_refuses(emb_npz, tmp_path):
    assert runner.invoke(app, ["index", "build", str(emb_npz), "-o",
                               str(tmp_path / "idx")]).exit_code == 0
    np.savez(tmp_path / "q.npz", embeddings=np.load(emb_npz)["embeddings"][:2])
    base = ["search", str(tmp_path / "idx"), "-q", str(tmp_path / "q.npz"), "--json"]
    res = runner.invoke(app, [*base, "--k", "3"])
    assert res.exit_code == 0, res.output
    assert [len(q["neighbours"]) for q in json.loads(res.stdout)] == [3, 3]
    for option, value in (("--k", "0"), ("-k", "-1"), ("--nprobe", "0")):
        res = runner.invoke(app, [*base, option, value])
        assert res.exit_code == 1
        [line] = error_lines(res)
        name = "-k" if option == "--k" else option
        assert line == f"error: {name} must be an integer >= 1, got {value}", line


def test_index_build_names_nprobe_and_ef_search(emb_npz, tmp_path):
    pytest.importorskip("faiss")
    for factory, option in (("IVF2,Flat", "--nprobe"), ("HNSW8", "--ef-search")):
        res = runner.invoke(app, ["index", "build", str(emb_npz), "-o", str(tmp_path / "i"),
                                  "--factory", factory, option, "0"])
        assert res.exit_code == 1
        [line] = error_lines(res)
        assert line == f"error: {option} must be an integer >= 1, got 0", line


# -- recommend ----------------------------------------------------------------------------
@pytest.fixture
def interactions(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("user,item,rating,timestamp\n1,a,5,1\n1,b,4,2\n2,a,3,3\n2,c,5,4\n"
                    "3,b,4,5\n3,c,4,6\n")
    return path


def test_recommend_evaluate_takes_o(interactions, tmp_path):
    res = runner.invoke(app, ["recommend", "train", str(interactions), "-o",
                              str(tmp_path / "m"), "--epochs", "1", "--dim", "4"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["recommend", "evaluate", str(tmp_path / "m"), "--data",
                              str(interactions), "-o", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "recall_at_" in next(iter(json.loads((tmp_path / "r.json").read_text())))
    res = runner.invoke(app, ["recommend", "top", str(tmp_path / "m"), "-u", "1", "-k", "0"])
    assert res.exit_code == 1
    assert error_lines(res) == ["error: -k must be >= 1, got 0"]


@pytest.mark.parametrize(("option", "value"), [("--dim", "0"), ("--epochs", "0"),
                                                ("--margin", "0")])
def test_recommend_train_names_the_option(interactions, tmp_path, option, value):
    res = runner.invoke(app, ["recommend", "train", str(interactions), "-o",
                              str(tmp_path / "m"), option, value])
    assert res.exit_code == 1
    [line] = error_lines(res)
    assert line.startswith(f"error: {option} must be"), line
    assert not (tmp_path / "m").exists()


# -- embed, report ------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["--batch-size", "0"], ["--store", "--chunk-size", "0"]])
def test_embed_names_the_size_option(run_dir, tmp_path, args):
    res = runner.invoke(app, ["embed", str(run_dir), "-o", str(tmp_path / "e"), *args])
    assert res.exit_code == 1
    [line] = error_lines(res)
    assert line == f"error: {args[-2]} must be an integer >= 1, got 0", line
    assert not (tmp_path / "e").exists() and not (tmp_path / "e.npz").exists()


def test_report_names_max_items(run_dir, tmp_path):
    res = runner.invoke(app, ["report", str(run_dir), "--max-items", "5", "-o",
                              str(tmp_path / "r.html")])
    assert res.exit_code == 1
    [line] = error_lines(res)
    assert line.startswith("error: --max-items must be an integer >= 20"), line
    assert "got 5" in line
