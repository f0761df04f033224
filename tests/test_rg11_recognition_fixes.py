"""Verification bootstrap with one-kind replicates, the pair split of ``dmlkit verify
--pairs``, and the full-ranking MRR and FAR checks of :meth:`Identifier.evaluate`."""

import json
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.apps import Identifier
from dmlkit.apps.identification_metrics import dir_at_far
from dmlkit.apps.verification_stats import bootstrap_intervals
from dmlkit.cli._recognition_data import split_rows
from dmlkit.cli.main import app

runner = CliRunner()


@pytest.fixture
def two_identities(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(8, 4)), labels=np.repeat([0, 1], 4))
    return tmp_path


def _verify(tmp, pairs, *options):
    """``dmlkit verify`` of ``tmp``'s ``d.npz`` on a pairs file, written to ``v.json``."""
    return runner.invoke(app, ["verify", "--data", str(tmp / "d.npz"), "--pairs", str(pairs),
                               *options, "-o", str(tmp / "v.json")])  # fmt: skip


def write_pairs(path, rows):
    np.savetxt(path, np.asarray(rows), fmt="%d", delimiter=",")
    return path


# -- bootstrap intervals -------------------------------------------------------------------
def test_bootstrap_without_a_usable_replicate_gives_no_interval():
    with pytest.warns(UserWarning, match="1 of 1 bootstrap replicates"):
        out = bootstrap_intervals(
            np.array([0.1, 0.9]), np.array([False, True]), fars=(0.1,), n_bootstrap=1, seed=4
        )
    assert out == {"eer": None, "tar_at_far_0.1": None}


def test_bootstrap_warns_about_dropped_replicates_and_keeps_the_rest():
    s = np.array([0.1, 0.2, 0.8, 0.9])
    y = np.array([False, False, True, True])
    with pytest.warns(UserWarning, match=r"\d+ of 30 bootstrap replicates"):
        out = bootstrap_intervals(s, y, fars=(0.5,), n_bootstrap=30, seed=0)
    lo, hi = out["eer"]
    assert 0.0 <= lo <= hi <= 1.0


def test_bootstrap_of_mixed_replicates_does_not_warn():
    rng = np.random.default_rng(1)
    s, y = rng.normal(size=200), np.arange(200) % 2 == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = bootstrap_intervals(s, y, fars=(0.1,), n_bootstrap=20, seed=0)
    assert out["eer"][0] <= out["eer"][1]


def test_verify_with_only_one_kind_replicates_writes_metrics(two_identities):
    tmp = two_identities
    pairs = write_pairs(
        tmp / "p.csv",
        [[0, 1, 1], [2, 3, 1], [4, 5, 1], [6, 7, 1], [0, 4, 0], [1, 5, 0], [2, 6, 0], [3, 7, 0]],
    )
    res = _verify(tmp, pairs, "--bootstrap", "1", "--seed", "4")
    assert res.exit_code == 0, res.output
    result = json.loads((tmp / "v.json").read_text())
    assert result["ci95"]["eer"] is None


# -- the pair split of verify --pairs ------------------------------------------------------
def test_split_rows_by_strata_halves_each_kind():
    same = np.array([1, 1, 0, 0, 0, 0], dtype=bool)
    for seed in range(20):
        fit, test = split_rows(6, 0.5, seed, strata=same)
        assert sorted(np.r_[fit, test].tolist()) == list(range(6))
        assert same[fit].sum() == 1 and same[test].sum() == 1
        assert (~same[fit]).sum() == 2 and (~same[test]).sum() == 2


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_verify_pairs_with_two_of_each_kind_works_at_any_seed(two_identities, seed):
    tmp = two_identities
    pairs = write_pairs(
        tmp / "p3.csv", [[0, 1, 1], [2, 3, 1], [0, 4, 0], [1, 5, 0], [2, 6, 0], [3, 7, 0]]
    )
    res = _verify(tmp, pairs, "--bootstrap", "5", "--seed", str(seed))
    assert res.exit_code == 0, res.output
    result = json.loads((tmp / "v.json").read_text())
    assert result["num_pairs"] == 3 and result["num_same"] == 1 and result["fit_pairs"] == 3


def test_verify_pairs_with_one_same_pair_names_the_split_and_the_way_out(two_identities):
    tmp = two_identities
    pairs = write_pairs(tmp / "p1.csv", [[0, 1], [0, 4], [1, 5], [2, 6]])  # same from labels
    res = _verify(tmp, pairs, "--bootstrap", "5")
    assert res.exit_code == 1
    assert "1 same and 3 different" in res.output and "--calibrate" in res.output
    assert "half" in res.output and "Traceback" not in res.output


# -- identification: MRR and FARs ----------------------------------------------------------
def reference_mrr(q, qid, g, gid):
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    sim = qn @ gn.T  # (nq, ng)
    ids = np.unique(gid)
    best = np.stack([sim[:, gid == i].max(1) for i in ids], 1)  # (nq, identities)
    true = best[np.arange(len(qid)), np.searchsorted(ids, qid)]
    rank = (best > true[:, None]).sum(1)
    return float(np.mean(1.0 / (rank + 1)))


@pytest.mark.parametrize("mode", ["nearest", "prototype"])
def test_mrr_ranks_every_enrolled_identity_at_any_max_rank(mode):
    rng = np.random.default_rng(0)
    g, gid = rng.normal(size=(60, 8)), np.repeat(np.arange(30), 2)
    q, qid = rng.normal(size=(60, 8)), rng.integers(0, 30, 60)
    ident = Identifier(target_far=None, mode=mode).fit(g, gid)
    if mode == "nearest":
        ref = reference_mrr(q, qid, g, gid)
    else:
        protos = np.stack([g[gid == i].mean(0) for i in range(30)])
        ref = reference_mrr(q, qid, protos, np.arange(30))
    for max_rank in (1, 5, 20, 30):
        assert ident.evaluate(q, qid, max_rank=max_rank)["mrr"] == pytest.approx(ref)


def test_mrr_warns_when_an_approximate_search_misses_true_identities():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    g, gid = rng.normal(size=(400, 8)).astype(np.float32), np.arange(400) // 4
    q, qid = rng.normal(size=(50, 8)).astype(np.float32), rng.integers(0, 100, 50)
    ivf = Identifier(target_far=None, index="IVF16,Flat", nprobe=1).fit(g, gid)
    with pytest.warns(UserWarning, match=r"reaches no item of the true identity of \d+ of 50"):
        approx = ivf.evaluate(q, qid, max_rank=1)["mrr"]
    exact = Identifier(target_far=None).fit(g, gid).evaluate(q, qid, max_rank=1)["mrr"]
    assert 0.0 < approx < exact


def test_evaluate_refuses_bad_fars_when_every_query_is_known():
    rng = np.random.default_rng(0)
    g, gid = rng.normal(size=(40, 8)), np.repeat(np.arange(10), 4)
    ident = Identifier(target_far=0.1).fit(g, gid)
    for fars in ((5.0, -1), (0.0,), 1.0):
        with pytest.raises(ValueError, match="fars"):
            ident.evaluate(g, gid, fars=fars)
    with pytest.raises(ValueError, match="fars"):  # unknown queries only
        ident.evaluate(g[:3], [97, 98, 99], fars=(2.0,))


def test_dir_at_far_is_nan_with_a_warning_below_one_over_the_unknowns():
    rng = np.random.default_rng(0)
    g, gid = rng.normal(size=(40, 8)), np.repeat(np.arange(10), 4)
    q = rng.normal(size=(23, 8))
    qid = np.r_[np.repeat(np.arange(10), 2), [97, 98, 99]]  # 3 unknowns
    ident = Identifier(target_far=0.1).fit(g, gid)
    with pytest.warns(UserWarning, match=r"DIR at FAR 0.001, 0.01 is NaN: 3 unknown"):
        out = ident.evaluate(q, qid, fars=(1e-3, 1e-2, 0.5))
    for far in ("0.001", "0.01"):
        assert np.isnan(out[f"dir_at_far_{far}"]) and np.isnan(out[f"threshold_at_far_{far}"])
    assert np.isfinite(out["dir_at_far_0.5"]) and np.isfinite(out["threshold_at_far_0.5"])


def test_dir_at_far_resolvable_fars_do_not_warn():
    known, correct = np.array([0.9, 0.5]), np.array([True, True])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = dir_at_far(known, correct, np.linspace(0, 1, 10), [0.1])
    assert out["dir_at_far_0.1"] == 0.5  # threshold just above 0.889: 0.9 passes
