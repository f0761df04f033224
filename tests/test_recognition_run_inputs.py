"""``dmlkit verify / identify / fewshot RUN`` read their data as ``dmlkit embed`` does:
uint8 scaled, wrong shapes refused, far-off ranges warned about, folders read as the run
was trained."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from dmlkit.config import Config
    from dmlkit.runs import build_splits, load_run
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("digits_run")
    cfg = Config.from_dict({
        "name": "tiny",
        "data": {"name": "digits", "max_per_class": 10, "max_heldout_per_class": 20},
        "model": {"name": "mlp", "dim": 8, "hidden": [16]},
        "training": {"epochs": 1, "progress": False},
    })
    train_run(cfg, root / "run", log=lambda *a: None)
    _, heldout = build_splits(load_run(root / "run").config)
    x, y = heldout.x.numpy(), heldout.labels.numpy()  # (n, 1, 8, 8) in [0, 1]
    gallery, query = y < 6, y >= 0
    x = np.round(x * 255) / 255  # exactly representable in uint8
    np.savez(root / "g.npz", x=x[gallery], labels=y[gallery])
    np.savez(root / "q.npz", x=x[query], labels=y[query])
    np.savez(root / "g_u8.npz", x=np.round(x[gallery] * 255).astype(np.uint8),
             labels=y[gallery])
    np.savez(root / "q_u8.npz", x=np.round(x[query] * 255).astype(np.uint8), labels=y[query])
    up = np.repeat(np.repeat(x, 2, axis=2), 2, axis=3)  # (n, 1, 16, 16)
    np.savez(root / "g_16.npz", x=up[gallery], labels=y[gallery])
    np.savez(root / "q_16.npz", x=up[query], labels=y[query])
    np.savez(root / "q_x16.npz", x=x[query] * 16, labels=y[query])
    return root


def identify(run, gallery, query, out, *extra):
    return runner.invoke(app, ["identify", str(run), "--gallery", str(gallery), "--query",
                               str(query), "-o", str(out), *extra])


def test_uint8_inputs_are_scaled_as_the_run_reads_them(digits_run):
    root = digits_run
    res = identify(root / "run", root / "g.npz", root / "q.npz", root / "f.json")
    assert res.exit_code == 0, res.output
    res = identify(root / "run", root / "g_u8.npz", root / "q_u8.npz", root / "u.json")
    assert res.exit_code == 0, res.output
    assert "warning" not in res.output
    f, u = (json.loads((root / n).read_text()) for n in ("f.json", "u.json"))
    for key in ("rank1", "rank5", "threshold", "dir_at_threshold", "far_at_threshold", "map"):
        assert u[key] == pytest.approx(f[key], abs=1e-5), key


def test_the_reader_scales_uint8_and_reshapes_flat_rows(digits_run):
    from dmlkit.cli.recognition import DataReader

    root = digits_run
    reader = DataReader(root / "run")
    x8, y8, _ = reader.read(str(root / "g_u8.npz"), "--gallery")
    xf, yf, _ = reader.read(str(root / "g.npz"), "--gallery")
    assert x8.dtype == np.float32 and x8.max() <= 1.0
    np.testing.assert_allclose(x8, xf, atol=1e-6)
    np.testing.assert_array_equal(y8, yf)
    np.savez(root / "flat.npz", x=xf.reshape(len(xf), -1), labels=yf)
    xr, _, _ = reader.read(str(root / "flat.npz"), "--gallery")
    assert xr.shape == xf.shape  # (n, 1, 8, 8): the training inputs' shape


@pytest.mark.parametrize("command", ["identify", "fewshot", "verify"])
def test_inputs_of_another_size_are_refused(digits_run, command):
    root = digits_run
    if command == "identify":
        res = identify(root / "run", root / "g_16.npz", root / "q_16.npz", root / "o.json")
    elif command == "fewshot":
        res = runner.invoke(app, ["fewshot", str(root / "run"), "--support",
                                  str(root / "g_16.npz"), "--query", str(root / "q_16.npz"),
                                  "-o", str(root / "o.json")])
    else:
        res = runner.invoke(app, ["verify", str(root / "run"), "--data", str(root / "q_16.npz"),
                                  "--bootstrap", "5", "-o", str(root / "o.json")])
    assert res.exit_code == 1, res.output
    assert "(1, 16, 16) per item" in res.output and "trained on inputs of shape 1x8x8" in res.output


def test_inputs_far_outside_the_training_range_warn(digits_run):
    root = digits_run
    res = identify(root / "run", root / "g.npz", root / "q_x16.npz", root / "o.json")
    assert res.exit_code == 0, res.output
    assert "warning: --query" in res.output and "trained on inputs in [0, 1]" in res.output


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory):
    """A small CNN trained on a folder of 8x8 RGB images (a colour per class)."""
    pil = pytest.importorskip("PIL.Image")
    from dmlkit.config import Config
    from dmlkit.training import train_run

    root = tmp_path_factory.mktemp("rgb_run")
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(6, 3))
    for c, colour in enumerate(colours):
        (root / "imgs" / f"class{c}").mkdir(parents=True)
        for i in range(8):
            pixels = np.clip(colour + rng.integers(-20, 21, size=(8, 8, 3)), 0, 255)
            pil.fromarray(pixels.astype(np.uint8), "RGB").save(root / "imgs" / f"class{c}" /
                                                               f"{i}.png")
    cfg = Config.from_dict({
        "name": "rgb",
        "data": {"name": "image_folder", "path": str(root / "imgs"), "color": "rgb",
                 "image_size": 8, "split": "stratified", "test_fraction": 0.5},
        "model": {"name": "small_cnn", "in_channels": 3, "image_size": 8, "dim": 8,
                  "width": 8},
        "training": {"epochs": 1, "progress": False},
    })
    train_run(cfg, root / "run", log=lambda *a: None)
    return root


def test_an_image_folder_is_read_as_the_rgb_run_was_trained(rgb_run):
    root = rgb_run
    res = identify(root / "run", root / "imgs", root / "imgs", root / "i.json")
    assert res.exit_code == 0, res.output
    result = json.loads((root / "i.json").read_text())
    assert result["num_known"] == 48 and result["rank1"] == 1.0  # each item finds itself
    res = runner.invoke(app, ["fewshot", str(root / "run"), "--support", str(root / "imgs"),
                              "--query", str(root / "imgs"), "-o", str(root / "f.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((root / "f.json").read_text())["num_classes"] == 6


def test_class_names_keep_unknowns_and_refuse_labels_out_of_range(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 6)) * 3
    y = np.repeat(np.arange(4), 10)
    x = (centres[y] + 0.1 * rng.normal(size=(40, 6))).astype(np.float32)
    names = np.array(["ann", "bob", "cat", "dan"])
    np.savez(tmp_path / "g.npz", embeddings=x[y < 3], labels=y[y < 3], class_names=names)
    # the query file numbers the same people its own way, and marks strangers with -1
    order = np.array([3, 2, 1, 0])  # its class_names are names[order]
    q_labels = np.where(y < 3, np.argsort(order)[y], -1)
    np.savez(tmp_path / "q.npz", embeddings=x, labels=q_labels, class_names=names[order])
    res = runner.invoke(app, ["identify", "--gallery", str(tmp_path / "g.npz"), "--query",
                              str(tmp_path / "q.npz"), "-o", str(tmp_path / "i.json")])
    assert res.exit_code == 0, res.output
    result = json.loads((tmp_path / "i.json").read_text())
    assert result["num_known"] == 30 and result["num_unknown"] == 10  # -1 is nobody
    assert result["rank1"] == 1.0
    np.savez(tmp_path / "bad.npz", embeddings=x, labels=np.where(y == 3, 4, y),
             class_names=names)
    res = runner.invoke(app, ["identify", "--gallery", str(tmp_path / "g.npz"), "--query",
                              str(tmp_path / "bad.npz"), "-o", str(tmp_path / "i.json")])
    assert res.exit_code == 1
    assert "label 4 is out of range" in res.output and "[0, 3]" in res.output
    np.savez(tmp_path / "g_unknown.npz", embeddings=x, labels=q_labels, class_names=names)
    res = runner.invoke(app, ["identify", "--gallery", str(tmp_path / "g_unknown.npz"),
                              "--query", str(tmp_path / "q.npz"), "-o", str(tmp_path / "i.json")])
    assert res.exit_code == 1 and "10 items have the unknown label -1" in res.output
