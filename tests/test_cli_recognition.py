"""``dmlkit verify / identify / fewshot`` on saved arrays: metrics printed and written."""

import json
from functools import partial

import numpy as np
import pytest
from blob_helpers import labelled_blobs
from typer.testing import CliRunner

from dmlkit.apps import FewShotClassifier, Identifier, Verifier
from dmlkit.cli.main import app

runner = CliRunner()


blobs = partial(labelled_blobs, n_classes=6, per_class=20, d=5, noise=0.4, spread=2.0)


@pytest.fixture
def data(tmp_path):
    x, y = blobs()
    np.savez(tmp_path / "set.npz", x=x, labels=y)
    gal = y < 3
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "gallery.npz", x=x[gal][::2], labels=y[gal][::2],
             camera=rng.integers(0, 2, gal.sum())[::2])
    q = ~np.isin(np.arange(len(y)), np.flatnonzero(gal)[::2])
    np.savez(tmp_path / "query.npz", x=x[q], labels=y[q], camera=rng.integers(0, 2, q.sum()))
    return tmp_path, x, y


def test_verify_prints_and_writes_metrics(data):
    tmp, x, y = data
    out = tmp / "v.json"
    res = runner.invoke(app, ["verify", "--data", str(tmp / "set.npz"), "--target-far", "0.05",
                              "--bootstrap", "50", "-o", str(out), "--save", str(tmp / "kit")])
    assert res.exit_code == 0, res.output
    assert "eer" in res.output and "95% CI" in res.output
    result = json.loads(out.read_text())
    assert result["auc"] > 0.9 and len(result["ci95"]["eer"]) == 2
    v = Verifier.load(tmp / "kit")
    assert v.target_far == 0.05 and np.isfinite(v.threshold_)


def test_verify_with_a_pair_file(data):
    tmp, x, y = data
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(y), 400), rng.integers(0, len(y), 400)
    rows = np.stack([i, j, (y[i] == y[j]).astype(int)], 1)
    np.savetxt(tmp / "pairs.csv", rows, fmt="%d", delimiter=",", header="i,j,same",
               comments="")
    res = runner.invoke(app, ["verify", "--data", str(tmp / "set.npz"), "--pairs",
                              str(tmp / "pairs.csv"), "--bootstrap", "20",
                              "-o", str(tmp / "v.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp / "v.json").read_text())["num_pairs"] == 200
    rows[5, 1] = 10_000
    np.savetxt(tmp / "bad.csv", rows, fmt="%d", delimiter=",")
    res = runner.invoke(app, ["verify", "--data", str(tmp / "set.npz"), "--pairs",
                              str(tmp / "bad.csv"), "-o", str(tmp / "v.json")])
    assert res.exit_code == 1 and "names row 10000, which does not exist" in res.output


def test_identify_prints_open_set_and_reid_metrics(data):
    tmp, x, y = data
    out = tmp / "i.json"
    res = runner.invoke(app, ["identify", "--gallery", str(tmp / "gallery.npz"), "--query",
                              str(tmp / "query.npz"), "--camera-key", "camera",
                              "--target-far", "0.05", "-o", str(out), "--save",
                              str(tmp / "ident")])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["num_known"] == 30 and result["num_unknown"] == 60
    assert result["rank1"] > 0.9 and "dir_at_far_0.05" in result and "map" in result
    assert "re-id protocol" in res.output
    ident = Identifier.load(tmp / "ident")
    np.testing.assert_array_equal(ident.classes_, [0, 1, 2])


def test_fewshot_support_query_and_episodes(data):
    tmp, x, y = data
    np.savez(tmp / "support.npz", x=x[::10], labels=y[::10])
    res = runner.invoke(app, ["fewshot", "--support", str(tmp / "support.npz"), "--query",
                              str(tmp / "set.npz"), "-o", str(tmp / "f.json")])
    assert res.exit_code == 0, res.output
    ref = FewShotClassifier().fit(x[::10], y[::10])
    acc = json.loads((tmp / "f.json").read_text())["accuracy"]
    assert acc == pytest.approx((ref.predict(x) == y).mean())
    res = runner.invoke(app, ["fewshot", "--episodes", str(tmp / "set.npz"), "--way", "3,5",
                              "--shot", "1", "--n-episodes", "20", "--n-query", "5",
                              "-o", str(tmp / "e.json")])
    assert res.exit_code == 0, res.output
    assert set(json.loads((tmp / "e.json").read_text())) >= {"3way_1shot", "5way_1shot"}
    res = runner.invoke(app, ["fewshot", "--episodes", str(tmp / "set.npz"), "--way", "20",
                              "-o", str(tmp / "e.json")])
    assert res.exit_code == 1 and "20-way episodes need 20" in res.output


def test_clear_errors(data):
    tmp, x, y = data
    res = runner.invoke(app, ["verify", "--data", str(tmp / "missing.npz")])
    assert res.exit_code == 1 and "error" in res.output
    res = runner.invoke(app, ["verify", "--data", "heldout"])
    assert res.exit_code == 1 and "RUN_DIR" in res.output
    np.savez(tmp / "one.npz", x=x[:20], labels=y[:20])
    res = runner.invoke(app, ["verify", "--data", str(tmp / "one.npz")])
    assert res.exit_code == 1 and "two identities" in res.output
    res = runner.invoke(app, ["fewshot"])
    assert res.exit_code == 1 and "--support" in res.output


def test_input_mistakes_of_the_recognition_commands_are_error_lines(data, tmp_path):
    tmp, x, y = data
    (tmp / "zero.npz").write_bytes(b"")
    res = runner.invoke(app, ["verify", "--data", str(tmp / "zero.npz")])
    assert res.exit_code == 1 and "is empty (0 bytes)" in res.output
    np.savez(tmp / "emb.npz", embeddings=x, labels=y)
    res = runner.invoke(app, ["verify", str(tmp), "--data", str(tmp / "emb.npz")])
    assert res.exit_code == 1 and "holds embeddings" in res.output  # (RUN_DIR given)
    for args, words in ((["--method", "bogus"], "--method must be one of"),
                        (["--way", "5,x"], "--way and --shot take integers")):
        res = runner.invoke(app, ["fewshot", "--episodes", str(tmp / "set.npz"), *args])
        assert res.exit_code == 1 and words in res.output
    names = np.array(["a", "b", "c", "d", "e", "f"])[y]
    np.savez(tmp / "named.npz", x=x, labels=names)
    res = runner.invoke(app, ["fewshot", "--support", str(tmp / "named.npz"), "--query",
                              str(tmp / "set.npz")])
    assert res.exit_code == 1 and "share one type" in res.output


def test_a_saved_kit_keeps_its_run_as_an_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "x").mkdir(parents=True)
    from dmlkit.apps.persistence import _json_params

    v = Verifier(embedder="runs/x")  # the parameters a kit saves

    assert _json_params(v)[0]["embedder"] == str((tmp_path / "runs" / "x").resolve())
