"""A refine stage (`...,RFlat`) re-ranks `k_factor * k` candidates: a default that lets
it change what is found, persisted with the index, set from the command line, raised by
calibration; advice for a low recall that applies to the index; and an accurate
message where a refine index cannot remove items."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app

faiss = pytest.importorskip("faiss")
runner = CliRunner()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(50, 32)) * 3
    x = (centres[rng.integers(0, 50, 2000)] + rng.normal(size=(2000, 32))).astype(np.float32)
    q = (centres[rng.integers(0, 50, 200)] + rng.normal(size=(200, 32))).astype(np.float32)
    d = ((q[:, None].astype(np.float64) - x[None]) ** 2).sum(2)
    return x, q, np.argsort(d, 1)[:, :10]


def _recall(ids, truth):
    return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)])


def _build(factory, x, **kw):
    from dmlkit.index import FaissIndex

    index = FaissIndex(32, "l2", factory, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # faiss's k-means warnings on few training vectors
        index.add(x)
    return index


def test_the_refine_stage_improves_on_its_base_index_by_default(data):
    from dmlkit.index.faiss_index import REFINE_K_FACTOR, refine_stage

    x, q, truth = data
    plain = _recall(_build("IVF16,PQ8x4", x, nprobe=16).search(q, 10)[1], truth)
    refined = _build("IVF16,PQ8x4,RFlat", x, nprobe=16)
    assert refined.has_refine and refined.k_factor is None
    assert refine_stage(faiss, refined.index).k_factor == REFINE_K_FACTOR
    assert _recall(refined.search(q, 10)[1], truth) > max(0.97, plain + 0.15)
    refined.k_factor = 1  # faiss's own default: the refine stage changes nothing
    refined._apply_search_params()
    assert _recall(refined.search(q, 10)[1], truth) == pytest.approx(plain, abs=0.01)


def test_k_factor_is_saved_and_applied_on_load(data, tmp_path):
    from dmlkit.index import load_index
    from dmlkit.index.faiss_index import refine_stage

    index = _build("IVF16,PQ8x4,RFlat", data[0], nprobe=8, k_factor=16)
    index.save(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["params"]["k_factor"] == 16
    again = load_index(tmp_path / "idx")
    assert again.k_factor == 16 and refine_stage(faiss, again.index).k_factor == 16.0
    s1, i1 = index.search(data[1], 10)
    s2, i2 = again.search(data[1], 10)
    assert np.array_equal(i1, i2) and np.array_equal(s1, s2)


@pytest.mark.parametrize(("factory", "value", "message"), [
    ("IVF16,PQ4", 4, "k_factor applies to indexes with a refine stage"),
    ("Flat", 2.0, "'Flat' has none"),
    ("PQ4,RFlat", 0.5, "k_factor must be a number >= 1, got 0.5"),
    ("PQ4,RFlat", True, "k_factor must be a number >= 1"),
    ("PQ4,RFlat", float("nan"), "k_factor must be a number >= 1"),
])
def test_a_k_factor_that_cannot_apply_is_refused(factory, value, message):
    from dmlkit.index import FaissIndex

    with pytest.raises(ValueError, match=message):
        FaissIndex(16, "l2", factory, k_factor=value)


def test_calibration_raises_k_factor_to_reach_the_target(data):
    from dmlkit.index.calibrate import calibrate

    x = data[0]
    index = _build("IVF16,PQ8x4,RFlat", x, nprobe=16)  # every list: only k_factor is left
    result = calibrate(index, x, target=1.0)
    assert result["recall_at_k"] == 1.0 and result["k_factor_tuned"]
    assert result["k_factor"] > 4 and index.k_factor == result["k_factor"]
    assert not result["tuned"] and result["nprobe"] == 16  # given: only measured
    given = _build("IVF16,PQ8x4,RFlat", x, nprobe=16, k_factor=1)
    result = calibrate(given, x, target=1.0)
    assert result["k_factor"] == 1 and not result["k_factor_tuned"]
    assert result["recall_at_k"] < 0.9 and given.k_factor == 1


def test_calibration_narrows_the_breadth_back_once_k_factor_rose(data):
    from dmlkit.index.calibrate import calibrate

    x = data[0]
    index = _build("IVF16,PQ8x4,RFlat", x)
    result = calibrate(index, x, target=1.0)
    assert result["recall_at_k"] == 1.0 and result["tuned"] and result["k_factor"] > 4
    assert result["nprobe"] < 16 and index.nprobe == result["nprobe"]


def test_cli_k_factor_on_build_and_search(data, tmp_path):
    from dmlkit.index import load_index

    x, q, _ = data
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "q.npz", embeddings=q[:3])
    res = runner.invoke(app, ["index", "build", str(tmp_path / "x.npy"), "--out",
                              str(tmp_path / "idx"), "--factory", "IVF16,PQ8x4,RFlat",
                              "--nprobe", "16", "--k-factor", "1"])
    assert res.exit_code == 0, res.output
    assert "(nprobe 16, as given; k_factor 1, as given)" in res.output
    assert "raise --k-factor (now 1)" in res.output and "raise --nprobe" not in res.output
    assert "every list is searched already (nprobe 16 of 16)" in res.output
    assert load_index(tmp_path / "idx").k_factor == 1
    res = runner.invoke(app, ["search", str(tmp_path / "idx"), "-q", str(tmp_path / "q.npz"),
                              "--k-factor", "8", "--json"])
    assert res.exit_code == 0, res.output
    assert [h["id"] for h in json.loads(res.output)[0]["neighbours"]][0] >= 0
    res = runner.invoke(app, ["search", str(tmp_path / "idx"), "-q", str(tmp_path / "q.npz"),
                              "--k-factor", "0.5"])
    assert res.exit_code != 0 and "--k-factor must be a number >= 1" in res.output
    res = runner.invoke(app, ["index", "build", str(tmp_path / "x.npy"), "--out",
                              str(tmp_path / "ex"), "--k-factor", "4"])
    assert res.exit_code != 0 and "not to the exact index" in res.output


def test_cli_reports_a_tuned_k_factor(data, tmp_path):
    np.save(tmp_path / "x.npy", data[0])
    res = runner.invoke(app, ["index", "build", str(tmp_path / "x.npy"), "--out",
                              str(tmp_path / "idx"), "--factory", "IVF16,PQ8x4,RFlat"])
    assert res.exit_code == 0, res.output
    assert "tuned; k_factor 4, tuned)" in res.output and "warning" not in res.output


@pytest.mark.parametrize(("factory", "result", "says", "never"), [
    ("IVF16,PQ4x4", {"nprobe": 16}, "every list is searched already (nprobe 16 of 16); "
     "store finer codes (more PQ sub-quantizers or bits), add a refine stage (--factory "
     "'IVF16,PQ4x4,RFlat') or use --factory exact", "raise --nprobe"),
    ("IVF16,PQ4x4", {"nprobe": 2}, "raise --nprobe (now 2 of 16 lists), store finer codes",
     "every list"),
    ("IVF16,PQ4x4,RFlat", {"nprobe": 16, "k_factor": 4}, "every list is searched already "
     "(nprobe 16 of 16); raise --k-factor (now 4) or use --factory exact", "finer codes"),
    ("IVF16,PQ4x4,RFlat", {"nprobe": 16, "k_factor": 256}, "every list is searched already "
     "(nprobe 16 of 16); store finer codes (more PQ sub-quantizers or bits) or use --factory "
     "exact", "raise --k-factor"),
    ("NSG16", {}, "rebuild as an HNSW graph, whose breadth --ef-search tunes", "codes"),
    ("LSH", {}, "store finer codes (more LSH bits), add a refine stage (--factory 'LSH,RFlat')",
     "PQ sub-quantizers"),
    ("IVF16,SQ4", {"nprobe": 16}, "more bits per dimension, e.g. SQfp16", "PQ sub-quantizers"),
    ("HNSW8", {"ef_search": 4096}, "rebuild with a denser graph (--factory HNSW16)", "codes"),
    ("HNSW8", {"ef_search": 64}, "raise --ef-search (now 64) or use --factory exact", "denser"),
    ("HNSW8,PQ4", {"ef_search": 4096}, "store finer codes", "denser graph"),
])
def test_low_recall_advice_applies_to_the_index(data, factory, result, says, never):
    from dmlkit.index import FaissIndex
    from dmlkit.index.calibrate import low_recall_advice

    # (a refine index of 2000 items can re-rank more; an empty one has nothing to re-rank)
    index = _build(factory, data[0]) if "RFlat" in factory else FaissIndex(32, "l2", factory)
    advice = low_recall_advice(index, {"recall_at_k": 0.5, "k": 10, **result})
    assert says in advice and never not in advice and advice.endswith("use --factory exact")


def test_index_build_warns_with_advice_that_applies(data, tmp_path):
    """Tuning opened every list: the warning says so instead of advising more lists."""
    np.save(tmp_path / "x.npy", data[0])
    res = runner.invoke(app, ["index", "build", str(tmp_path / "x.npy"), "--out",
                              str(tmp_path / "idx"), "--factory", "IVF16,PQ4x4"])
    assert res.exit_code == 0, res.output
    warning = next(line for line in res.output.splitlines() if line.startswith("warning:"))
    assert "every list is searched already (nprobe 16 of 16)" in warning
    assert "raise --nprobe" not in warning and "add a refine stage" in warning


def test_a_refine_index_says_why_it_cannot_remove(data):
    index = _build("IVF16,PQ8x4,RFlat", data[0])
    with pytest.raises(NotImplementedError) as err:
        index.remove([1, 2])
    message = str(err.value)
    assert "refine stage" in message and "without a refine stage" in message
    assert "use a Flat or IVF index\n" not in message and "Error in" not in message
    assert index.ntotal == 2000
