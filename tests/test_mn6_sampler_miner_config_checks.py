"""Sampler and miner settings a run cannot use are refused when the config is checked
(or the sampler built), in one line, before any run directory is made."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.config.schema import Config
from dmlkit.data.dataset import ArrayDataset
from dmlkit.data.tuples import TupleDataset
from dmlkit.training.build import build_sampler
from dmlkit.training.offline_mining import OfflineHardNegativeSampler

runner = CliRunner()


def _config(**sections) -> Config:
    return Config.from_dict({"model": {"name": "mlp"}, "loss": {"name": "triplet_margin"},
                             **sections})


@pytest.mark.parametrize("sampler, key", [
    ({"name": "m_per_class", "labels": [0, 0, 1, 1]}, "labels"),
    ({"name": "hierarchical", "labels": [[0, 0], [0, 1]]}, "labels"),
    ({"name": "offline_hard_negative", "dataset": [1, 2]}, "dataset"),
    ({"name": "offline_hard_negative", "model": 1}, "model"),
])  # fmt: skip
def test_trainer_supplied_sampler_keys_are_refused_at_check(sampler, key):
    config = _config(sampler=sampler)
    with pytest.raises(ValueError, match=rf"sampler\.{key} is supplied by the trainer"):
        config.check()


def test_build_sampler_never_takes_a_configs_labels():
    config = _config(sampler={"name": "m_per_class", "m": 2, "batch_size": 4})
    config.sampler["labels"] = [0, 0, 1, 1]  # (set after the check)
    labels = torch.arange(40) % 4
    with pytest.raises(ValueError, match="supplied by the trainer"):
        build_sampler(config, labels, len(labels))
    del config.sampler["labels"]
    sampler = build_sampler(config, labels, len(labels))
    assert len(sampler) == 10  # the data's 40 labels, not the config's 4


def test_cli_refuses_made_up_labels_before_a_run_directory(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "configs/digits.yaml", "--epochs", "1", "--no-progress",
                              "--out", str(out), "--set", "sampler.labels=[0,0,1,1]"])
    assert res.exit_code == 1, res.output
    assert "sampler.labels is supplied by the trainer" in res.output
    assert "Traceback" not in res.output and not out.exists()


@pytest.mark.parametrize("name", ["offline_hard_negative", "m_per_class"])
def test_label_samplers_are_refused_for_tuple_data(name):
    config = _config(data={"kind": "triplets"}, sampler={"name": name})
    with pytest.raises(ValueError, match=f"sampler '{name}' needs labels; data.kind triplets"):
        config.check()


def test_build_sampler_refuses_offline_mining_on_data_without_labels():
    config = Config(sampler={"name": "offline_hard_negative"})  # (not checked)
    data = TupleDataset(torch.tensor([[0, 1, 2], [1, 2, 3]]), torch.randn(4, 3))
    with pytest.raises(ValueError, match="needs labels; the training data has none"):
        build_sampler(config, None, len(data), data, torch.nn.Linear(3, 2))


def test_cli_refuses_offline_mining_on_triplets_before_a_run_directory(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "configs/weak_triplets_digits.yaml", "--epochs", "1",
                              "--no-progress", "--out", str(out),
                              "--set", "sampler={name: offline_hard_negative}"])
    assert res.exit_code == 1, res.output
    assert "needs labels" in res.output and "Traceback" not in res.output
    assert not out.exists()


def _offline(**kwargs) -> OfflineHardNegativeSampler:
    g = torch.Generator().manual_seed(0)
    data = ArrayDataset(torch.randn(60, 5, generator=g), torch.arange(60) % 4)
    return OfflineHardNegativeSampler(data, torch.nn.Linear(5, 3), batch_size=12, **kwargs)


@pytest.mark.parametrize("kwargs, error, words", [
    ({"k": 0}, ValueError, "k must be >= 1, got 0"),
    ({"k": 2.5}, TypeError, "k must be an int"),
    ({"k": True}, TypeError, "k must be an int"),
    ({"num_batches": 0}, ValueError, "num_batches must be >= 1, got 0"),
    ({"num_batches": 3.0}, TypeError, "num_batches must be an int"),
    ({"triplets_per_anchor": 0}, ValueError, "triplets_per_anchor must be >= 1"),
    ({"positive": "farthest"}, ValueError, "positive must be 'random' or 'hardest'"),
])  # fmt: skip
def test_offline_sampler_checks_its_settings_when_built(kwargs, error, words):
    with pytest.raises(error, match=words):
        _offline(**kwargs)


def test_offline_sampler_num_batches():
    assert len(_offline()) == 60 // 4  # default: len(dataset) * triplets_per_anchor // 4
    assert len(_offline(num_batches=None)) == 15
    assert len(_offline(num_batches=1)) == 1


def test_cli_refuses_k_0_before_any_epoch(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "configs/digits_offline_mining.yaml", "--epochs", "1",
                              "--no-progress", "--out", str(out), "--set", "sampler.k=0",
                              "--set", "data.max_per_class=10"])
    assert res.exit_code == 1 and "k must be >= 1, got 0" in res.output, res.output
    assert "epoch" not in res.output.lower() and not out.exists()


def test_label_free_miner_on_labelled_data_says_what_it_is_for():
    config = _config(miner={"name": "packed_triplets"})
    with pytest.raises(ValueError, match="takes no labels") as err:
        config.check()
    message = str(err.value)
    assert "need no miner" in message and "\n" not in message


@pytest.mark.parametrize("miner", ["packed_triplets", "batch_hard"])
def test_tuple_data_refuses_any_miner_saying_why(miner):
    config = _config(data={"kind": "triplets"}, miner={"name": miner})
    with pytest.raises(ValueError, match="no miner runs; remove the miner section"):
        config.check()
