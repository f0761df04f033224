"""Samplers, cross-batch memory and tuple data: settings that would train on less than
they seem to are refused or warned about.

A hierarchical sampler gives each class of a small super-class once (never the same
class twice while another is left) and reports the fewest classes a batch can hold,
which training checks; a top-level miner with a cross-batch memory is refused; tuple
entries past the features, non-integral tuple ids and data keys a tuple file run ignores
are errors; triplets that contradict each other are warned about."""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.config import Config
from dmlkit.data.tuples import TupleDataset, read_tuples_csv
from dmlkit.samplers import HierarchicalSampler

runner = CliRunner()


def _labels(leaves_per_super: list[int], per_leaf: int = 6) -> np.ndarray:
    """``(n, 2)`` labels: super-class ``s`` has ``leaves_per_super[s]`` classes."""
    rows = [(s, 10 * s + leaf) for s, count in enumerate(leaves_per_super)
            for leaf in range(count) for _ in range(per_leaf)]
    return np.array(rows, dtype=np.int64)


# -- hierarchical sampler: distinct classes, and the fewest a batch holds ----------------

def test_a_small_super_class_gives_each_of_its_classes():
    """Super-class 0 has 2 classes and 3 are asked of it: both are in every batch that
    draws it (drawing with replacement gave one class twice in about half of them)."""
    labels = _labels([2, 3, 3, 3])
    with pytest.warns(UserWarning, match="fewer than classes_per_super=3"):
        sampler = HierarchicalSampler(labels, batch_size=12, m=2, classes_per_super=3,
                                      num_batches=200, seed=0)
    drawn = 0
    for batch in sampler:
        per_super = collections.defaultdict(set)
        for row in labels[batch]:
            per_super[int(row[0])].add(int(row[1]))
        for s, leaves in per_super.items():
            assert len(leaves) == (2 if s == 0 else 3)
        drawn += 0 in per_super
    assert drawn > 50


def test_min_classes_per_batch_is_the_fewest_a_batch_holds():
    labels = _labels([3, 2, 1, 4])
    with pytest.warns(UserWarning, match="as few as 5 distinct classes of the 6 asked"):
        sampler = HierarchicalSampler(labels, batch_size=12, m=2, classes_per_super=2,
                                      num_batches=300, seed=1)
    counts = [len({tuple(r) for r in labels[b].tolist()}) for b in sampler]
    assert sampler.classes_per_batch == 6 and sampler.min_classes_per_batch == 5
    assert min(counts) == 5 and max(counts) == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # enough classes everywhere: no warning
        full = HierarchicalSampler(labels, batch_size=8, m=2, classes_per_super=1)
    assert full.min_classes_per_batch == full.classes_per_batch == 4


def test_single_class_super_classes_alone_in_a_batch_are_warned_about():
    labels = _labels([1, 1, 1, 1])  # every super-class has a single class
    with pytest.warns(UserWarning, match="every batch holds one class"):
        sampler = HierarchicalSampler(labels, batch_size=8, m=4, classes_per_super=2)
    assert sampler.min_classes_per_batch == 1
    assert all(len({tuple(r) for r in labels[b].tolist()}) == 1 for b in sampler)
    with pytest.warns(UserWarning, match="some batches hold one class|those batches hold"):
        HierarchicalSampler(_labels([1, 2, 2]), batch_size=8, m=4, classes_per_super=2)


def _hier_run(tmp_path, leaves_per_super, loss="hierarchical_triplet"):
    labels = _labels(leaves_per_super, per_leaf=10)
    x = np.random.default_rng(0).normal(size=(len(labels), 6)).astype(np.float32)
    np.savez(tmp_path / "h.npz", x=x, labels=labels)
    (tmp_path / "h.yaml").write_text(
        f"name: h\ndata: {{name: npz, path: {tmp_path / 'h.npz'}, split: stratified}}\n"
        f"model: {{name: mlp, dim: 4, hidden: [8]}}\nloss: {loss}\n"
        "sampler: {name: hierarchical, batch_size: 8, m: 4, classes_per_super: 2}\n"
        "training: {epochs: 1, num_threads: 1}\n")
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(tmp_path / "h.yaml"), "--out", str(out),
                              "--no-progress"])
    return res, out


def test_training_refuses_single_class_batches_of_single_class_super_classes(tmp_path):
    """Each super-class has one class: every batch of one super-class holds one class
    (the triplet loss was 0 every epoch, with no error)."""
    res, out = _hier_run(tmp_path, [1, 1, 1, 1])
    assert res.exit_code == 1, res.output
    assert "error: sampler 'hierarchical' makes batches of a single class" in res.output
    assert "min_classes_per_batch 1" in res.output and not out.exists()


# -- cross-batch memory with a top-level miner ---------------------------------------------

XBM = {"name": "x", "data": {"name": "digits", "max_per_class": 10,
                             "max_heldout_per_class": 4},
       "model": {"name": "mlp", "dim": 8, "hidden": [16]},
       "sampler": {"name": "m_per_class", "m": 2, "batch_size": 8},
       "training": {"epochs": 1, "num_threads": 1}}


@pytest.mark.parametrize("loss, words", [
    ({"name": "cross_batch_memory", "loss": "triplet_margin", "memory_size": 64},
     r"loss 'cross_batch_memory'"),
    ({"name": "weighted_sum", "losses": [
        "contrastive", {"name": "cross_batch_memory", "loss": "triplet_margin"}]},
     "the 'cross_batch_memory' loss in loss 'weighted_sum'"),
])
def test_a_top_level_miner_with_a_memory_is_refused(loss, words):
    config = Config.from_dict({**XBM, "loss": loss, "miner": {"name": "batch_hard"}})
    with pytest.raises(ValueError, match=f"miner 'batch_hard' with {words}.*memory would "
                                         "go unused") as err:
        config.check()
    assert "miner: {name: batch_hard}" in str(err.value)  # (where the miner goes)


def test_the_memory_s_own_miner_is_accepted():
    Config.from_dict({**XBM, "loss": {"name": "cross_batch_memory", "loss": "triplet_margin",
                                      "miner": {"name": "batch_hard"}}}).check()


def test_ready_made_memory_and_miner_are_refused_by_the_trainer():
    from dmlkit.losses import CrossBatchMemory, TripletMarginLoss
    from dmlkit.miners import BatchHardMiner
    from dmlkit.training import Trainer
    from dmlkit.training.run import build_splits, resolve_config

    config = Config.from_dict({**XBM, "loss": "triplet_margin"})
    train, _ = build_splits(config, for_training=True)
    resolved = resolve_config(config, train.x[0], 10)
    memory = CrossBatchMemory(TripletMarginLoss(), 8, memory_size=32)
    with pytest.raises(ValueError, match="miner 'batch_hard' with loss 'CrossBatchMemory'"):
        Trainer(resolved, train, loss=memory, miner=BatchHardMiner(), log=None)


# -- tuple data ------------------------------------------------------------------------------

def test_an_entry_past_the_features_names_file_line_and_fix(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((5, 2), np.float32))
    (tmp_path / "t.csv").write_text("anchor,positive,negative\n0,1,2\n3,4,5\n")
    with pytest.raises(ValueError, match=r"t.csv, line 3: entry 5 is past the end of .*x.npy "
                                         r"\(5 rows, 0 to 4\); fix the entry or drop the row"):
        read_tuples_csv(tmp_path / "t.csv", "triplets", tmp_path / "x.npy")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1.7])
def test_non_integral_tuple_ids_are_refused(bad):
    x = torch.randn(6, 2)
    with pytest.raises(ValueError, match=r"integer item ids, got .* \(tuple 1, column 2\)"):
        TupleDataset([[0, 1, 2], [3, 4, bad]], x)
    with pytest.raises(ValueError, match="integer item ids"):
        TupleDataset(torch.tensor([[0.0, bad, 2.0]]), x)
    assert TupleDataset([[0.0, 1.0, 2.0]], x).tuples.tolist() == [[0, 1, 2]]  # integral


def test_contradicting_triplets_are_warned_about(tmp_path):
    from dmlkit.training.weak import _warn_repeated

    np.save(tmp_path / "x.npy", np.zeros((8, 2), np.float32))
    (tmp_path / "t.csv").write_text("anchor,positive,negative\n0,1,2\n0,2,1\n3,4,5\n3,4,6\n")
    triplets = read_tuples_csv(tmp_path / "t.csv", "triplets", tmp_path / "x.npy")
    with pytest.warns(UserWarning, match=r"1 triplets are contradicted by another with "
                                         r"positive and negative swapped"):
        _warn_repeated(triplets, "t.csv")
    (tmp_path / "t.csv").write_text("anchor,positive,negative\n0,1,2\n1,0,2\n0,1,3\n")
    agreeing = read_tuples_csv(tmp_path / "t.csv", "triplets", tmp_path / "x.npy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_repeated(agreeing, "t.csv")


TUPLE_CONFIG = {"name": "w", "model": {"name": "mlp", "dim": 4, "hidden": [8]},
                "loss": "triplet_margin", "training": {"epochs": 1, "num_threads": 1}}


@pytest.mark.parametrize("extra, named", [
    ({"num_tuples": 300}, "data.num_tuples would be ignored"),
    ({"name": "npz", "path": "x.npz"}, "data.name, data.path would be ignored"),
    ({"image_size": 8}, "data.image_size would be ignored"),
    ({"augment_shift": 2, "max_per_class": 5}, "data.max_per_class, data.augment_shift"),
])
def test_data_keys_a_tuple_file_ignores_are_refused(extra, named):
    data = {"kind": "triplets", "tuples": "t.csv", "features": "x.npy", **extra}
    config = Config.from_dict({**TUPLE_CONFIG, "data": data})
    with pytest.raises(ValueError, match=f"data.tuples \\(t.csv\\) gives the triplets .*"
                                         f"{named}.*remove"):
        config.check()


def test_tuple_file_keys_it_reads_are_accepted():
    for data in ({"kind": "pairs", "tuples": "p.csv", "features": "x.npz", "x_key": "f",
                  "test_fraction": 0.3, "seed": 2},
                 {"kind": "triplets", "tuples": "t.csv", "image_size": 8, "color": "rgb"},
                 {"kind": "triplets", "num_tuples": 300, "max_per_class": 5}):  # drawn
        Config.from_dict({**TUPLE_CONFIG, "data": data}).check()
    config = Config.from_dict({**TUPLE_CONFIG, "data": {"kind": "pairs",
                                                        "features": "x.npy"}})
    with pytest.raises(ValueError, match="data.tuples is not set"):
        config.check()


# -- exports -------------------------------------------------------------------------------

def test_every_registered_sampler_is_exported():
    import dmlkit.samplers
    from dmlkit.registry import SAMPLERS
    from dmlkit.samplers import OfflineHardNegativeSampler

    assert "OfflineHardNegativeSampler" in dmlkit.samplers.__all__
    for _, cls in SAMPLERS.items():
        assert getattr(dmlkit.samplers, cls.__name__) is cls
    assert SAMPLERS.get("offline_hard_negative") is OfflineHardNegativeSampler
