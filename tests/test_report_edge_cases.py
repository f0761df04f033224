"""The run report on awkward data and options: classes with one held-out item, a single
held-out class, outputs that cannot be written, a wrong --projection, data that went
through JSON, many classes; and its charts' legends and axis names."""

from __future__ import annotations

import collections
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()

BASE = {
    "name": "edge",
    "model": {"name": "mlp", "dim": 4, "hidden": [8]},
    "training": {"epochs": 1, "num_threads": 1, "progress": False},
}


def _train(root: Path, data: dict) -> Path:
    from dmlkit.config import Config
    from dmlkit.training import train_run

    train_run(Config.from_dict({**BASE, "data": data}), root / "run", log=lambda *a: None)
    return root / "run"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("edge"),
                  {"name": "digits", "max_per_class": 8, "max_heldout_per_class": 6})


@pytest.fixture(scope="module")
def rare(run_dir) -> tuple[dict, int, dict]:
    """Report data of 20 held-out items among which some class has a single item."""
    from dmlkit.report import collect
    from dmlkit.runs import build_splits, load_run

    _, heldout = build_splits(load_run(run_dir).config)
    for seed in range(500):  # collect() draws its items with this generator
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(heldout.labels), size=20, replace=False))
        counts = collections.Counter(heldout.labels[rows].tolist())
        if 1 in counts.values():
            break
    data = collect(run_dir, max_items=20, projection="pca", seed=seed)
    return data, seed, counts


def _chart(html: str, title: str) -> str:
    at = html.index(f"<title>{title}")
    return html[html.rindex("<svg", 0, at) : html.index("</svg>", at)]


def test_per_class_counts_items_and_evaluable_queries(rare):
    data, _, counts = rare
    for c, n in counts.items():
        learned = data["per_class"][c]["learned"]
        assert learned["items"] == n
        assert learned["count"] == (n if n > 1 else 0)  # queries with a match
        assert math.isnan(learned["map_at_r"]) == (n == 1)


def test_a_class_with_one_item_is_na_not_a_blank_chart(rare):
    from dmlkit.report import render

    data, _, counts = rare
    html = render(data)
    bars = _chart(html, "per-class MAP@R")
    assert "nan" not in bars.lower()
    ys = [float(v) for v in re.findall(r'<rect x="[^"]*" y="([^"]*)"', bars)[1:]]
    assert ys and all(math.isfinite(y) for y in ys)
    assert len(set(ys)) > 1  # the bars have heights, not one blank line
    single = [c for c, n in counts.items() if n == 1]
    row = re.search(rf"<tr><th>{single[0]}</th>(.*?)</tr>", html).group(1)
    assert re.findall(r"<td>([^<]*)</td>", row) == ["1", "0", "n/a", "n/a", "n/a"]
    assert "<th>queries with a match</th>" in html


def test_scaling_skips_nan():
    from dmlkit.report import svg

    out = svg.bars({"a": [0.5, float("nan"), 1.0]}, ["x", "y", "z"], "t", "v")
    assert "nan" not in out.lower() and "n/a" in out
    line = svg.lines({"s": ([0, 1, 2], [1.0, float("nan"), 3.0])}, "t", "x", "y")
    assert "[1, 3]" in line  # the y range of the finite values


def test_charts_name_the_classes(rare):
    from dmlkit.report import render, svg

    data, _, _ = rare
    data = {**data, "class_names": {c: f"digit-{c}" for c in data["class_names"]}}
    html = render(data)
    legend = _chart(html, "PCA of held-out embeddings")
    bars = _chart(html, "per-class MAP@R")
    for c in data["per_class"]:
        assert f">digit-{c}<" in legend  # a legend row per class
        assert re.search(rf'class="tick"[^>]*>digit-{c}<', bars)  # an x tick per class
    groups = list(range(12))  # more classes than the palette has colours
    out = svg.scatter([float(g) for g in groups], [0.0] * 12, groups, ["p"] * 12,
                      [False] * 12, "t", {g: f"c{g}" for g in groups})
    fills = re.findall(r'<circle cx="[^"]*" cy="[^"]*" r="3" fill="([^"]*)"', out)
    assert len(set(fills)) == 12
    many = list(range(60))
    out = svg.scatter([0.0] * 60, [0.0] * 60, many, ["p"] * 60, [False] * 60, "t")
    assert out.count('r="4"') == svg.MAX_LEGEND - 1 and "+41 more classes" in out


def test_figures_keep_class_names_after_a_json_round_trip(rare, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.axes

    from dmlkit.report import write_figures

    data, _, _ = rare
    data = {**data, "class_names": {c: f"digit-{c}" for c in data["class_names"]}}
    data = json.loads(json.dumps(data))  # as a saved report's data reads back
    labels: list[str] = []
    scatter = matplotlib.axes.Axes.scatter

    def spy(self, *args, **kwargs):
        labels.append(kwargs.get("label"))
        return scatter(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", spy)
    write_figures(data, tmp_path)
    assert sorted(labels) == sorted(f"digit-{c}" for c in data["class_names"])


@pytest.mark.parametrize("more, words", [
    (["--out", "{tmp}/folder"], "is a directory"),
    (["--out", "{tmp}/file/r.html"], "is a file"),
    (["--png-dir", "{tmp}/file"], "--png-dir"),
    (["--projection", "umapp"], "projection must be"),
])
def test_outputs_and_options_are_checked_before_the_work(run_dir, tmp_path, more, words):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("")
    more = [m.format(tmp=tmp_path) for m in more]
    res = runner.invoke(app, ["report", str(run_dir), *more])
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit), res.exception  # no crash
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and words in errors[0], res.stderr
    assert "report: loading data" not in res.stderr  # refused up front
    assert not (run_dir / "report.html").exists()


def test_umap_runs_without_its_n_jobs_warning():
    pytest.importorskip("umap")
    from dmlkit.report import project_2d

    z = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        xy, method = project_2d(z, "umap")
    assert method == "UMAP" and xy.shape == (40, 2)
    assert not [w for w in caught if "n_jobs" in str(w.message)]


@pytest.mark.filterwarnings("ignore:retrieval metrics are trivially")
def test_one_held_out_class_skips_verification_only(tmp_path):
    run = _train(tmp_path, {"name": "digits", "max_per_class": 8, "split": "classes",
                            "train_classes": list(range(9)), "test_classes": [9]})
    res = runner.invoke(app, ["report", str(run), "--projection", "pca", "--max-items", "20",
                              "--png-dir", str(tmp_path / "png")])
    assert res.exit_code == 0, res.output
    assert "verification skipped" in res.stderr
    html = (run / "report.html").read_text()
    assert "skipped: no different-class pairs" in html
    for section in ("Embedding map", "Retrieval gallery", "Per class"):
        assert section in html
    pngs = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert "map.png" in pngs and "per_class.png" in pngs and "roc_det.png" not in pngs


def test_collect_marks_verification_skipped_for_one_class():
    from dmlkit.report.collect import _verification

    z = torch.nn.functional.normalize(torch.randn(10, 3), dim=1)
    assert "skipped" in _verification(z, torch.zeros(10, dtype=torch.long), 0)
    assert "skipped" in _verification(z, torch.arange(10), 0)  # no same-class pair
    assert "eer" in _verification(z, torch.arange(10) % 2, 0)


def test_line_chart_curves_stay_below_their_legend():
    """A curve starting at the top left (a falling loss) never runs through the legend's
    rows, however many series the chart has."""
    from dmlkit.report import svg

    for n in (1, 3, 6):
        series = {f"series {i}": ([0, 1, 2, 3], [10.0 - i, 5.0, 2.0, 1.0]) for i in range(n)}
        out = svg.lines(series, "t", "epoch", "loss")
        legend_bottom = max(float(y) for y in re.findall(r'<text x="\d+" y="([\d.]+)" '
                                                         r'font-size="11" fill=', out))
        ys = [float(p.split(",")[1]) for pts in re.findall(r'points="([^"]+)"', out)
              for p in pts.split()]
        assert len(ys) == 4 * n and min(ys) > legend_bottom
