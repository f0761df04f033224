"""One rule for "inputs must be real numbers" (:func:`dmlkit._checks.check_real_inputs`),
applied alike by the loaders, the index, the CLI's embedding readers, raw queries and the
application kits; and the learners' real parameters checked by ``check_real`` itself."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app

SRC = Path(__file__).resolve().parents[1] / "src" / "dmlkit"
COMPLEX = r"must be real numbers, got dtype complex64 \(complex numbers; keep a real part"
runner = CliRunner()


def test_the_rule_lives_in_checks_and_data_reexports_it():
    from dmlkit import _checks
    from dmlkit.data import npz

    assert npz.check_real_inputs is _checks.check_real_inputs
    for path in SRC.rglob("*.py"):  # written once, never again by hand
        if path.name != "_checks.py":
            assert "must be real numbers" not in path.read_text(), path


def test_an_empty_source_is_left_out_of_the_message():
    from dmlkit._checks import check_real_inputs

    with pytest.raises(TypeError, match=r"^X must be real numbers, got dtype object \(no "
                                        r"numbers; check X\)$"):
        check_real_inputs(np.array([None, 1]), "", "X", hint="; check X")
    with pytest.raises(TypeError, match=r"^f\.npy: X must be real numbers, got dtype <U1 "
                                        r"\(strings\)$"):
        check_real_inputs(np.array(["a"]), "f.npy", "X")


def test_index_add_and_search_apply_the_rule():
    from dmlkit.index import ExactIndex

    index = ExactIndex(2, "l2")
    with pytest.raises(TypeError, match=r"^x " + COMPLEX):
        index.add(np.ones((3, 2), np.complex64))
    index.add(np.array([[True, False], [False, True]]))  # bools are real numbers (0, 1)
    assert index.ntotal == 2
    with pytest.raises(TypeError, match=r"must be real numbers, got dtype <U1 \(strings\)"):
        index.search(np.array([["a", "b"]]), 1)


def test_index_build_refuses_complex_embeddings_naming_the_file(tmp_path):
    np.save(tmp_path / "e.npy", np.ones((5, 3), np.complex64))
    res = runner.invoke(app, ["index", "build", str(tmp_path / "e.npy"), "--out",
                              str(tmp_path / "ix")])
    lines = [s for s in res.stderr.splitlines() if s.startswith("error:")]
    assert res.exit_code == 1 and len(lines) == 1, res.output
    assert "e.npy: embeddings " in lines[0] and "complex numbers; keep a real part" in lines[0]
    assert not (tmp_path / "ix").exists()


def test_evaluate_reads_only_real_embeddings(tmp_path):
    from dmlkit.cli.evaluate import read_embeddings

    np.savez(tmp_path / "e.npz", embeddings=np.array([["a", "b"]] * 4), labels=np.arange(4))
    with pytest.raises(TypeError, match=r"e\.npz: 'embeddings' must be real numbers, got dtype "
                                        r"<U1 \(strings; name the embeddings array with "
                                        r"--x-key\)"):
        read_embeddings(tmp_path / "e.npz")
    res = runner.invoke(app, ["evaluate", str(tmp_path / "e.npz")])
    assert res.exit_code == 1 and "'embeddings' must be real numbers" in res.output


def test_raw_queries_follow_the_rule():
    from dmlkit.runs.queries import prepare_inputs

    with pytest.raises(TypeError, match=r"^q\.npy: raw inputs " + COMPLEX):
        prepare_inputs(np.ones((2, 3), np.complex64), None, "q.npy")
    got = prepare_inputs(np.array([[True, False]]), None, "q.npy")
    assert got.dtype == np.float32 and got.tolist() == [[1.0, 0.0]]


def test_kits_taking_images_follow_the_rule():
    from dmlkit.apps.embedding import validate_inputs
    from dmlkit.apps.outliers import MetricOutlierDetector

    with pytest.raises(TypeError, match=r"^X " + COMPLEX):
        validate_inputs(MetricOutlierDetector(), np.ones((2, 1, 4, 4), np.complex64),
                        reset=True, images=True)


def test_learners_call_check_real_itself():
    for name in ("lmnn", "itml", "lfda"):
        tree = ast.parse((SRC / "classical" / f"{name}.py").read_text())
        called = {node.func.id for node in ast.walk(tree)
                  if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
        assert "check_real" in called and "check_real_param" not in called, name
