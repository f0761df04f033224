"""`dmlkit report` / `dmlkit explain` and the explain API: a checkpoint's kept best
weights, a damaged metrics.json, one-row and grey item files, the EER marker, long class
names, the occlusion window actually used, and refused API inputs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import train_tiny_images
from torch import nn
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A 2-epoch MLP run on 8 x 8 grey images (1, 8, 8) of 4 classes."""
    return train_tiny_images(tmp_path_factory.mktemp("rx9"), 1, 2)


def _copy(run_dir: Path, to: Path) -> Path:
    shutil.copytree(run_dir, to)
    return to


# 1. a checkpoint's kept best weights stand in for model.pt ----------------------------------

def test_a_checkpoint_with_best_weights_stands_in_with_them(run_dir, tmp_path):
    from dmlkit.report import collect
    from dmlkit.runs import load_run

    run = _copy(run_dir, tmp_path / "run")
    (run / "model.pt").unlink()
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    best = {k: v * 0.5 + 1.0 for k, v in state["model"].items()}  # not the last epoch's
    state["best_state"], state["best_epoch"] = {"model": best, "loss": {}}, 1
    torch.save(state, run / "checkpoint.pt")
    loaded = load_run(run)
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, best[k]), k
    assert "epoch 2, its last" in loaded.weights and "weights of epoch 1" in loaded.weights
    notes = collect(run, max_items=20, projection="pca")["notes"]
    assert any("the weights of epoch 1, the best by validation MAP@R" in n for n in notes)
    res = runner.invoke(app, ["explain", str(run), "--a", "heldout:0", "--b", "heldout:1",
                              "--out", str(tmp_path / "ex")])
    assert res.exit_code == 0, res.output
    assert "weights of epoch 1" in res.stderr
    assert "epoch 1" in json.loads((tmp_path / "ex" / "explain.json").read_text())["weights"]


def test_a_checkpoint_without_best_weights_stands_in_with_its_last(run_dir, tmp_path):
    from dmlkit.runs import load_run

    run = _copy(run_dir, tmp_path / "run")
    (run / "model.pt").unlink()
    last = torch.load(run / "checkpoint.pt", weights_only=False)["model"]
    loaded = load_run(run)
    assert loaded.weights == "checkpoint of epoch 2, its last"
    assert all(torch.equal(v, last[k]) for k, v in loaded.model.state_dict().items())


# 2. explain never reads metrics.json ------------------------------------------------------

def test_explain_works_on_a_run_with_a_damaged_metrics_file(run_dir, tmp_path):
    run = _copy(run_dir, tmp_path / "run")
    (run / "metrics.json").write_text('{"map_at_r": 0.')
    res = runner.invoke(app, ["explain", str(run), "--a", "heldout:0", "--b", "heldout:1",
                              "--out", str(tmp_path / "ex")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ex" / "explain.json").is_file()
    res = runner.invoke(app, ["report", str(run), "--out", str(tmp_path / "r.html"),
                              "--projection", "pca"])
    assert res.exit_code == 1 and "metrics.json is not valid JSON" in res.stderr


# 3. a one-row item file is its one item ---------------------------------------------------

def test_a_one_row_item_file_is_its_one_item(tmp_path):
    from dmlkit.cli.report import _item
    from dmlkit.runs.queries import InputSpec

    spec = InputSpec((1, 8, 8), "float32", 0.0, 1.0)
    x = np.random.default_rng(0).random((1, 64)).astype(np.float32)
    np.save(tmp_path / "row1.npy", x)
    item, name = _item(None, str(tmp_path / "row1.npy"), spec)
    assert tuple(item.shape) == (1, 8, 8) and name == str(tmp_path / "row1.npy")
    assert np.allclose(item.numpy().reshape(-1), x[0])
    np.save(tmp_path / "two.npy", np.concatenate([x, x]))
    with pytest.raises(ValueError, match=r"holds 2 items; .* N in 0\.\.1 "):
        _item(None, str(tmp_path / "two.npy"), spec)


# 4. a grey (H, W) image of any size --------------------------------------------------------

def test_a_grey_image_of_any_size_fits_a_model_that_takes_any_size():
    from dmlkit.runs.queries import InputSpec, check_input_shape, input_fit

    spec = InputSpec((1, 28, 28), "float32", 0.0, 1.0, any_size=True)
    assert input_fit((32, 32), spec) == (1, 32, 32)
    assert input_fit((1, 32, 32), spec) == (1, 32, 32)
    assert input_fit((28, 28), spec) == (1, 28, 28)
    assert input_fit((3, 32, 32), spec) is None
    rgb = InputSpec((3, 28, 28), "float32", 0.0, 1.0, any_size=True)
    assert input_fit((32, 32), rgb) is None
    fixed = InputSpec((1, 28, 28), "float32", 0.0, 1.0)
    with pytest.raises(ValueError, match="inputs of shape"):
        check_input_shape((32, 32), fixed, "x")


# 5. the EER threshold on the HTML score histogram -----------------------------------------

def test_the_html_score_histogram_marks_the_eer_threshold():
    from dmlkit.report.html import _verification

    ver = {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 0.8, 1.0], "fnr": [1.0, 0.2, 0.0],
           "eer": 0.2, "threshold": 0.5, "bins": [0.0, 0.5, 1.0], "same_hist": [1, 3],
           "diff_hist": [3, 1], "score": "cosine similarity", "pairs": 8, "all_pairs": 8}
    html = _verification(ver)
    hist = html[html.rindex("<svg"):]
    mark = re.search(r'<line class="mark" x1="([\d.]+)" y1="10" x2="([\d.]+)"', hist)
    assert mark and mark[1] == mark[2]
    assert abs(float(mark[1]) - 257) < 1 and "EER threshold 0.5" in hist


# 6. long class names stay apart, the bar legend clear of the bars --------------------------

def test_long_class_names_keep_their_ends():
    from dmlkit.report.figures import _cut
    from dmlkit.report.svg import scatter, short_name

    names = [f"class_with_a_very_long_name_{i}" for i in (17, 18)]
    assert len({short_name(n, 20) for n in names}) == 2
    assert short_name(names[0], 20).startswith("class_with")
    assert short_name(names[0], 20).endswith("name_17") and len(short_name(names[0], 20)) == 20
    assert short_name("short", 20) == "short"
    assert len({_cut(n) for n in names}) == 2
    svg = scatter([0, 1], [0, 1], [0, 1], ["a", "b"], [False, False], "t",
                  {0: names[0], 1: names[1]})
    shown = re.findall(r'font-size="\d+">([^<]+)<title>', svg)
    assert len(set(shown)) == 2


def test_the_bar_legend_is_clear_of_the_bars():
    from dmlkit.report.svg import bars

    svg = bars({"learned MAP@R": [1.0, 0.5], "raw MAP@R": [0.9, 0.2]}, ["0", "1"], "t", "m")
    tops = [float(y) for y in re.findall(r'<rect x="[\d.]+" y="([\d.]+)"', svg)[1:]]
    legend = [float(y) for y in re.findall(r'<text x="52" y="([\d.]+)"', svg)]
    assert len(legend) == 2 and min(tops) > max(legend) + 3


# 7. the occlusion window actually used ---------------------------------------------------

def test_explain_records_the_occlusion_window_it_used(run_dir, tmp_path):
    res = runner.invoke(app, ["explain", str(run_dir), "--a", "heldout:0", "--b",
                              "heldout:1", "--patch", "100", "--out", str(tmp_path / "ex")])
    assert res.exit_code == 0, res.output
    window = json.loads((tmp_path / "ex" / "explain.json").read_text())["occlusion"]
    assert window == {"patch": 8, "stride": 1, "requested": {"patch": 100, "stride": 1}}
    assert res.stderr.count("occlusion patch 100") == 1
    res = runner.invoke(app, ["explain", str(run_dir), "--a", "heldout:0", "--b",
                              "heldout:1", "--patch", "3", "--out", str(tmp_path / "ex")])
    assert res.exit_code == 0 and "occlusion patch" not in res.stderr
    assert json.loads((tmp_path / "ex" / "explain.json").read_text())["occlusion"] == {
        "patch": 3, "stride": 1}


def test_occlusion_window_cuts_the_patch_to_the_input():
    from dmlkit.explain.attribution import occlusion_window

    assert occlusion_window((1, 8, 8), 100, 1) == (8, 1)
    assert occlusion_window((8, 16), 12, 10) == ((8, 12), 10)
    assert occlusion_window((64,), 100, 50) == (64, 50)
    assert occlusion_window((1, 8, 8), 2, 1) == (2, 1)


# 8. the explain API refuses what it cannot explain ---------------------------------------

def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3))


def test_nearest_prototypes_refuses_bad_k_and_fractional_labels():
    from dmlkit.explain import nearest_prototypes

    m = _model()
    x = torch.randn(20, 4)
    y = torch.arange(20) % 10
    for k in (-1, 0, 1.5, True, "2"):
        with pytest.raises(ValueError, match="k must be an integer >= 1"):
            nearest_prototypes(m, x[0], x, y, k=k)
    assert len(nearest_prototypes(m, x[0], x, y, k=np.int64(2))) == 2
    with pytest.raises(ValueError, match="labels must be integer class ids"):
        nearest_prototypes(m, x[0], x, y.double() + 0.5)
    whole = nearest_prototypes(m, x[0], x, y.double(), k=3)
    assert whole == nearest_prototypes(m, x[0], x, y, k=3)


def test_attributions_refuse_non_finite_inputs():
    from dmlkit.explain import integrated_gradients, occlusion

    m = _model()
    a, b = torch.randn(4), torch.randn(4)
    bad = a.clone()
    bad[1] = float("nan")
    for fn in (integrated_gradients, occlusion):
        with pytest.raises(ValueError, match="^a holds NaN or infinite values"):
            fn(m, bad, b)
        with pytest.raises(ValueError, match="^b holds NaN or infinite values"):
            fn(m, a, torch.full((4,), float("inf")))
        assert torch.isfinite(fn(m, a, b)).all()
