"""``dmlkit classical fit`` output and input checks, saved parameters, ITML's zero pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.classical import ITML
from dmlkit.classical.frozen import load_embeddings, make_learner
from dmlkit.cli.main import app

runner = CliRunner()


def test_fit_refuses_an_out_that_cannot_be_a_folder_before_fitting(emb_npz, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        res = runner.invoke(app, ["classical", "fit", str(emb_npz), "--out", str(out)])
        assert res.exit_code == 1, res.output
        assert "is a file, not a directory" in res.output
        assert "Traceback" not in res.output


def test_heldout_embeddings_of_another_width_are_refused_by_name(tmp_path):
    y = np.repeat(np.arange(2), 5)
    path = tmp_path / "w.npz"
    np.savez(path, embeddings=np.zeros((10, 4)), labels=y,
             heldout_embeddings=np.zeros((10, 3)), heldout_labels=y)
    with pytest.raises(ValueError, match="heldout_embeddings have dim 3 but embeddings have dim 4"):
        load_embeddings(path)


def test_list_parameters_are_saved_as_json_lists_and_refit(emb_npz, tmp_path):
    out = tmp_path / "m"
    res = runner.invoke(app, ["classical", "fit", str(emb_npz), "-m", "itml", "--out", str(out),
                              "--param", "bounds=[0.5, 5]"])
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "metric.json").read_text())
    assert meta["params"]["bounds"] == [0.5, 5]
    data = np.load(emb_npz)
    refit = make_learner(meta["method"], meta["params"]).fit(data["embeddings"], data["labels"])
    np.testing.assert_allclose(refit.components_, np.load(out / "components.npy"), atol=1e-12)


def test_itml_says_when_pairs_join_a_point_to_itself():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 3))
    same = np.stack([a, a], axis=1)  # (6, 2, 3): every pair one point twice
    with pytest.raises(ValueError, match="all 6 pairs join a point to itself"):
        ITML().fit(same, np.array([1, -1, 1, -1, 1, -1]))
    b = rng.normal(size=(6, 3))
    mixed = np.concatenate([same[:2], np.stack([a, b], axis=1)])
    with pytest.warns(UserWarning, match="2 of 8 pairs join a point to itself"):
        ITML().fit(mixed, np.array([1, -1, 1, -1, 1, -1, 1, -1]))
