"""The tools around a run on hierarchical ``(n, L)`` labels: ``dmlkit report`` and
``dmlkit explain`` treat each leaf row as a class (named ``"super/sub"``), the parts that
need ``(n,)`` class ids (class folds of crossval / tune, the offline_hard_negative
sampler) refuse up front with one error line, and ``--full-ranking`` reaches the
per-level metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_hierarchical_runs import HIER_RUN, _hier
from torch import nn
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.data.class_folds import class_folds
from dmlkit.data.dataset import ArrayDataset
from dmlkit.evaluation import evaluate_embeddings, retrieval_metrics
from dmlkit.explain import nearest_prototypes

runner = CliRunner()

# the run config and labels of the hierarchical run tests: leaves (super, sub) whose sub
# ids repeat under every super-class, so a per-column grouping would merge leaves
RUN = HIER_RUN


@pytest.fixture(scope="module")
def hier(tmp_path_factory):
    """``(root, config path, run dir)`` of a one-epoch run on 120 items, 12 leaves."""
    root = tmp_path_factory.mktemp("hier_tools")
    labels = _hier()
    x = np.random.default_rng(0).normal(size=(len(labels), 8)).astype(np.float32)
    x += labels[:, :1] + 0.5 * labels[:, 1:]  # some structure to find
    np.savez(root / "hier.npz", x=x, labels=labels)
    config = root / "hier.yaml"
    config.write_text(RUN.format(path=root / "hier.npz"))
    out = root / "run"
    res = runner.invoke(app, ["train", str(config), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    return root, config, out


def test_report_of_a_hierarchical_run_is_per_leaf_row(hier, tmp_path):
    from dmlkit.report import collect

    _, _, run = hier
    res = runner.invoke(app, ["report", str(run), "--projection", "pca", "-o",
                              str(tmp_path / "r.html"), "--png-dir", str(tmp_path / "png")])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "r.html").read_text()
    for s in range(3):
        for c in range(4):
            assert f"<th>{s}/{c}</th>" in html  # a per-class row per leaf, named by its row
    assert (tmp_path / "png" / "per_class.png").is_file()
    data = collect(run, projection="pca")
    assert sorted(data["class_names"].values()) == [f"{s}/{c}" for s in range(3)
                                                    for c in range(4)]
    assert len(data["per_class"]) == 12 and not any(data["map"]["unseen"])
    # the leaf rows' per-class metrics are retrieval's per leaf row
    names = {v: k for k, v in data["class_names"].items()}
    for v in data["per_class"].values():
        assert v["learned"]["items"] == 5  # 10 per leaf, half held out
        assert 0.0 <= v["learned"]["map_at_r"] <= 1.0
    assert names["2/3"] == 11  # ids follow the sorted rows
    for g in data["gallery"]:  # a neighbour is right when its whole row agrees
        for n in g["neighbours"]:
            assert n["correct"] == (n["label"] == g["label"])


def test_explain_on_a_hierarchical_run_names_leaf_rows(hier, tmp_path):
    _, _, run = hier
    res = runner.invoke(app, ["explain", str(run), "--a", "heldout:0", "--b", "heldout:1",
                              "--steps", "4", "-o", str(tmp_path / "ex")])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    summary = json.loads((tmp_path / "ex" / "explain.json").read_text())
    assert summary["a"].startswith("heldout:0 (class ") and "/" in summary["a"]
    protos = summary["nearest_training_prototypes"]["a"]
    assert len(protos) == 3
    for p in protos:
        assert len(p["label"]) == 2 and p["name"] == f"{p['label'][0]}/{p['label'][1]}"
        assert p["count"] == 5  # the training items of that leaf
    assert "nearest training class centroids: class " in res.output


def test_nearest_prototypes_groups_by_leaf_row():
    labels = torch.as_tensor(_hier(2, 3, 4))  # (24, 2): leaves (s, c)
    z = torch.randn(24, 5, generator=torch.Generator().manual_seed(0))
    item = torch.randn(5, generator=torch.Generator().manual_seed(1))
    got = nearest_prototypes(nn.Identity(), item, None, labels, k=6, ref_embeddings=z)
    # naive reference: one centroid per distinct row
    want = []
    for row in sorted({tuple(r) for r in labels.tolist()}):
        members = (labels == torch.tensor(row)).all(dim=1)
        centre = z[members].mean(0)
        cos = float(torch.nn.functional.cosine_similarity(centre, item, dim=0))
        want.append((cos, list(row), int(members.sum())))
    want.sort(key=lambda t: -t[0])
    assert [p["label"] for p in got] == [w[1] for w in want]
    assert [p["count"] for p in got] == [w[2] for w in want]
    np.testing.assert_allclose([p["cosine"] for p in got], [w[0] for w in want], atol=1e-5)
    flat = nearest_prototypes(nn.Identity(), item, None, labels[:, 1], k=2, ref_embeddings=z)
    assert all(isinstance(p["label"], int) and p["count"] == 8 for p in flat)


def test_class_folds_refuse_hierarchical_classes():
    data = ArrayDataset(np.zeros((24, 2), np.float32), _hier(2, 3, 4))
    with pytest.raises(ValueError, match=r"need \(n,\) class ids.*training.val_fraction"):
        class_folds(data.classes, 2)


def test_crossval_and_tune_refuse_hierarchical_labels_before_training(hier, tmp_path):
    root, config, _ = hier
    res = runner.invoke(app, ["crossval", str(config)])
    assert res.exit_code == 1
    assert res.output.strip().startswith("error: class folds") and "Traceback" not in res.output
    assert "epoch" not in res.output  # refused before any fold trained
    tune = root / "tune.yaml"
    tune.write_text(config.read_text() + "tune:\n  folds: 2\n  space:\n"
                    "    optimizer.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n")
    out = tmp_path / "tune"
    res = runner.invoke(app, ["tune", str(tune), "-n", "1", "-o", str(out)])
    assert res.exit_code == 1
    assert "error: class folds" in res.output and "(n,) class ids" in res.output
    assert "trial" not in res.output and not out.exists()  # no study, no folder


def test_offline_hard_negative_refuses_hierarchical_labels_up_front(hier, tmp_path):
    _, config, _ = hier
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(config), "--out", str(out), "--no-progress",
                              "--set", "sampler={name: offline_hard_negative, batch_size: 24}",
                              "--set", "loss=triplet_margin"])
    assert res.exit_code == 1
    assert "error: sampler offline_hard_negative mines by (n,) class ids" in res.output
    assert "epoch" not in res.output  # refused before the first epoch
    assert not out.exists()  # and no half-made run directory left behind


def test_full_ranking_adds_map_and_mrr_at_every_level():
    labels = _hier(2, 3, 4)
    x = np.random.default_rng(1).normal(size=(len(labels), 4)).astype(np.float32)
    got = evaluate_embeddings(x, labels, sections=("retrieval",), k=(1, 2), full_ranking=True)
    hier = got["hierarchical"]
    for level in range(2):
        want = retrieval_metrics(x, labels[:, : level + 1], k=(1, 2),
                                 average_precision=True, reciprocal_rank=True)
        for name in ("mean_average_precision", "mean_reciprocal_rank"):
            assert hier[f"{name}_level_{level}"] == pytest.approx(want[name])
    assert hier["mean_average_precision_level_1"] == pytest.approx(
        got["retrieval"]["mean_average_precision"])  # the leaf level is retrieval's
    plain = evaluate_embeddings(x, labels, sections=("retrieval",), k=(1, 2))
    assert not any("mean_average_precision" in key for key in plain["hierarchical"])
