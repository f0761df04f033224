"""`dmlkit explain` and `dmlkit.explain` at their edges: a run whose training data is
gone, a run trained from tuples, empty item files, an unknown metric, occlusion windows
that cover the whole image at any stride, and items of two shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()
N_FEATURES = 16


def _train(run: Path, data: dict) -> Path:
    from dmlkit.config import Config
    from dmlkit.training import train_run

    train_run(Config.from_dict({
        "name": "x", "data": data, "model": {"name": "mlp", "dim": 4, "hidden": [8]},
        "loss": {"name": "triplet_margin", "margin": 0.2},
        "training": {"epochs": 1, "num_threads": 1, "progress": False}}), run,
        log=lambda *a: None)
    return run


def _explain(run: Path, out: Path, a: str, b: str, *more: str):
    return runner.invoke(app, ["explain", str(run), "--a", a, "--b", b, "-o", str(out),
                               "--steps", "4", *more])


@pytest.fixture
def moved_run(tmp_path) -> tuple[Path, np.ndarray]:
    """An MLP run on a labelled .npz that was then moved away, and the data's inputs."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, N_FEATURES)).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x, labels=np.repeat(np.arange(3), 20))
    run = _train(tmp_path / "run", {"name": "npz", "path": str(tmp_path / "data.npz")})
    (tmp_path / "data.npz").rename(tmp_path / "moved.npz")
    return run, x


@pytest.fixture(scope="module")
def tuple_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tuples")
    np.save(root / "features.npy",
            np.random.default_rng(1).normal(size=(60, N_FEATURES)).astype(np.float32))
    rows = ["anchor,positive,negative"] + [f"{a},{(a + 1) % 60},{(a + 30) % 60}"
                                           for a in range(60)]
    (root / "triplets.csv").write_text("\n".join(rows) + "\n")
    return _train(root / "run", {"kind": "triplets", "tuples": str(root / "triplets.csv"),
                                 "features": str(root / "features.npy")})


def test_explain_works_from_the_recorded_shape_when_the_data_is_gone(moved_run, tmp_path):
    run, x = moved_run
    np.save(tmp_path / "items.npy", x[:5])
    res = _explain(run, tmp_path / "ex", f"{tmp_path}/items.npy:0", f"{tmp_path}/items.npy:3")
    assert res.exit_code == 0, res.output
    assert "note: no nearest training class centroids" in res.stderr
    assert "data.npz" in res.stderr  # the reason: the file that is gone
    summary = json.loads((tmp_path / "ex" / "explain.json").read_text())
    assert summary["nearest_training_prototypes"] == {}
    assert "data.npz" in summary["nearest_training_prototypes_skipped"]
    assert np.load(tmp_path / "ex" / "a_occlusion.npy").shape == (N_FEATURES,)
    # a row of the run's data cannot be had: say so, and what to give instead
    res = _explain(run, tmp_path / "ex2", "heldout:0", f"{tmp_path}/items.npy:3")
    assert res.exit_code == 1
    assert "'heldout:0' is a row of the run's data, which cannot be read" in res.stderr
    assert "data.npz" in res.stderr and "FILE.npy:N" in res.stderr


def test_without_data_or_recorded_shape_the_error_says_why(moved_run):
    from dmlkit.runs import load_run
    from dmlkit.runs.queries import run_input_spec

    run = load_run(moved_run[0])
    assert run_input_spec(run).shape == (N_FEATURES,)  # from the config
    run.config.model.pop("in_features")  # a model config that records no input shape
    with pytest.raises(ValueError, match="records none") as err:
        run_input_spec(run)
    assert "data.npz" in str(err.value)


def test_explain_of_a_tuple_run_says_to_give_npy_items(tuple_run, tmp_path):
    res = _explain(tuple_run, tmp_path / "ex", "heldout:0", "train:1")
    assert res.exit_code == 1
    assert "--a FILE.npy:N --b FILE.npy:N" in res.stderr
    assert "name the data explicitly" not in res.stderr
    features = np.load(tuple_run.parent / "features.npy")
    np.save(tmp_path / "items.npy", features[:3])
    res = _explain(tuple_run, tmp_path / "ex", f"{tmp_path}/items.npy:0",
                   f"{tmp_path}/items.npy:2")
    assert res.exit_code == 0, res.output


def test_report_of_a_tuple_run_says_it_has_no_held_out_split(tuple_run, tmp_path):
    res = runner.invoke(app, ["report", str(tuple_run), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 1
    assert "needs a labelled held-out split" in res.stderr and "has none" in res.stderr
    assert "name the data explicitly" not in res.stderr
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("shape", [(0, N_FEATURES), (0,), (0, 1, 4, 4)])
def test_an_empty_item_file_holds_no_items(tuple_run, tmp_path, shape):
    np.save(tmp_path / "empty.npy", np.zeros(shape, np.float32))
    np.save(tmp_path / "one.npy", np.zeros(N_FEATURES, np.float32))
    for a in (f"{tmp_path}/empty.npy", f"{tmp_path}/empty.npy:0"):
        res = _explain(tuple_run, tmp_path / "ex", a, f"{tmp_path}/one.npy")
        assert res.exit_code == 1
        assert "empty.npy holds no items" in res.stderr
        assert "0..-1" not in res.stderr


def test_an_unknown_metric_is_refused():
    from dmlkit.explain import integrated_gradients, occlusion, similarity

    model = nn.Sequential(nn.Linear(6, 3))
    a, b = torch.rand(6), torch.rand(6)
    for call in (lambda: integrated_gradients(model, a, b, steps=2, metric="foo"),
                 lambda: occlusion(model, a, b, metric="foo"),
                 lambda: similarity(model, a[None], b[None], metric="foo")):
        with pytest.raises(ValueError, match="metric must be 'cosine' or 'euclidean', got 'foo'"):
            call()
    for metric in ("cosine", "euclidean"):  # both known metrics still work
        assert integrated_gradients(model, a, b, steps=2, metric=metric).shape == (6,)


def _starts(n: int, size: int, stride: int) -> list[int]:
    """Window starts every ``stride``, plus one ending at the last value (a reference)."""
    out = []
    i = 0
    while i + size <= n:
        out.append(i)
        i += stride
    if not out or out[-1] + size < n:
        out.append(n - size)
    return out


@pytest.mark.parametrize("size, patch, stride", [(8, 3, 2), (8, 3, 3), (7, 3, 2),
                                                 (8, 2, 1), (5, 9, 2), (8, 100, 50)])
def test_image_occlusion_with_a_stride_covers_every_pixel(size, patch, stride):
    from dmlkit.explain import occlusion, similarity

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * size * size, 5))
    a, b = torch.rand(2, size, size) + 0.5, torch.rand(2, size, size)
    got = occlusion(model, a, b, patch=patch, stride=stride, batch_size=3)
    p = min(patch, size)
    with torch.no_grad():
        base = float(similarity(model, a[None], b[None]))
        drops, counts = torch.zeros(size, size), torch.zeros(size, size)
        for i in _starts(size, p, stride):
            for j in _starts(size, p, stride):
                hidden = a.clone()
                hidden[:, i : i + p, j : j + p] = 0
                drop = base - float(similarity(model, hidden[None], b[None]))
                drops[i : i + p, j : j + p] += drop
                counts[i : i + p, j : j + p] += 1
    assert bool((counts > 0).all())
    torch.testing.assert_close(got, drops / counts)
    assert bool((got != 0).all())  # no pixel left unscored


@pytest.mark.parametrize("patch, stride", [(3, 100), (2, 3)])
def test_a_stride_past_the_patch_is_refused(patch, stride):
    """(the values between two patches would be left unscored, shown as 0)"""
    from dmlkit.explain import occlusion

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    a, b = torch.rand(1, 8, 8), torch.rand(1, 8, 8)
    with pytest.raises(ValueError, match=f"stride {stride} is larger than patch {patch}"):
        occlusion(model, a, b, patch=patch, stride=stride)


def test_occlusion_refuses_a_b_of_another_shape():
    from dmlkit.explain import integrated_gradients, occlusion

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    a, b = torch.rand(1, 4, 4), torch.rand(16)  # as many values, another shape
    for call in (lambda: occlusion(model, a, b), lambda: integrated_gradients(model, a, b)):
        with pytest.raises(ValueError, match="one shape"):
            call()
    assert occlusion(model, a, b.reshape(1, 4, 4)).shape == (4, 4)

