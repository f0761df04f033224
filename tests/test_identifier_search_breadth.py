"""An Identifier over an approximate index (IVF, HNSW) chooses a search breadth its
calibration can work with, takes one given, and says when a given one is too narrow."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("faiss")

from dmlkit.apps import Identifier  # noqa: E402
from dmlkit.cli.main import app  # noqa: E402


def clustered_gallery(n_ids=8, per_id=20, d=16, seed=0):
    """Tight identities far apart: IVF lists follow them, so one list holds one identity."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, d)) * 5
    y = np.repeat(np.arange(n_ids), per_id)
    return (centres[y] + 0.05 * rng.normal(size=(y.size, d))).astype(np.float32), y


@pytest.mark.filterwarnings("ignore:IVF4,Flat")
@pytest.mark.parametrize("mode", ["nearest", "prototype"])
def test_ivf_gallery_calibrates_like_the_exact_one(mode):
    x, y = clustered_gallery()
    exact = Identifier(mode=mode, target_far=0.05).fit(x, y)
    ivf = Identifier(mode=mode, index="IVF4,Flat", target_far=0.05).fit(x, y)
    assert np.isfinite(ivf.threshold_)
    assert ivf.threshold_ == pytest.approx(exact.threshold_, abs=1e-4)
    assert ivf.index_.nprobe > 1  # widened from faiss's default of one list
    np.testing.assert_array_equal(ivf.predict(x), exact.predict(x))


def test_a_given_breadth_too_narrow_is_a_clear_error():
    x, y = clustered_gallery()
    with pytest.raises(ValueError, match="find no other identity .* raise nprobe"):
        Identifier(index="IVF4,Flat", nprobe=1).fit(x, y)
    with pytest.raises(ValueError, match="apply to faiss indexes"):
        Identifier(nprobe=4).fit(x, y)


def test_the_chosen_breadth_is_kept_by_a_saved_identifier(tmp_path):
    x, y = clustered_gallery()
    ivf = Identifier(index="IVF4,Flat", target_far=0.05).fit(x, y)
    ivf.save(tmp_path / "kit")
    again = Identifier.load(tmp_path / "kit")
    assert again.index_.nprobe == ivf.index_.nprobe
    np.testing.assert_array_equal(again.predict(x), ivf.predict(x))


def test_identify_takes_the_breadth_options(tmp_path):
    x, y = clustered_gallery()
    np.savez(tmp_path / "g.npz", embeddings=x[y < 6], labels=y[y < 6])
    np.savez(tmp_path / "q.npz", embeddings=x, labels=y)
    runner = CliRunner()
    res = runner.invoke(app, ["identify", "--gallery", str(tmp_path / "g.npz"), "--query",
                              str(tmp_path / "q.npz"), "--index", "IVF3,Flat", "--nprobe", "3",
                              "-o", str(tmp_path / "i.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "i.json").read_text())["rank1"] == 1.0
    res = runner.invoke(app, ["identify", "--gallery", str(tmp_path / "g.npz"), "--query",
                              str(tmp_path / "q.npz"), "--index", "HNSW16", "--ef-search", "64",
                              "-o", str(tmp_path / "i.json")])
    assert res.exit_code == 0, res.output
