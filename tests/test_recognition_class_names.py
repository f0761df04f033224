"""Two labelled inputs of which only one names its classes (``class_names``): refused with
the cause, instead of a type mismatch of labels the user never wrote as strings."""

import numpy as np
import pytest
from cli_helpers import error_line
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 6)
    x = rng.normal(size=(24, 6)) + 3 * np.eye(6)[y]
    names = np.array(["ann", "bob", "cy", "di"])
    np.savez(tmp_path / "named.npz", embeddings=x, labels=y, class_names=names)
    np.savez(tmp_path / "plain.npz", embeddings=x, labels=y)
    np.savez(tmp_path / "named2.npz", embeddings=x[::-1], labels=y[::-1], class_names=names)
    return tmp_path


@pytest.mark.parametrize("gallery, query", [("named", "plain"), ("plain", "named")])
def test_identify_names_the_file_without_class_names(files, gallery, query):
    res = runner.invoke(app, ["identify", "--gallery", str(files / f"{gallery}.npz"),
                              "--query", str(files / f"{query}.npz"),
                              "-o", str(files / "i.json")])  # fmt: skip
    assert res.exit_code == 1
    line = error_line(res, "class_names", f"{query if query == 'plain' else gallery}.npz")
    assert "has none" in line


def test_fewshot_names_the_file_without_class_names(files):
    res = runner.invoke(app, ["fewshot", "--support", str(files / "named.npz"),
                              "--query", str(files / "plain.npz"),
                              "-o", str(files / "f.json")])  # fmt: skip
    assert res.exit_code == 1
    assert "class_names" in error_line(res, "plain.npz")


def test_both_files_named_identify_by_name(files):
    res = runner.invoke(app, ["identify", "--gallery", str(files / "named.npz"),
                              "--query", str(files / "named2.npz"), "--closed-set",
                              "-o", str(files / "i.json")])  # fmt: skip
    assert res.exit_code == 0, res.output
