"""The run report on a random --max-items subsample of the held-out set: item numbers
are held-out rows and the page says what the sample is; the report never writes onto a
run's own files; n/a for missing metrics, thumbnails in their aspect ratio, a note when
the checkpoint's weights stand in for model.pt, and weights that do not fit named."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()
N_HELDOUT = 60  # 10 digit classes x 6 held-out items


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from dmlkit.config import Config
    from dmlkit.training import train_run

    run = tmp_path_factory.mktemp("sample") / "run"
    train_run(Config.from_dict({
        "name": "sample", "data": {"name": "digits", "max_per_class": 8,
                                   "max_heldout_per_class": 6},
        "model": {"name": "mlp", "dim": 4, "hidden": [8]},
        "training": {"epochs": 1, "num_threads": 1, "progress": False}}), run,
        log=lambda *a: None)
    return run


@pytest.fixture(scope="module")
def heldout(run_dir):
    from dmlkit.runs import build_splits, load_run

    return build_splits(load_run(run_dir).config)[1]


@pytest.fixture(scope="module")
def sampled(run_dir) -> dict:
    from dmlkit.report import collect

    return collect(run_dir, max_items=20, projection="pca")


def test_gallery_items_are_held_out_rows(sampled, heldout):
    assert len(heldout.labels) == N_HELDOUT
    shown = []
    for g in sampled["gallery"]:
        shown.append((g["query"], g["label"]))
        shown += [(n["item"], n["label"]) for n in g["neighbours"]]
    assert len(shown) == 8 * 6
    rows = set(sampled["map"]["items"])
    for item, label in shown:
        assert item in rows  # one of the sampled held-out rows, as the map names them
        assert int(heldout.labels[item]) == label
    from dmlkit.report import render

    html = render(sampled)
    g = sampled["gallery"][0]
    assert f"query: held-out item {g['query']}:" in html
    assert f"held-out item {g['neighbours'][0]['item']}:" in html


def test_sections_of_a_sample_say_so(sampled, run_dir):
    from dmlkit.report import collect, render

    assert sampled["sample"] == {"items": 20, "heldout": N_HELDOUT}
    html = render(sampled)
    note = f"Computed on a random 20 of the {N_HELDOUT} held-out items (--max-items); " \
           f"the table above on all {N_HELDOUT}."
    sections = re.split(r"<h2>", html)
    for title in ("Embedding map", "Retrieval gallery", "Verification", "Per class",
                  "Most confused classes"):
        section = next(s for s in sections if s.startswith(title))
        assert note in section, title
    table = next(s for s in sections if s.startswith("Held-out retrieval"))
    assert note not in table and f"On all {N_HELDOUT} held-out items." in table
    assert f"nearest among the 20 sampled held-out items (of {N_HELDOUT})" in html
    assert "nearest held-out items" not in html
    # without metrics.json there is no table above to speak of
    html = render({**sampled, "metrics": {}})
    assert "the table above" not in html and "Computed on a random 20 of the" in html
    # all the held-out items: nothing special to say
    full = collect(run_dir, max_items=2000, projection="pca")
    assert full["sample"] == {"items": N_HELDOUT, "heldout": N_HELDOUT}
    html = render(full)
    assert "Computed on a random" not in html and "On all" not in html
    assert "nearest held-out items (green" in html


@pytest.mark.parametrize("name", ["config.yaml", "model.pt", "metrics.json", "checkpoint.pt"])
def test_report_refuses_the_runs_own_files(run_dir, name):
    before = (run_dir / name).read_bytes()
    res = runner.invoke(app, ["report", str(run_dir), "--out", str(run_dir / name),
                              "--projection", "pca", "--max-items", "20"])
    assert res.exit_code == 1, res.output
    assert f"is the run directory {run_dir.resolve()}'s own {name}" in res.stderr
    assert "report: loading data" not in res.stderr  # refused before the work
    assert (run_dir / name).read_bytes() == before


def test_report_needs_an_html_name_and_not_another_runs_report(run_dir, tmp_path):
    from dmlkit.report import collect, write_report

    res = runner.invoke(app, ["report", str(run_dir), "--out", str(tmp_path / "r.txt")])
    assert res.exit_code == 1 and "a report is an HTML file" in res.stderr
    assert not (tmp_path / "r.txt").exists()
    other = tmp_path / "other"  # another run directory
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("report.html"))
    (other / "report.html").write_text("other's report")
    res = runner.invoke(app, ["report", str(run_dir), "--out", str(other / "report.html")])
    assert res.exit_code == 1 and "own report.html" in res.stderr
    assert (other / "report.html").read_text() == "other's report"
    data = collect(run_dir, max_items=20, projection="pca")
    for name in ("config.yaml", "model.pt"):  # the library refuses too
        with pytest.raises(ValueError, match=f"own {name}"):
            write_report(data, other / name)
    with pytest.raises(ValueError, match="a report is an HTML file"):
        write_report(data, tmp_path / "report.svg")
    for ok in (tmp_path / "r.HTM", run_dir / "report.html"):
        write_report(data, ok)
        assert ok.read_text().startswith("<!DOCTYPE html>")


def test_missing_metrics_read_n_a_in_the_table():
    from dmlkit.report.html import _metrics_table

    nan = float("nan")
    table = _metrics_table({"precision_at_1": 0.5, "map_at_r": nan,
                            "baseline": {"precision_at_1": nan, "map_at_r": 0.25}})
    assert "nan" not in table.lower()
    assert table.count("<td>n/a</td>") == 2
    assert "<td>0.5000</td>" in table and "<td>0.2500</td>" in table


def test_thumbnails_keep_their_aspect_ratio():
    from dmlkit.report import svg

    for (h, w), (width, height) in {(8, 16): (56, 28), (16, 8): (28, 56), (8, 8): (56, 56),
                                    (3, 200): (56, 1)}.items():
        tag = svg.image_tag(np.zeros((h, w)), size=56)
        assert f'width="{width}" height="{height}"' in tag


def test_report_says_when_checkpoint_weights_stand_in(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    out = tmp_path / "with.html"
    res = runner.invoke(app, ["report", str(run), "-o", str(out), "--projection", "pca",
                              "--max-items", "20"])
    assert res.exit_code == 0, res.output
    assert "model.pt" not in res.stderr and "Note:" not in out.read_text()
    (run / "model.pt").unlink()
    out = tmp_path / "without.html"
    res = runner.invoke(app, ["report", str(run), "-o", str(out), "--projection", "pca",
                              "--max-items", "20"])
    assert res.exit_code == 0, res.output
    assert "note: the run has no model.pt" in res.stderr
    assert "Note: the run has no model.pt" in out.read_text()
    assert "checkpoint.pt" in out.read_text()


def test_weights_that_do_not_fit_are_named(run_dir, tmp_path):
    from dmlkit.runs import load_run

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    config = run / "config.yaml"
    config.write_text(re.sub(r"(?m)^  dim: 4$", "  dim: 5", config.read_text()))
    with pytest.raises(ValueError) as err:
        load_run(run)
    message = str(err.value)
    assert "\n" not in message
    assert "size mismatch for" in message and "torch.Size([4" in message
    res = runner.invoke(app, ["report", str(run), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 1 and "size mismatch for" in res.stderr
