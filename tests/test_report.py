"""The HTML run report: content, self-containment, and a real render in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app

TINY = {
    "name": "tiny",
    "data": {"name": "digits", "max_per_class": 15, "max_heldout_per_class": 15,
             "split": "classes", "train_classes": [0, 1, 2, 3, 4, 5, 6]},
    "model": {"name": "small_cnn", "dim": 8},
    "training": {"epochs": 2, "progress": False},
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from dmlkit.config import Config
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("report")
    train_run(Config.from_dict(TINY), root / "run", log=lambda *a: None)
    res = CliRunner().invoke(app, ["report", str(root / "run"), "--projection", "pca",
                                   "--png-dir", str(root / "png")])
    assert res.exit_code == 0, res.output
    return root


def test_report_content_and_figures(report):
    html = (report / "run" / "report.html").read_text()
    for section in ("Held-out retrieval", "Training", "Embedding map", "Retrieval gallery",
                    "Verification", "Per class", "Most confused classes"):
        assert section in html
    assert html.count("<circle") >= 45  # one point per held-out item (3 classes x 15)
    assert "unseen class" in html  # classes 7-9 were not trained on
    assert html.count("data:image/png;base64,") >= 8 * 6  # gallery thumbnails
    for name in ("curves", "learning_rate", "map", "roc_det", "scores", "per_class"):
        assert (report / "png" / f"{name}.png").stat().st_size > 1000


def test_report_makes_no_network_request(report):
    html = (report / "run" / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", html)
    assert "url(" not in html and "@import" not in html
    assert not re.search(r"https?://", html)


def test_report_renders_in_headless_chromium(report, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless Chromium not installed (apt-get install -y chromium)")
    page = (report / "run" / "report.html").as_uri()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--proxy-server=127.0.0.1:9", "--window-size=1200,2400"]
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True,
                         timeout=120).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-ok="1"' in body and "data-errors" not in body  # loaded, no script error
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", page], capture_output=True, timeout=120)
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)[..., :3]  # (H, W, 3) floats
    ink = (img < 0.9).any(axis=2)  # non-white pixels
    bands = [ink[i : i + 200].mean() for i in range(0, ink.shape[0] - 200, 200)]
    assert sum(b > 0.02 for b in bands) >= 8  # plots, tables and thumbnails down the page
    assert np.std(img) > 0.05


@pytest.mark.parametrize("n", ["1", "3", "19"])
def test_too_few_items_is_a_clear_error(report, n):
    res = CliRunner().invoke(app, ["report", str(report / "run"), "--max-items", n,
                                   "--out", str(report / "few.html")])
    assert res.exit_code == 1 and "--max-items must be an integer >= 20" in res.output
