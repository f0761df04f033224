"""`dmlkit report` and `dmlkit explain`: a held-out set of one class, figures of an
earlier report in --png-dir, the run's metric in explanations, and one-epoch charts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()


def _train(root: Path, name: str, data: dict, epochs: int, normalize: bool = True) -> Path:
    from dmlkit.config import Config
    from dmlkit.training import train_run

    train_run(Config.from_dict({
        "name": name, "data": data,
        "model": {"name": "mlp", "dim": 4, "hidden": [8], "normalize": normalize},
        "loss": {"name": "triplet_margin", "margin": 0.2},
        "sampler": {"name": "m_per_class", "m": 2, "batch_size": 4},
        "training": {"epochs": epochs, "num_threads": 1, "progress": False}}), root / name,
        log=lambda *a: None)
    return root / name


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    """40 grey 8 x 8 images (1, 8, 8) of 4 classes."""
    root = tmp_path_factory.mktemp("rp10")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 10)
    x = (rng.normal(size=(40, 1, 8, 8)) + labels[:, None, None, None]).astype(np.float32)
    np.savez(root / "data.npz", x=x, labels=labels)
    return root / "data.npz"


@pytest.fixture(scope="module")
def one_class_run(data_file) -> Path:
    """A one-epoch run whose held-out set is the 10 items of class 3."""
    return _train(data_file.parent, "one", {
        "name": "npz", "path": str(data_file), "split": "classes",
        "train_classes": [0, 1, 2], "test_classes": [3]}, epochs=1)


@pytest.fixture(scope="module")
def unnormalized_run(data_file) -> Path:
    """A two-epoch run with unnormalized embeddings (model.normalize: false)."""
    return _train(data_file.parent, "raw", {"name": "npz", "path": str(data_file)},
                  epochs=2, normalize=False)


def _section(html: str, title: str) -> str:
    start = html.index(f"<h2>{title}")
    end = html.find("<h2>", start + 4)
    return html[start:] if end < 0 else html[start:end]


# a held-out set of one class -------------------------------------------------------------

def test_one_class_report_says_retrieval_is_trivial_and_why_no_confusions(one_class_run,
                                                                        tmp_path):
    out = tmp_path / "r.html"
    res = runner.invoke(app, ["report", str(one_class_run), "--out", str(out),
                              "--projection", "pca"])
    assert res.exit_code == 0, res.output
    html = out.read_text()
    retrieval = _section(html, "Held-out retrieval")
    assert "1.0000" in retrieval
    assert re.search(r'class="note[^"]*">[^<]*trivially 1\.0[^<]*one class', retrieval)
    confused = _section(html, "Most confused classes")
    assert "<table" not in confused
    assert re.search(r'class="note[^"]*">[^<]*no pair of classes', confused)
    assert "1 class" in confused


def test_render_explains_an_empty_confusions_list_and_keeps_a_full_one():
    from dmlkit.report.html import _confusions

    assert "<table" not in _confusions([], {}, 3) and "no pair of classes" in \
        _confusions([], {}, 3)
    table = _confusions([{"a": 0, "b": 1, "centroid_distance": 0.5}], {0: "x", 1: "y"}, 2)
    assert "<table" in table and "0.5000" in table and "no pair" not in table


def test_a_report_of_several_held_out_classes_has_no_trivial_note(data_file, tmp_path):
    from dmlkit.report import collect
    from dmlkit.report.html import render

    run = _train(tmp_path, "two", {"name": "npz", "path": str(data_file)}, epochs=1)
    html = render(collect(run, max_items=20, projection="pca"))
    assert "trivially" not in html and "no pair of classes" not in html


# figures of an earlier report in --png-dir -----------------------------------------------

def test_png_dir_drops_figures_this_report_does_not_write(one_class_run, tmp_path):
    figs = tmp_path / "figs"
    figs.mkdir()
    for name in ("roc_det.png", "scores.png", "mine.png", "notes.txt"):
        (figs / name).write_bytes(b"earlier")
    res = runner.invoke(app, ["report", str(one_class_run), "--out", str(tmp_path / "r.html"),
                              "--projection", "pca", "--png-dir", str(figs)])
    assert res.exit_code == 0, res.output
    left = sorted(p.name for p in figs.iterdir())
    assert left == ["curves.png", "learning_rate.png", "map.png", "mine.png", "notes.txt",
                    "per_class.png"]
    assert (figs / "mine.png").read_bytes() == b"earlier"  # not one of dmlkit's figures
    assert "roc_det.png" in res.stderr and "scores.png" in res.stderr


def test_stale_figures_are_only_known_names_this_report_skips(tmp_path):
    from dmlkit.report.figures import FIGURES, stale_figures

    data = {"history": [], "verification": {"skipped": "one class"}}
    for name in (*FIGURES, "other.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(tmp_path / "other.png")
    got = sorted(p.name for p in stale_figures(data, tmp_path))
    assert got == ["curves.png", "learning_rate.png", "roc_det.png", "scores.png"]
    assert stale_figures(data, tmp_path / "missing") == []


# the run's metric in explanations ---------------------------------------------------------

def test_nearest_prototypes_by_euclidean_distance():
    from dmlkit.explain import nearest_prototypes

    z = torch.tensor([[10.0, 0.0], [10.0, 0.0], [0.5, 0.5], [0.5, 0.5]])
    labels = torch.tensor([0, 0, 1, 1])
    item = torch.tensor([1.0, 0.0])
    cos = nearest_prototypes(nn.Identity(), item, None, labels, k=2, ref_embeddings=z)
    assert [p["label"] for p in cos] == [0, 1]
    euc = nearest_prototypes(nn.Identity(), item, None, labels, k=2, ref_embeddings=z,
                             metric="euclidean")
    assert [p["label"] for p in euc] == [1, 0]
    assert euc[0]["distance"] == pytest.approx(float(np.hypot(0.5, 0.5)))
    assert euc[1]["distance"] == pytest.approx(9.0)
    with pytest.raises(ValueError, match="metric must be"):
        nearest_prototypes(nn.Identity(), item, None, labels, ref_embeddings=z, metric="dot")


def _explain(run: Path, out: Path, *extra: str):
    return runner.invoke(app, ["explain", str(run), "--a", "heldout:0", "--b", "heldout:5",
                               "--out", str(out), "--steps", "4", *extra])


def test_explain_uses_the_runs_euclidean_metric_by_default(unnormalized_run, tmp_path):
    from dmlkit.explain import nearest_prototypes, occlusion, similarity
    from dmlkit.runs import build_splits, embed, load_run

    res = _explain(unnormalized_run, tmp_path / "ex")
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "ex" / "explain.json").read_text())
    run = load_run(unnormalized_run)
    train, heldout = build_splits(run.config)
    xa, xb = heldout.x[0], heldout.x[5]
    with torch.no_grad():
        want = float(similarity(run.model, xa[None], xb[None], "euclidean"))
    assert got["metric"] == "euclidean"
    assert got["similarity"] == pytest.approx(want, rel=1e-4, abs=1e-5)
    assert "euclidean distance of heldout:0" in res.stdout
    occ = occlusion(run.model, xa, xb, patch=2, stride=1, metric="euclidean")
    np.testing.assert_allclose(np.load(tmp_path / "ex" / "a_occlusion.npy"), occ.numpy(),
                               rtol=1e-4, atol=1e-5)
    ref, _ = embed(run.model, train.x)
    near = nearest_prototypes(run.model, xa, None, train.labels, ref_embeddings=ref,
                              metric="euclidean")
    assert [p["label"] for p in got["nearest_training_prototypes"]["a"]] == \
        [p["label"] for p in near]
    near_line = next(line for line in res.stdout.splitlines() if line.startswith("a: near"))
    assert re.fullmatch(r"a: nearest training class centroids: (class \d \(distance [\d.]+\)"
                        r"(, )?)+", near_line), near_line
    assert got["euclidean_distance"] == pytest.approx((-want) ** 0.5, rel=1e-3)


def test_explain_metric_option_picks_cosine_and_refuses_others(unnormalized_run, tmp_path):
    from dmlkit.explain import occlusion
    from dmlkit.runs import build_splits, load_run

    res = _explain(unnormalized_run, tmp_path / "ex", "--metric", "cosine")
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "ex" / "explain.json").read_text())
    assert got["metric"] == "cosine" and got["similarity"] == got["cosine_similarity"]
    assert "cosine similarity of heldout:0" in res.stdout
    run = load_run(unnormalized_run)
    _, heldout = build_splits(run.config)
    occ = occlusion(run.model, heldout.x[0], heldout.x[5], metric="cosine")
    np.testing.assert_allclose(np.load(tmp_path / "ex" / "a_occlusion.npy"), occ.numpy(),
                               rtol=1e-4, atol=1e-5)
    res = _explain(unnormalized_run, tmp_path / "bad", "--metric", "dot")
    assert res.exit_code == 1 and "--metric" in res.stderr and "euclidean" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


# one-epoch charts ----------------------------------------------------------------------

def test_a_single_point_is_drawn_in_the_middle_of_its_chart():
    from dmlkit.report.svg import PAD, H, W, lines

    out = lines({"learning rate": ([1.0], [0.003])}, "learning rate", "epoch", "lr")
    (cx, cy), = [(float(a), float(b)) for a, b in
                 re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)"', out)]
    assert cx == pytest.approx((PAD + W - 10) / 2, abs=1)
    top = 20 + 14  # below the legend's row
    assert cy == pytest.approx((H - PAD + top) / 2, abs=1)
    assert "0.003" in re.sub(r"<title>.*?</title>", "", out)  # the value, as text


def test_one_epoch_report_charts_show_their_point(one_class_run, tmp_path):
    from dmlkit.report import collect
    from dmlkit.report.html import _curves
    from dmlkit.report.svg import PAD, W

    data = collect(one_class_run, max_items=20, projection="pca")
    assert len(data["history"]) == 1
    html = _curves(data["history"])
    xs = [float(x) for x in re.findall(r'<circle cx="([\d.]+)"', html)]
    assert len(xs) == 2 and all(abs(x - (PAD + W - 10) / 2) < 1 for x in xs)


def test_one_epoch_png_learning_rate_shows_its_point(one_class_run, tmp_path):
    import matplotlib.image

    from dmlkit.report import collect, write_figures
    from dmlkit.report.figures import planned_figures

    data = collect(one_class_run, max_items=20, projection="pca")
    written = write_figures(data, tmp_path)
    assert [p.name for p in written] == planned_figures(data)
    img = matplotlib.image.imread(tmp_path / "learning_rate.png")[..., :3]
    blue = np.abs(img - np.array([0x1F, 0x77, 0xB4]) / 255).max(-1) < 0.1
    assert blue.sum() > 10
