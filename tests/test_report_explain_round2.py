"""`dmlkit report` / `dmlkit explain`: an edited data section is noted in report.html and
explain.json (and warned of once), the PNG map's colours stay distinct past ten classes,
colour inputs are drawn in colour beside their heatmaps, explain.json states its maps'
shapes and signs, and the report names the epoch whose weights it evaluates."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import SMALL_MLP, train_small, train_tiny_images
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()
DIFFERS = "the held-out split differs"


def drawn_figures(monkeypatch: pytest.MonkeyPatch) -> dict:
    """``{file name: matplotlib Figure}`` of every figure saved from now on."""
    from matplotlib.figure import Figure

    drawn: dict = {}
    save = Figure.savefig

    def keep(fig, path, *args, **kwargs):  # noqa: ANN001, ANN202
        drawn[Path(path).name] = fig
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return drawn


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small(tmp_path_factory.mktemp("r2"), SMALL_MLP)


def _edited(run_dir: Path, dest: Path, **data: object) -> Path:
    """A copy of ``run_dir`` whose config.yaml's data section has ``data`` set."""
    shutil.copytree(run_dir, dest)
    config = yaml.safe_load((dest / "config.yaml").read_text())
    config["data"].update(data)
    (dest / "config.yaml").write_text(yaml.safe_dump(config))
    return dest


def _drift(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if DIFFERS in str(w.message)]


# 1. an edited data section: a note in report.html and explain.json, warned of once --------

def test_report_of_an_edited_run_notes_the_rebuilt_split(run_dir: Path, tmp_path: Path) -> None:
    edited = _edited(run_dir, tmp_path / "edited", seed=5)
    out = tmp_path / "r.html"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = runner.invoke(app, ["report", str(edited), "--out", str(out),
                                  "--projection", "pca"])
    assert res.exit_code == 0, res.output
    assert len(_drift(caught)) == 1, [str(w.message) for w in caught]  # said once
    assert DIFFERS not in res.stderr  # (not again as a note: the warning says it)
    html = out.read_text()
    assert f"Note: {edited}: {DIFFERS}" in html
    assert "held-out metrics table is the run&#x27;s own (metrics.json)" in html


def test_report_of_an_unedited_run_has_no_split_note(run_dir: Path, tmp_path: Path) -> None:
    from dmlkit.report import collect

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = collect(run_dir, projection="pca")
    assert not _drift(caught)
    assert data["warned"] == [] and not any(DIFFERS in n for n in data["notes"])


def test_explain_of_an_edited_run_records_the_rebuilt_split(run_dir: Path,
                                                            tmp_path: Path) -> None:
    edited = _edited(run_dir, tmp_path / "edited", seed=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = runner.invoke(app, ["explain", str(edited), "--a", "heldout:0", "--b",
                                  "heldout:1", "--out", str(tmp_path / "why"), "--steps", "4"])
    assert res.exit_code == 0, res.output
    assert len(_drift(caught)) == 1, [str(w.message) for w in caught]
    summary = json.loads((tmp_path / "why" / "explain.json").read_text())
    assert len(summary["notes"]) == 1 and summary["notes"][0].startswith(f"{edited}: {DIFFERS}")
    res = runner.invoke(app, ["explain", str(run_dir), "--a", "heldout:0", "--b",
                              "heldout:1", "--out", str(tmp_path / "why2"), "--steps", "4"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "why2" / "explain.json").read_text())["notes"] == []


# 2. the PNG map's colours are distinct past ten classes ----------------------------------

def test_png_map_gives_every_class_its_own_colour(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.colors import to_rgb

    from dmlkit.report.figures import write_figures

    n = 14
    labels = [c for c in range(n) for _ in range(3)]
    rng = np.random.default_rng(0)
    data = {
        "class_names": {c: f"c{c}" for c in range(n)}, "history": [],
        "per_class": {c: {"learned": {"map_at_r": 0.5}, "raw": None} for c in range(n)},
        "verification": {"skipped": "one class"}, "sample": {},
        "map": {"method": "pca", "x": rng.normal(size=len(labels)).tolist(),
                "y": rng.normal(size=len(labels)).tolist(), "labels": labels,
                "items": list(range(len(labels))),
                "unseen": [c >= n - 2 for c in labels]},  # (two drawn as crosses)
    }
    drawn = drawn_figures(monkeypatch)
    write_figures(data, tmp_path)
    collections = drawn["map.png"].axes[0].collections
    assert len(collections) == n
    colours = {tuple(round(v, 3) for v in to_rgb(c.get_edgecolor()[0] if len(c.get_facecolor())
                                                 == 0 else c.get_facecolor()[0]))
               for c in collections}
    assert len(colours) == n, colours


def test_png_colours_are_the_html_maps() -> None:
    from dmlkit.report.figures import mpl_colour

    assert mpl_colour(0, 3) == pytest.approx((0x1F / 255, 0x77 / 255, 0xB4 / 255))
    assert len({tuple(round(v, 4) for v in mpl_colour(i, 25)) for i in range(25)}) == 25


# 3. colour inputs drawn in colour beside their heatmaps ----------------------------------

def _left_half_saturation(path: Path) -> int:
    """The largest channel spread (max - min of R, G, B) of a pixel in the left half of a
    PNG: 0 for a grey panel."""
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    left = rgb[:, : rgb.shape[1] // 2]
    return int((left.max(2) - left.min(2)).max())


def test_explain_heatmap_draws_an_rgb_input_in_colour(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from dmlkit.cli._explain_figures import display_input, heatmaps

    rgb = torch.zeros(3, 8, 8)
    rgb[0, :, :4] = 5.0  # left: red
    rgb[1, :, 4:] = 5.0  # right: green
    shown = display_input(rgb)
    assert shown.shape == (8, 8, 3) and shown.min() == 0.0 and shown.max() == 1.0
    assert tuple(shown[0, 0]) == (1.0, 0.0, 0.0) and tuple(shown[0, 7]) == (0.0, 1.0, 0.0)
    grey = torch.rand(1, 8, 8)
    assert display_input(grey).shape == (8, 8)
    maps = {"a_occlusion": torch.rand(8, 8), "b_occlusion": torch.rand(8, 8)}
    heatmaps(maps, rgb, grey, tmp_path)
    assert _left_half_saturation(tmp_path / "a_occlusion.png") > 150  # red and green
    assert _left_half_saturation(tmp_path / "b_occlusion.png") < 10  # grey, as before


# 4. explain.json states its maps' shapes and signs ---------------------------------------

@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-epoch MLP run on 8 x 8 colour images (3, 8, 8) of 4 classes."""
    return train_tiny_images(tmp_path_factory.mktemp("r2rgb"), 3, 1)


@pytest.mark.parametrize("which", ["grey", "rgb"])
def test_explain_json_states_shapes_and_signs(which: str, run_dir: Path, rgb_run: Path,
                                              tmp_path: Path) -> None:
    run = run_dir if which == "grey" else rgb_run
    out = tmp_path / "why"
    res = runner.invoke(app, ["explain", str(run), "--a", "heldout:0", "--b", "heldout:1",
                              "--out", str(out), "--steps", "8"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "explain.json").read_text())
    ig, occ = np.load(out / "a_integrated_gradients.npy"), np.load(out / "a_occlusion.npy")
    assert ig.shape == ((1, 8, 8) if which == "grey" else (3, 8, 8))
    assert occ.shape == (8, 8)
    said = summary["conventions"]
    assert f"the input's shape {ig.shape}" in said["integrated_gradients"]
    assert "a positive value raises the similarity" in said["integrated_gradients"]
    assert "has shape (8, 8)" in said["occlusion"]
    assert "a positive value is the (mean) drop in similarity" in said["occlusion"]
    assert "summed over channels" in said["heatmaps"]
    assert said["similarity"].startswith("the similarity explained is -d^2")
    # the signs as stated: the maps sum to the similarity's change from the all-zero input
    assert summary["completeness"]["a"]["sum"] == pytest.approx(float(ig.sum()), rel=1e-4)
    assert summary["similarity"] == pytest.approx(-summary["euclidean_distance"] ** 2, abs=1e-5)


def test_explain_conventions_of_cosine_and_1d_inputs() -> None:
    from dmlkit.cli._explain_figures import conventions

    said = conventions("cosine", (64,), gradients=False)
    assert "integrated_gradients" not in said
    assert "has shape (64,): one value per value" in said["occlusion"]
    assert said["similarity"].startswith("the similarity explained is the cosine")


# 5. the epoch whose weights are evaluated ------------------------------------------------

@pytest.fixture(scope="module")
def val_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = SMALL_MLP.replace("training: {epochs: 1,",
                               "training: {epochs: 2, val_classes: 0.3,")
    assert "val_classes" in config
    return train_small(tmp_path_factory.mktemp("r2val"), config)


def test_report_names_the_best_epoch_kept(val_run: Path, tmp_path: Path) -> None:
    from dmlkit.report import collect, render

    run = tmp_path / "run"
    shutil.copytree(val_run, run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert "best_epoch" in metrics["validation"]
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    metrics["validation"]["best_epoch"] = 1  # (epoch 1 kept, as model.pt then holds)
    (run / "metrics.json").write_text(json.dumps(metrics))
    data = collect(run, projection="pca")
    assert data["kept_epoch"] == 1
    kept = [n for n in data["notes"] if "weights of epoch 1 of 2" in n]
    assert len(kept) == 1 and "best by validation MAP@R" in kept[0]
    html = render(data)
    assert "Note: the run kept the weights of epoch 1 of 2" in html
    # marked on the loss and the validation curves
    assert html.count("<title>weights kept: epoch 1</title></line>") == 2
    res = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "r.html"),
                              "--projection", "pca"])
    assert res.exit_code == 0, res.output
    assert "note: the run kept the weights of epoch 1 of 2" in res.stderr


def test_report_of_a_run_whose_best_epoch_is_its_last_says_nothing_of_it(
        val_run: Path, tmp_path: Path) -> None:
    from dmlkit.report import collect

    run = tmp_path / "run"
    shutil.copytree(val_run, run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["validation"]["best_epoch"] = 2
    (run / "metrics.json").write_text(json.dumps(metrics))
    data = collect(run, projection="pca")
    assert data["kept_epoch"] == 2
    assert not any("kept the weights" in n for n in data["notes"])


def test_png_curves_mark_the_kept_epoch(val_run: Path, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("matplotlib")

    from dmlkit.report import collect, write_figures

    data = collect(val_run, projection="pca")
    data["kept_epoch"] = 1
    drawn = drawn_figures(monkeypatch)
    write_figures(data, tmp_path / "figs")
    labels = [line.get_label() for line in drawn["curves.png"].axes[0].lines]
    assert "weights kept: epoch 1" in labels
