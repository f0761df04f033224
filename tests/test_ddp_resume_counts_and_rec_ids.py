"""Multi-process batch checks on a resume (the checkpoint fixes the batch size), the note
on offline mining's topped-up batches, and recommendation metrics over ids of mixed
types."""

from __future__ import annotations

import numpy as np
import pytest
import torch.distributed as dist

from dmlkit.evaluation.recommendation import recommendation_metrics

TINY = {
    "name": "ddp_resume",
    "data": {"name": "digits", "max_per_class": 20, "max_heldout_per_class": 5},
    "model": {"name": "mlp", "dim": 8, "hidden": []},
    "loss": {"name": "triplet_margin"},
    "miner": {"name": "batch_hard"},
    "sampler": {"name": "m_per_class", "m": 4, "batch_size": 40},
    "training": {"epochs": 1, "progress": False, "seed": 0},
}


def _resolved(settings: dict):
    from dmlkit.config import Config
    from dmlkit.data.load import split_dataset
    from dmlkit.training.build import resolve_config

    cfg = Config.from_dict(settings)
    train, _ = split_dataset(cfg.data)
    return resolve_config(cfg, train.x[0], 10), train


def _as_process(monkeypatch, rank: int, world: int) -> None:
    """The trainer's view of process ``rank`` of ``world`` (its constructor runs no
    collective)."""
    monkeypatch.setattr(dist, "get_rank", lambda *a, **k: rank)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: world)


# -- a resume on a process count that does not divide the batch size ---------------------
def test_resume_on_three_processes_lists_the_counts_that_work(tmp_path, monkeypatch):
    from dmlkit.training import Trainer
    from dmlkit.training.distributed import DistributedTrainer

    cfg, train = _resolved(TINY)
    Trainer(cfg, train, out_dir=tmp_path / "run", log=None).fit()  # writes the checkpoint
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    _as_process(monkeypatch, 0, 3)
    with pytest.raises(ValueError) as err:
        DistributedTrainer(cfg, train, out_dir=tmp_path / "run", log=None)
    message = str(err.value)
    assert "batch size 40" in message and "3 processes" in message
    assert "checkpoint" in message
    assert "resume it on 1, 2, 4, 5, 8, 10, 20 or 40 processes" in message
    assert "sampler.batch_size" not in message and "make it a multiple" not in message


def test_a_fresh_run_keeps_the_advice_to_change_the_batch_size(tmp_path, monkeypatch):
    from dmlkit.training.distributed import DistributedTrainer

    cfg, train = _resolved(TINY)
    _as_process(monkeypatch, 0, 3)
    with pytest.raises(ValueError, match=r"make it a multiple of 3 \(sampler.batch_size"):
        DistributedTrainer(cfg, train, out_dir=tmp_path / "new", log=None)


def test_a_resume_with_batch_norms_leaves_out_one_item_per_process(tmp_path, monkeypatch):
    """A count that gives each process one item is refused with batch norms that train,
    so it is not offered."""
    from dmlkit.training import Trainer
    from dmlkit.training.distributed import DistributedTrainer

    settings = {
        **TINY,
        "model": {"name": "small_cnn", "dim": 8, "width": 4},
        "sampler": {"name": "m_per_class", "m": 2, "batch_size": 12},
    }
    cfg, train = _resolved(settings)
    Trainer(cfg, train, out_dir=tmp_path / "run", log=None).fit()
    _as_process(monkeypatch, 0, 5)
    with pytest.raises(ValueError, match="resume it on 1, 2, 3, 4 or 6 processes"):
        DistributedTrainer(cfg, train, out_dir=tmp_path / "run", log=None)


# -- offline mining tops batches up to a multiple of the process count -------------------
@pytest.mark.parametrize("rank", [0, 1])
def test_offline_mining_says_once_that_batches_are_topped_up(tmp_path, monkeypatch, rank):
    from dmlkit.training.distributed import DistributedTrainer

    settings = {
        **TINY,
        "miner": None,
        "sampler": {"name": "offline_hard_negative", "batch_size": 30, "k": 5},
    }
    cfg, train = _resolved(settings)
    _as_process(monkeypatch, rank, 4)
    lines: list[str] = []
    trainer = DistributedTrainer(cfg, train, out_dir=tmp_path / "run", log=lines.append)
    assert trainer.sampler.batch_multiple == 4
    noted = [line for line in lines if "multiple of the 4 processes" in line]
    assert len(noted) == (1 if rank == 0 else 0), lines
    if noted:
        assert "differ" in noted[0] and "one process" in noted[0]


# -- recommendation metrics match ids however they are typed -----------------------------
def _naive(recommended, relevant, k):
    """Recall and NDCG by hand, ids compared as text."""
    recalls, ndcgs = [], []
    for row, rel in zip(recommended, relevant, strict=True):
        rel = {str(r) for r in rel}
        hits = [str(x) in rel for x in list(row)[:k]]
        recalls.append(sum(hits) / len(rel))
        dcg = sum(1 / np.log2(i + 2) for i, h in enumerate(hits) if h)
        ndcgs.append(dcg / sum(1 / np.log2(i + 2) for i in range(min(len(rel), k))))
    return float(np.mean(recalls)), float(np.mean(ndcgs))


def test_integer_recommendations_match_text_relevant_ids():
    got = recommendation_metrics(np.array([[1, 2, 3]]), [["1"]], 3, 3)
    assert got["recall_at_3"] == 1.0 and got["ndcg_at_3"] == 1.0
    recs = np.array([[5, 17, 2], [9, 4, 17]])
    relevant = [["17", "3"], ["4"]]
    got = recommendation_metrics(recs, relevant, 20, 3)
    recall, ndcg = _naive(recs, relevant, 3)
    assert got["recall_at_3"] == pytest.approx(recall) and recall == pytest.approx(0.75)
    assert got["ndcg_at_3"] == pytest.approx(ndcg)
    # text recommendations against integer (and integral float) held-out ids alike
    text = recommendation_metrics(recs.astype(str), [[17, 3.0], [np.int64(4)]], 20, 3)
    assert text["recall_at_3"] == pytest.approx(recall)
    assert text["ndcg_at_3"] == pytest.approx(ndcg)
    assert text["coverage_at_3"] == got["coverage_at_3"] == pytest.approx(5 / 20)


def test_same_typed_ids_score_as_before():
    recs = np.array([[3, 1, -1], [2, 0, 4]])
    relevant = [[1], [4, 0]]
    got = recommendation_metrics(recs, relevant, 5, 3)
    assert got["recall_at_3"] == pytest.approx(1.0)
    assert got["ndcg_at_3"] == pytest.approx(_naive([[3, 1, 99], [2, 0, 4]], relevant, 3)[1])
    assert got["coverage_at_3"] == pytest.approx(5 / 5)
    text = recommendation_metrics(np.array([["a", "b"], ["c", ""]]), [["b"], ["x"]], 4, 2)
    assert text["recall_at_2"] == pytest.approx(0.5) and text["coverage_at_2"] == 0.75


def test_one_item_named_two_ways_is_a_repeat():
    with pytest.raises(ValueError, match="repeat an item"):
        recommendation_metrics(np.array([[1, "1", 2]], dtype=object), [[1]], 3, 3)
