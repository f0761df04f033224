"""The report's layout: thumbnail size, legend width and the gallery of non-image runs."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html import unescape

import numpy as np
import pytest

from dmlkit.report import svg


def _train(
    tmp_path_factory, name: str, x: np.ndarray, y: np.ndarray, model: dict, **npz: np.ndarray
) -> dict:
    """The report data of a one-epoch run on ``x``, ``y`` (held-out: a stratified half)."""
    from dmlkit.config import Config
    from dmlkit.report.collect import collect
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp(name)
    np.savez(root / "data.npz", x=x, labels=y, **npz)
    config = {
        "name": name,
        "model": model,
        "data": {
            "name": "npz",
            "path": str(root / "data.npz"),
            "split": "stratified",
            "test_fraction": 0.5,
        },
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": 16},
        "training": {"epochs": 1, "seed": 0, "num_threads": 1, "progress": False},
    }
    train_run(Config.from_dict(config), root / "run", log=lambda *a: None)
    return collect(root / "run", n_queries=8, k=5)


@pytest.fixture(scope="module")
def big_images(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = rng.random((40, 3, 128, 128)).astype(np.float32)  # noise: PNG cannot shrink it
    return _train(
        tmp_path_factory,
        "big",
        x,
        np.repeat(np.arange(4), 10),
        {"name": "small_cnn", "in_channels": 3, "image_size": 128, "dim": 8, "width": 4},
    )


@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 8)
    x = (rng.normal(size=(80, 16)) + 2 * rng.normal(size=(10, 16))[y]).astype(np.float32)
    names = np.array([f"class_with_long_prefix_name_{i}" for i in range(10)])
    return _train(
        tmp_path_factory,
        "vectors",
        x,
        y,
        {"name": "mlp", "dim": 8, "hidden": [32]},
        class_names=names,
    )


def _png_sizes(html: str) -> list[tuple[int, int, int]]:
    """``(width, height, bytes)`` of each inline PNG of ``html``."""
    out = []
    for data in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html):
        png = base64.b64decode(data)
        out.append((int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big"), len(png)))
    return out


# thumbnails ----------------------------------------------------------------------------------


def test_thumbnails_of_large_images_are_downscaled_and_the_report_stays_small(big_images):
    from dmlkit.report.html import render

    html = render(big_images)
    sizes = _png_sizes(html)
    assert len(sizes) == 8 * 6
    cap = svg.THUMBNAIL_PX
    assert all(max(w, h) <= cap for w, h, _ in sizes)
    assert all(n <= cap * (3 * cap + 1) + 200 for _, _, n in sizes)  # at most raw RGB size
    assert len(html) < 48 * (cap * (3 * cap + 1) + 200) * 4 / 3 + 300_000
    shown = re.findall(r'<img src="[^"]+" width="(\d+)" height="(\d+)"', html)
    assert set(shown) == {("56", "56")}  # drawn at the same size as before


def test_downscaling_averages_areas_and_keeps_the_aspect_ratio():
    from dmlkit.report.collect import _thumbnail

    img = np.zeros((1, 256, 128))
    img[0, :128] = 1.0  # top half white
    small = np.asarray(_thumbnail(img))
    assert small.shape == (svg.THUMBNAIL_PX, svg.THUMBNAIL_PX // 2)
    assert np.allclose(small[: svg.THUMBNAIL_PX // 2], 1) and np.allclose(
        small[svg.THUMBNAIL_PX // 2 :], 0
    )
    odd = np.asarray(svg.downscale(np.linspace(0, 1, 300 * 7).reshape(7, 300), 112))
    assert odd.shape == (3, 112)
    assert abs(odd.mean() - 0.5) < 1e-9  # area averaging keeps the mean


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 28, 28), (1, 100, 112)])
def test_small_images_are_kept_as_they_are(shape):
    from dmlkit.report.collect import _thumbnail

    x = np.random.default_rng(0).random(shape)
    img = x[0] if shape[0] == 1 else np.transpose(x, (1, 2, 0))
    expected = ((img - img.min()) / (img.max() - img.min())).round(3)
    assert np.array_equal(np.asarray(_thumbnail(x)), expected)
    w, h, _ = _png_sizes(svg.image_tag(expected))[0]
    assert (h, w) == shape[1:]


# the map's legend ----------------------------------------------------------------------------


def _overflow(chart: str) -> list[str]:
    """The texts of ``chart`` that reach past its width, by the module's character rule."""
    width = float(re.search(r'viewBox="0 0 ([\d.]+) ', chart)[1])
    out = []
    for attrs, text in re.findall(r"<text([^>]*)>([^<]*)", chart):
        if "rotate(" in attrs:
            continue
        x, size = (float(re.search(rf'{k}="([\d.]+)"', attrs)[1]) for k in ("x", "font-size"))
        extent = svg.text_px(unescape(text), size)
        end = x + (extent / 2 if 'text-anchor="middle"' in attrs else extent)
        if end > width:
            out.append(text)
    return out


@pytest.mark.parametrize("n", [5, 50])
def test_legend_rows_of_unseen_classes_fit_in_the_chart(n):
    names = {i: f"class_with_long_prefix_name_{i}" for i in range(n)}
    groups = [i for i in range(n) for _ in range(3)]
    xs = list(np.random.default_rng(0).random(len(groups)))
    chart = svg.scatter(
        xs, xs[::-1], groups, ["p"] * len(groups), [g % 2 == 0 for g in groups], "map", names
    )
    assert "(unseen)" in chart
    assert _overflow(chart) == []
    shown = re.findall(r'font-size="\d+">([^<]+)<title>', chart)
    assert all(s.endswith(")") for s in shown if "(unseen" in s)


def test_legend_keeps_short_names_whole_and_wide_charts_no_wider_than_needed():
    chart = svg.scatter(
        [0, 1], [0, 1], [0, 1], ["a", "b"], [True, False], "map", {0: "cat", 1: "dog"}
    )
    assert ">cat (unseen)<title>" in chart and ">dog<title>" in chart
    assert _overflow(chart) == []
    assert float(re.search(r'viewBox="0 0 ([\d.]+) ', chart)[1]) <= svg.W + svg.LEGEND_W


# the gallery of non-image runs ---------------------------------------------------------------


def test_vector_gallery_cells_show_a_short_label_and_the_full_text_on_hover(vectors):
    from dmlkit.report.html import _gallery

    names = {int(k): v for k, v in vectors["class_names"].items()}
    table = _gallery(vectors["gallery"], names)
    spans = re.findall(r'<span class="item" title="([^"]*)"[^>]*>([^<]*)</span>', table)
    assert len(spans) == 8 * 6
    for title, text in spans:
        number = re.search(r"held-out item (\d+)", title)[1]
        assert text == f"item {number}"
        assert "class_with_long_prefix_name_" in title
    assert "data:image" not in table


def test_the_gallery_scrolls_inside_its_own_box(vectors):
    from dmlkit.report.html import STYLE, render

    html = render(vectors)
    box = re.search(r'<div class="gallery-box">\s*<table class="gallery">', html)
    assert box, "the gallery table sits in its own box"
    rule = re.search(r"\.gallery-box\{([^}]*)\}", STYLE)[1]
    assert "overflow-x:auto" in rule and "max-width:100%" in rule


def test_a_vector_report_is_no_wider_than_the_page_in_chromium(vectors, tmp_path):
    from dmlkit.report.html import render

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("headless Chromium not installed (apt-get install -y chromium)")
    probe = (
        "<script>window.addEventListener('load', function () {"
        "document.body.setAttribute('data-width', "
        "String(document.documentElement.scrollWidth)); });</script></body>"
    )
    page = tmp_path / "page.html"
    page.write_text(render(vectors).replace("</body>", probe))
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--proxy-server=127.0.0.1:9",
        "--window-size=1280,2400",
    ]
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    width = int(re.search(r'data-width="(\d+)"', dom)[1])
    assert width <= 1280


def test_image_galleries_keep_their_thumbnails(big_images):
    from dmlkit.report.html import _gallery

    table = _gallery(big_images["gallery"], {})
    assert table.count("<img ") == 8 * 6 and '<span class="item"' not in table
