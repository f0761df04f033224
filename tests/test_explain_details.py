"""`dmlkit explain` and `dmlkit.explain` in detail: the model's mode is given back, the
training set is embedded once, long 1-D inputs get a scaled occlusion window and
progress lines, runs without classes skip prototypes, signed maps are saved and drawn
around 0 with a colour bar, and classes are named."""

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
N_FEATURES = 400
NAMES = ["cat", "dog", "eel"]


def _config(data: dict) -> dict:
    return {"name": "x", "data": data, "model": {"name": "mlp", "dim": 4, "hidden": [8]},
            "loss": {"name": "triplet_margin", "margin": 0.2},
            "training": {"epochs": 1, "num_threads": 1, "progress": False}}


def _train(run: Path, data: dict) -> Path:
    from dmlkit.config import Config
    from dmlkit.training import train_run

    train_run(Config.from_dict(_config(data)), run, log=lambda *a: None)
    return run


@pytest.fixture(scope="module")
def named_run(tmp_path_factory) -> Path:
    """An MLP run on 400-value vectors of three named classes."""
    root = tmp_path_factory.mktemp("named")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    x = rng.normal(size=(60, N_FEATURES)).astype(np.float32)
    x[:, :3] += 3 * np.eye(3, dtype=np.float32)[labels]
    np.savez(root / "named.npz", x=x, labels=labels, class_names=np.array(NAMES))
    return _train(root / "run", {"name": "npz", "path": str(root / "named.npz")})


@pytest.fixture(scope="module")
def tuple_run(tmp_path_factory) -> Path:
    """An MLP run trained from a triplet CSV over a feature file: no classes."""
    root = tmp_path_factory.mktemp("tuples")
    np.save(root / "features.npy",
            np.random.default_rng(1).normal(size=(60, 16)).astype(np.float32))
    rows = ["anchor,positive,negative"] + [f"{a},{(a + 1) % 60},{(a + 30) % 60}"
                                           for a in range(60)]
    (root / "triplets.csv").write_text("\n".join(rows) + "\n")
    return _train(root / "run", {"kind": "triplets", "tuples": str(root / "triplets.csv"),
                                 "features": str(root / "features.npy")})


def _explain(run: Path, out: Path, a: str = "heldout:0", b: str = "heldout:1", *more: str):
    return runner.invoke(app, ["explain", str(run), "--a", a, "--b", b, "-o", str(out),
                               "--steps", "4", *more])


class _Dropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Dropout(0.5),
                                 nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_explain_functions_give_the_model_back_in_its_mode():
    from dmlkit.explain import integrated_gradients, nearest_prototypes, occlusion

    torch.manual_seed(0)
    model = _Dropout().train()
    a, b = torch.rand(1, 4, 4), torch.rand(1, 4, 4)
    ref, labels = torch.rand(6, 1, 4, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    calls = [lambda: integrated_gradients(model, a, b, steps=4),
             lambda: occlusion(model, a, b, patch=2),
             lambda: nearest_prototypes(model, a, ref, labels)]
    for call in calls:
        first = call()
        assert model.training  # given back in training mode
        second = call()
        assert first == second if isinstance(first, list) else torch.equal(first, second)
    model.eval()
    integrated_gradients(model, a, b, steps=4)
    assert not model.training  # and in eval mode when it was


def test_prototypes_from_given_embeddings_equal_embedding_the_reference():
    from dmlkit.explain import nearest_prototypes
    from dmlkit.runs import embed

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3)).eval()
    ref, labels = torch.randn(30, 5), torch.arange(30) % 4
    item = torch.randn(5)
    z, _ = embed(model, ref)
    assert nearest_prototypes(model, item, None, labels, ref_embeddings=z) == \
        nearest_prototypes(model, item, ref, labels)
    with pytest.raises(ValueError, match="30 labels"):
        nearest_prototypes(model, item, None, labels, ref_embeddings=z[:10])


def test_explain_embeds_the_training_set_once(named_run, tmp_path, monkeypatch):
    import dmlkit.runs
    from dmlkit.runs import build_splits, load_run

    n_train = len(build_splits(load_run(named_run).config)[0].labels)
    sizes: list[int] = []
    real = dmlkit.runs.embed

    def counting(model, data, *args, **kwargs):
        sizes.append(len(data) if isinstance(data, torch.Tensor) else len(data.labels))
        return real(model, data, *args, **kwargs)

    monkeypatch.setattr(dmlkit.runs, "embed", counting)
    res = _explain(named_run, tmp_path / "ex")
    assert res.exit_code == 0, res.output
    assert sizes.count(n_train) == 1


@pytest.mark.parametrize("shape, window", [
    ((24_000,), (240, 120)),  # a 1.5 s waveform at 16 kHz: about 200 windows
    ((N_FEATURES,), (4, 2)),
    ((64,), (2, 1)),  # short vectors keep the fine window
    ((1, 8, 8), (2, 1)),  # images too
    ((3, 32, 32), (2, 1)),
])
def test_default_occlusion_window_scales_with_1d_length(shape, window):
    from dmlkit.explain import default_occlusion_window

    assert default_occlusion_window(shape) == window


def test_occlusion_with_a_stride_covers_every_value():
    from dmlkit.explain import occlusion

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(11, 3))
    a, b = torch.rand(11) + 0.5, torch.rand(11)
    got = occlusion(model, a, b, patch=4, stride=3)  # windows at 0, 3, 6 and 7
    assert got.shape == (11,)
    with torch.no_grad():
        hidden = a.clone()
        hidden[7:] = 0
        from dmlkit.explain import similarity

        drop = float(similarity(model, a[None], b[None]) - similarity(model, hidden[None], b[None]))
    assert float(got[10]) == pytest.approx(drop, abs=1e-6)  # only the last window covers it


def test_explain_of_long_vectors_uses_the_scaled_window(named_run, tmp_path):
    res = _explain(named_run, tmp_path / "ex")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "ex" / "explain.json").read_text())
    assert summary["occlusion"] == {"patch": 4, "stride": 2}
    res = _explain(named_run, tmp_path / "ex2", "heldout:0", "heldout:1", "--patch", "10")
    assert json.loads((tmp_path / "ex2" / "explain.json").read_text())["occlusion"] == \
        {"patch": 10, "stride": 5}


def test_explain_reports_progress_on_stderr(named_run, tmp_path, monkeypatch):
    import dmlkit.training.run

    monkeypatch.setattr(dmlkit.training.run, "PROGRESS_SECONDS", 0.0)  # report every step
    res = _explain(named_run, tmp_path / "ex")
    assert res.exit_code == 0, res.output
    assert "explain: occlusion of a, windows: 199/199" in res.stderr
    assert "explain: embedding" in res.stderr
    assert "explain:" not in res.stdout


def test_explain_of_a_tuple_run_skips_prototypes(tuple_run, tmp_path):
    features = np.load(Path(tuple_run).parent / "features.npy")
    np.save(tmp_path / "a.npy", features[0])
    np.save(tmp_path / "b.npy", features[1])
    res = _explain(tuple_run, tmp_path / "ex", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"))
    assert res.exit_code == 0, res.output
    assert "note: no nearest training class centroids" in res.stderr
    summary = json.loads((tmp_path / "ex" / "explain.json").read_text())
    assert summary["nearest_training_prototypes"] == {}
    assert "triplets" in summary["nearest_training_prototypes_skipped"]
    assert "a_occlusion" in summary["maps"]


def test_explain_saves_signed_maps_and_draws_them_around_zero(named_run, tmp_path,
                                                              monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    bars: list[tuple[str, float, float]] = []
    colorbar = matplotlib.figure.Figure.colorbar

    def spy(self, mappable, *args, **kwargs):
        bars.append((mappable.get_cmap().name, *mappable.get_clim()))
        return colorbar(self, mappable, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "colorbar", spy)
    res = _explain(named_run, tmp_path / "ex")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "ex" / "explain.json").read_text())
    assert sorted(summary["arrays"]) == summary["maps"]
    signs = set()
    for name, file in summary["arrays"].items():
        values = np.load(tmp_path / "ex" / file)
        assert values.shape == (N_FEATURES,)
        signs |= set(np.sign(values[values != 0]).tolist())
        assert (tmp_path / "ex" / summary["figures"][name]).is_file()
    assert signs == {-1.0, 1.0}  # signed, not absolute values
    assert len(bars) == len(summary["maps"])  # a colour bar on every figure
    for cmap, lo, hi in bars:
        assert cmap == "RdBu_r" and lo == pytest.approx(-hi) and hi > 0


def test_explain_names_the_classes(named_run, tmp_path):
    res = _explain(named_run, tmp_path / "ex")
    assert res.exit_code == 0, res.output
    first = res.stdout.splitlines()[0]
    assert any(f"(class {name})" in first for name in NAMES), first
    near = [line for line in res.stdout.splitlines() if "centroids" in line]
    assert len(near) == 2 and all(any(f"class {n} (" in line for n in NAMES) for line in near)
    summary = json.loads((tmp_path / "ex" / "explain.json").read_text())
    assert {p["name"] for p in summary["nearest_training_prototypes"]["a"]} == set(NAMES)
