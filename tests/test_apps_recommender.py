"""Collaborative metric learning, interaction files and recommendation metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dmlkit.apps import CMLRecommender
from dmlkit.data.interactions import leave_last_out, read_interactions
from dmlkit.evaluation.recommendation import recommendation_metrics


def planted(n_users=40, n_items=30, per_user=8, seed=0):
    """Two communities: even users like items 0..14, odd users items 15..29."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        pool = np.arange(15) + (15 if u % 2 else 0)
        for i in rng.choice(pool, per_user, replace=False):
            users.append(f"u{u}")
            items.append(f"i{i}")
    return np.array(users), np.array(items)


def order_of_sorted_ids():
    """Item numbers in the order of their sorted string ids (the order fit expects)."""
    return [int(s[1:]) for s in np.sort([f"i{i}" for i in range(30)])]


def test_read_interactions_formats(tmp_path):
    (tmp_path / "a.csv").write_text("user,item,rating,timestamp\nalice,x,5,10\nbob,y,3,5\n")
    (tmp_path / "b.csv").write_text("1,7\n2,8\n")
    (tmp_path / "c.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n")
    a = read_interactions(tmp_path / "a.csv")
    assert a.users.tolist() == ["alice", "bob"] and a.ratings.tolist() == [5, 3]
    b = read_interactions(tmp_path / "b.csv")
    assert b.items.tolist() == ["7", "8"] and np.isnan(b.timestamps).all()
    c = read_interactions(tmp_path / "c.inter")
    assert c.items.tolist() == ["242"] and c.timestamps[0] == 881250949
    assert len(read_interactions(tmp_path / "a.csv", min_rating=4)) == 1
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty"):
        read_interactions(tmp_path / "empty.csv")
    (tmp_path / "ragged.csv").write_text("user,item\n1,2\n3\n")
    with pytest.raises(ValueError, match="line 3"):
        read_interactions(tmp_path / "ragged.csv")
    with pytest.raises(FileNotFoundError):
        read_interactions(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="timestamp"):
        leave_last_out(b)


def test_leave_last_out_by_timestamp(tmp_path):
    (tmp_path / "t.csv").write_text(
        "user,item,rating,timestamp\na,1,1,30\na,2,1,10\na,3,1,20\nb,4,1,5\nc,5,1,1\nc,6,1,1\n")
    train, test = leave_last_out(read_interactions(tmp_path / "t.csv"))
    held_out = sorted(zip(test.users, test.items, strict=True))
    assert held_out == [("a", "1"), ("c", "6")]  # ties: file order
    assert sorted(train.items.tolist()) == ["2", "3", "4", "5"]  # b has one item: kept whole


def test_recommendation_metrics_by_hand():
    rec = np.array([["a", "b", "c"], ["c", "d", "e"], ["x", "y", "z"]])
    m = recommendation_metrics(rec, [["b"], ["e", "c"], ["q"]], n_items=10, k=3)
    ndcg_u1 = 1 / math.log2(3)
    ndcg_u2 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert m["recall_at_3"] == pytest.approx((1 + 1 + 0) / 3)
    assert m["ndcg_at_3"] == pytest.approx((ndcg_u1 + ndcg_u2 + 0) / 3)
    assert m["coverage_at_3"] == pytest.approx(8 / 10)  # a b c d e x y z
    with pytest.raises(ValueError, match="k=4 but recommended holds 3 items per user"):
        recommendation_metrics(rec, [["b"]] * 3, 10, k=4)


def test_cml_loss_equals_loop_reference():
    model = CMLRecommender(margin=0.7)
    gen = torch.Generator().manual_seed(0)
    ue, ie = torch.nn.Embedding(5, 3), torch.nn.Embedding(9, 3)
    batch = torch.tensor([[0, 1], [2, 3], [4, 8]])
    neg = torch.randint(9, (3, 4), generator=gen)
    got = model._loss(ue, ie, batch, neg, n_items=9)
    total = 0.0
    for b in range(3):
        u = ue.weight[batch[b, 0]]
        dp = float(((u - ie.weight[batch[b, 1]]) ** 2).sum().detach())
        dn = [float(((u - ie.weight[k]) ** 2).sum().detach()) for k in neg[b]]
        m = sum(0.7 + dp - d > 0 for d in dn)
        w = math.log(1 + math.floor(9 * m / 4))
        total += w * max(0.0, 0.7 + dp - min(dn))
    assert float(got) == pytest.approx(total / 3, rel=1e-5)


def test_cml_learns_communities_and_keeps_the_norm_constraint():
    users, items = planted()
    model = CMLRecommender(dim=8, epochs=30, batch_size=32, lr=3e-2, n_negatives=10).fit(
        users, items)
    assert model.history_[-1] < model.history_[0]
    assert float(model.user_embeddings_.norm(dim=1).max()) <= 1.0 + 1e-5
    assert float(model.item_embeddings_.norm(dim=1).max()) <= 1.0 + 1e-5
    names = [f"u{u}" for u in range(40)]
    rec = model.recommend(names, k=5)
    same = [(int(i[1:]) >= 15) == (u % 2 == 1) for u in range(40) for i in rec[u]]
    # each user has 7 unseen items of their community among 22 unseen: chance is 0.32
    assert np.mean(same) > 0.7
    for u in range(40):
        assert not set(items[users == names[u]]) & set(rec[u])
    with_seen = model.recommend(["u0"], k=30, exclude_seen=False)[0]
    assert set(with_seen) == set(np.unique(items))


def test_cml_schedule_decays_the_rate_and_is_checked(monkeypatch):
    users, items = planted()
    rates: list[float] = []
    step = torch.optim.Adam.step

    def record(self, *a, **k):
        rates.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", record)
    CMLRecommender(dim=4, epochs=3, batch_size=64, lr=1e-2, schedule="cosine").fit(users, items)
    assert rates[0] == pytest.approx(1e-2) and rates[-1] < 0.05 * rates[0]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))
    rates.clear()
    CMLRecommender(dim=4, epochs=2, batch_size=64, lr=1e-2, schedule="constant").fit(users, items)
    assert set(rates) == {1e-2}
    with pytest.raises(ValueError, match="schedule must be"):
        CMLRecommender(schedule="linear").fit(users, items)


def test_cml_errors_persistence_and_cold_start(tmp_path):
    users, items = planted()
    feats = np.zeros((30, 3), dtype=np.float32)
    feats[:15, 0] = 1
    feats[15:, 1] = 1
    feats[:, 2] = np.linspace(0, 0.1, 30)
    model = CMLRecommender(dim=8, epochs=30, batch_size=32, lr=3e-2, n_negatives=10)
    model.fit(users, items, item_features=feats[order_of_sorted_ids()])
    with pytest.raises(ValueError, match="unknown user id 'nobody'"):
        model.recommend(["nobody"])
    with pytest.raises(ValueError, match="users and items differ"):
        CMLRecommender().fit(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="no interactions"):
        CMLRecommender().fit([], [])
    with pytest.raises(ValueError, match="NaN"):
        CMLRecommender().fit([1.0, np.nan], [1, 2])
    with pytest.raises(ValueError, match="item_features must be"):
        CMLRecommender().fit(users, items, item_features=np.zeros((3, 2)))
    model.save(tmp_path / "cml")
    again = CMLRecommender.load(tmp_path / "cml")
    np.testing.assert_array_equal(again.recommend(["u0", "u3"], 5),
                                  model.recommend(["u0", "u3"], 5))
    # a cold-start item with community-A features is recommended to community-A users
    again.add_items(["new"], np.array([[1.0, 0.0, 0.05]], dtype=np.float32))
    a_rank = list(again.recommend(["u0"], k=30)[0]).index("new")
    b_rank = list(again.recommend(["u1"], k=30)[0]).index("new")
    assert (again.recommend(["u0"], k=30)[0] == "").sum() == 7  # 31 items, 8 seen, 23 left
    assert a_rank < b_rank
    with pytest.raises(ValueError, match="already exists"):
        again.add_items(["new"], np.zeros((1, 3), dtype=np.float32))
    (tmp_path / "cml" / "item_embeddings.npy").write_bytes(b"junk")
    with pytest.raises(ValueError):
        CMLRecommender.load(tmp_path / "cml")


def test_cli_recommend_train_evaluate_top(tmp_path):
    import json

    from typer.testing import CliRunner

    from dmlkit.cli.main import app

    users, items = planted()
    rows = [f"{u},{i},1,{t}" for t, (u, i) in enumerate(zip(users, items, strict=True))]
    (tmp_path / "data.csv").write_text("user,item,rating,timestamp\n" + "\n".join(rows) + "\n")
    runner = CliRunner()
    res = runner.invoke(app, ["recommend", "train", str(tmp_path / "data.csv"), "--out",
                              str(tmp_path / "m"), "--epochs", "3", "--dim", "4"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["recommend", "evaluate", str(tmp_path / "m"), "--data",
                              str(tmp_path / "data.csv"), "-k", "5"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["users"] == 40 and 0.0 <= metrics["recall_at_5"] <= 1.0
    res = runner.invoke(app, ["recommend", "top", str(tmp_path / "m"), "-u", "u0", "-k", "3"])
    assert res.exit_code == 0 and res.output.startswith("u0\t")
    assert len(res.output.split("\t")[1].split()) == 3
    res = runner.invoke(app, ["recommend", "top", str(tmp_path / "m"), "-u", "ghost"])
    assert res.exit_code == 1 and "unknown user id 'ghost'" in res.output
    (tmp_path / "empty.csv").write_text("")
    res = runner.invoke(app, ["recommend", "train", str(tmp_path / "empty.csv"), "--out",
                              str(tmp_path / "m2")])
    assert res.exit_code == 1 and "empty" in res.output and not (tmp_path / "m2").exists()


def test_numeric_ids_keep_their_type_and_feature_dicts_follow_them():
    users, items = [1, 1, 2, 2, 3], [9, 10, 10, 100, 9]  # "100" < "9" as strings
    feats = {9: [1.0, 0.0], 10: [0.0, 1.0], 100: [1.0, 1.0]}
    rec = CMLRecommender(dim=4, epochs=2).fit(users, items, item_features=feats)
    as_rows = CMLRecommender(dim=4, epochs=2).fit(
        users, items, item_features=np.array([feats[i] for i in np.unique(items)]))
    torch.testing.assert_close(rec.item_embeddings_, as_rows.item_embeddings_)
    np.testing.assert_array_equal(rec.item_ids_, [9, 10, 100])
    top = rec.recommend([1], k=3)
    assert top.dtype.kind == "i" and top[0, 0] == 100 and top[0, 1] == -1  # padded
    with pytest.raises(ValueError, match="2 columns"):
        rec.add_items([7], np.ones((1, 3)))
    with pytest.raises(TypeError, match="one type"):
        rec.add_items(["new"], np.ones((1, 2)))
    rec.add_items([7], np.ones((1, 2)))
    assert 7 in rec.item_ids_.tolist()
