"""`dmlkit report` and `dmlkit explain` at their edges: small held-out sets and 1-D
embeddings, outputs inside the run's data, rows of an item file that do not fit, chunked
integrated gradients, class names matplotlib would parse, the report's one metric, an
earlier explanation's files, checkpoint weights, many classes, and the small options."""

from __future__ import annotations

import importlib.machinery
import json
import re
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from dmlkit.cli.main import app

runner = CliRunner()
N_FEATURES = 12


def _train(run: Path, data: dict, model: dict | None = None) -> Path:
    from dmlkit.config import Config
    from dmlkit.training import train_run

    model = {"name": "mlp", "dim": 4, "hidden": [8], **(model or {})}
    if model["name"] != "mlp":
        del model["hidden"]
    train_run(Config.from_dict({
        "name": "x", "data": data, "model": model,
        "loss": {"name": "triplet_margin", "margin": 0.2},
        "sampler": {"name": "m_per_class", "m": 2, "batch_size": 4},
        "training": {"epochs": 1, "num_threads": 1, "progress": False}}), run,
        log=lambda *a: None)
    return run


def _npz(path: Path, classes: int = 4, per_class: int = 10, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    x = (rng.normal(size=(len(labels), N_FEATURES)) + labels[:, None]).astype(np.float32)
    np.savez(path, x=x, labels=labels)
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rx6")


@pytest.fixture(scope="module")
def data_npz(root) -> str:
    """40 labelled feature vectors, 10 of each of 4 classes."""
    return str(_npz(root / "data.npz"))


@pytest.fixture(scope="module")
def run_dir(root, data_npz) -> Path:
    """An MLP run on :func:`data_npz` (20 items held out)."""
    return _train(root / "run", {"name": "npz", "path": data_npz})


def _fake_umap(monkeypatch, fail: Exception | None = None) -> list[int]:
    """Install a stand-in ``umap`` module; returns the sizes it was asked to map. Like
    umap-learn, it fails on 2 or 3 items (and on any when ``fail`` is given)."""
    calls: list[int] = []

    class UMAP:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

        def fit_transform(self, z):
            calls.append(len(z))
            if fail is not None:
                raise fail
            if len(z) <= 3:
                raise TypeError("Cannot use scipy.linalg.eigh for sparse A with k >= N.")
            return np.asarray(z)[:, :2]

    module = types.ModuleType("umap")
    module.__spec__ = importlib.machinery.ModuleSpec("umap", None)
    module.UMAP = UMAP
    monkeypatch.setitem(sys.modules, "umap", module)
    return calls


# 1. projections of few items, or of one feature ------------------------------------------

@pytest.mark.parametrize("n, method", [(3, "PCA"), (2, "PCA"), (10, "t-SNE"), (40, "UMAP")])
def test_umap_falls_back_when_there_are_too_few_items(monkeypatch, n, method):
    from dmlkit.report import project_2d

    calls = _fake_umap(monkeypatch)
    z = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)
    notes: list[str] = []
    xy, used = project_2d(z, "auto", notes=notes)
    assert used == method and xy.shape == (n, 2) and np.isfinite(xy).all()
    if method == "UMAP":
        assert calls == [n] and notes == []
    else:
        assert calls == [] and "UMAP needs more than 15 items" in notes[0]
        assert f"there are {n}" in notes[0] and method in notes[0]


def test_a_failing_projection_falls_back_to_pca_with_a_note(monkeypatch):
    from dmlkit.report import project_2d

    _fake_umap(monkeypatch, fail=ValueError("zero-size array to reduction operation"))
    notes: list[str] = []
    xy, used = project_2d(np.random.default_rng(0).normal(size=(30, 5)), "umap", notes=notes)
    assert used == "PCA" and xy.shape == (30, 2)
    assert "UMAP failed on these items (zero-size array" in notes[0]


@pytest.mark.parametrize("method", ["auto", "tsne", "pca"])
def test_one_dimensional_embeddings_are_drawn_as_they_are(monkeypatch, method):
    from dmlkit.report import project_2d

    monkeypatch.setitem(sys.modules, "umap", None)  # (not installed)
    z = np.random.default_rng(0).normal(size=(30, 1)).astype(np.float32)
    notes: list[str] = []
    xy, used = project_2d(z, method, notes=notes)
    assert xy.shape == (30, 2) and np.array_equal(xy[:, 0], z[:, 0])
    assert "1-D" in used and "one dimension" in notes[0]
    one, _ = project_2d(z[:1, :].repeat(2, 1), "pca")  # one item of two features
    assert one.shape == (1, 2)


def _report(run: Path, out: Path, *more: str):
    return runner.invoke(app, ["report", str(run), "-o", str(out), *more])


def test_report_of_a_one_dimensional_run(root, data_npz):
    run = _train(root / "dim1", {"name": "npz", "path": data_npz}, {"dim": 1})
    res = _report(run, root / "dim1.html", "--projection", "pca")
    assert res.exit_code == 0, res.output
    assert "note: the embeddings have one dimension" in res.stderr
    assert "Note: the embeddings have one dimension" in (root / "dim1.html").read_text()


@pytest.mark.filterwarnings("ignore:retrieval metrics are NaN")
def test_report_of_a_tiny_held_out_set_notes_it_and_maps_it(root, data_npz, monkeypatch):
    data = {"name": "npz", "path": data_npz, "split": "classes",
            "train_classes": [0, 1], "test_classes": [2, 3], "max_heldout_per_class": 1}
    run = _train(root / "tiny", data)
    calls = _fake_umap(monkeypatch)  # (as where umap-learn is installed)
    res = _report(run, root / "tiny.html")
    assert res.exit_code == 0, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert "held-out set has only 2 items (a report is meant for 20" in res.stderr
    assert "UMAP needs more than 15 items and there are 2: the map is PCA" in res.stderr
    assert calls == []
    html = (root / "tiny.html").read_text()
    assert "PCA of held-out embeddings" in html and "there are 2: the map is PCA" in html


@pytest.mark.filterwarnings("ignore:retrieval metrics are NaN")
def test_report_of_one_held_out_item_is_refused_clearly(root, data_npz):
    data = {"name": "npz", "path": data_npz, "split": "classes",
            "train_classes": [0, 1, 2], "test_classes": [3], "max_heldout_per_class": 1}
    run = _train(root / "one", data)
    res = _report(run, root / "one.html", "--projection", "pca")
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "held-out set has 1 item" in errors[0]
    assert "at least 2" in errors[0] and "data.test_fraction" in errors[0]
    assert not (root / "one.html").exists()


# 2. outputs inside the run's data folder ---------------------------------------------------

@pytest.fixture(scope="module")
def image_run(root) -> tuple[Path, Path]:
    from PIL import Image

    images = root / "images"
    rng = np.random.default_rng(0)
    for c in ("circle", "cross", "dots"):
        (images / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(
                images / c / f"{i}.png")
    run = _train(root / "imgrun", {"name": "image_folder", "path": str(images),
                                   "test_fraction": 0.5}, {"name": "small_cnn", "width": 4})
    return run, images


def _pngs(folder: Path) -> int:
    return len(list(folder.rglob("*.png")))


@pytest.mark.parametrize("command", ["report", "explain"])
@pytest.mark.parametrize("inside", [".", "figs", "circle/x"])
def test_outputs_inside_the_runs_data_folder_are_refused(image_run, command, inside):
    run, images = image_run
    before = _pngs(images)
    target = images / inside
    if command == "report":
        args = ["report", str(run), "-o", str(run.parent / "r.html"), "--png-dir", str(target)]
    else:
        args = ["explain", str(run), "--a", "heldout:0", "--b", "heldout:1", "-o", str(target),
                "--steps", "2"]
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    assert "lies inside the run's data folder (data.path)" in res.stderr or (
        "is the run's data folder" in res.stderr)
    assert str(images) in res.stderr
    assert _pngs(images) == before


def test_png_dir_that_is_a_run_directory_suggests_a_figures_folder(run_dir, root):
    res = _report(run_dir, root / "r.html", "--png-dir", str(run_dir))
    assert res.exit_code == 1
    assert f"e.g. {run_dir / 'figures'}" in res.stderr and "explain" not in res.stderr


# 3. rows of an item file that do not fit ---------------------------------------------------

def _explain(run: Path, out: Path, a: str = "heldout:0", b: str = "heldout:1", *more: str):
    return runner.invoke(app, ["explain", str(run), "--a", a, "--b", b, "-o", str(out),
                               "--steps", "4", *more])


def test_rows_that_do_not_fit_say_why(run_dir, tmp_path):
    np.save(tmp_path / "narrow.npy", np.zeros((5, N_FEATURES - 1), np.float32))
    res = _explain(run_dir, tmp_path / "ex", f"{tmp_path}/narrow.npy:0")
    assert res.exit_code == 1
    assert "holds one item" not in res.stderr and "without :0" not in res.stderr
    assert f"inputs of shape ({N_FEATURES - 1},) per item" in res.stderr
    assert f"trained on inputs of shape {N_FEATURES}" in res.stderr
    np.save(tmp_path / "one.npy", np.zeros(N_FEATURES, np.float32))  # one item: as before
    res = _explain(run_dir, tmp_path / "ex", f"{tmp_path}/one.npy:0")
    assert res.exit_code == 1 and "give it without :0" in res.stderr


# 4. integrated gradients in chunks of steps ------------------------------------------------

def _unchunked(model: nn.Module, a: torch.Tensor, b: torch.Tensor, steps: int) -> torch.Tensor:
    """Integrated gradients with every step in one batch (the reference)."""
    xa, xb = a[None], b[None]
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    path = (alphas.view(-1, *[1] * a.dim()) * xa).requires_grad_(True)
    s = nn.functional.cosine_similarity(model(path), model(xb).detach().expand(steps, -1))
    (grad,) = torch.autograd.grad(s.sum(), path)
    return (xa * grad.mean(0, keepdim=True))[0]


def test_integrated_gradients_in_chunks_equal_one_batch(monkeypatch):
    from dmlkit.explain import attribution, integrated_gradients

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 6 * 6, 5)).eval()
    a, b = torch.randn(2, 6, 6), torch.randn(2, 6, 6)
    expected = _unchunked(model, a, b, 20)
    sizes: list[int] = []
    hook = model.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0]))
    for batch_size in (1, 3, 7, 20, 64):
        sizes.clear()
        got = integrated_gradients(model, a, b, steps=20, batch_size=batch_size)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
        assert max(sizes[1:]) == min(batch_size, 20)  # (sizes[0]: b, embedded once)
    monkeypatch.setattr(attribution, "IG_CHUNK_VALUES", 2 * 72)  # 2 steps of 72 values
    sizes.clear()
    done: list[tuple[int, int]] = []
    got = integrated_gradients(model, a, b, steps=20, progress=lambda d, t: done.append((d, t)))
    hook.remove()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert max(sizes[1:]) == 2 and done[-1] == (20, 20) and len(done) == 10
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        integrated_gradients(model, a, b, batch_size=0)


# 5. class names that matplotlib would parse ------------------------------------------------

def _figure_data(names: list[str], per: int = 3) -> dict:
    n = len(names)
    labels = [c for c in range(n) for _ in range(per)]
    rng = np.random.default_rng(0)
    return {
        "class_names": {str(c): name for c, name in enumerate(names)},
        "per_class": {str(c): {"learned": {"map_at_r": float(rng.random())},
                               "raw": {"map_at_r": float(rng.random())}} for c in range(n)},
        "sample": {"items": len(labels), "heldout": len(labels)}, "history": [],
        "map": {"method": "PCA", "x": rng.normal(size=len(labels)).tolist(),
                "y": rng.normal(size=len(labels)).tolist(), "labels": labels,
                "unseen": [False] * len(labels), "items": list(range(len(labels)))},
        "verification": {"skipped": "one class"},
    }


@pytest.fixture
def drawn(monkeypatch) -> dict[str, dict]:
    """What each saved figure shows: its legend entries and x tick labels (and whether
    any two tick labels overlap), by file name."""
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    seen: dict[str, dict] = {}
    save = matplotlib.figure.Figure.savefig

    def spy(self, path, *args, **kwargs):
        save(self, path, *args, **kwargs)  # (drawn: the text laid out)
        ax = self.axes[0]
        renderer = self.canvas.get_renderer()
        ticks = [t for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        boxes = sorted((t.get_window_extent(renderer).x0, t.get_window_extent(renderer).x1)
                       for t in ticks)
        legend = ax.get_legend()
        seen[Path(path).name] = {
            "ticks": [t.get_text() for t in ticks],
            "overlap": any(b[0] < a[1] for a, b in zip(boxes, boxes[1:], strict=False)),
            "legend": [t.get_text() for t in legend.get_texts()] if legend else []}

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    return seen


def test_figures_draw_class_names_as_written(drawn, tmp_path):
    from dmlkit.report import write_figures

    names = ["x$_{a$", "cost $5", "_under", "plain"]
    paths = write_figures(_figure_data(names), tmp_path)
    assert {p.name for p in paths} == {"map.png", "per_class.png"}
    assert drawn["per_class.png"]["ticks"] == [r"x\$_{a\$", r"cost \$5", " _under", "plain"]
    legend = drawn["map.png"]["legend"]
    assert len(legend) == 4 and r"x\$_{a\$" in legend and " _under" in legend


def test_per_class_names_of_many_classes_are_thinned(drawn, tmp_path):
    from dmlkit.report import write_figures

    names = [f"class_name_number_{c:04d}" for c in range(300)]
    write_figures(_figure_data(names, per=1), tmp_path)
    shown = drawn["per_class.png"]
    assert 10 <= len(shown["ticks"]) < 100 and not shown["overlap"]
    assert shown["ticks"][0] == "class_name_number_0000"
    few = write_figures(_figure_data(["a", "b", "c"]), tmp_path / "few")
    assert few and drawn["per_class.png"]["ticks"] == ["a", "b", "c"]


# 6. one metric throughout the report ------------------------------------------------------

def test_report_uses_the_runs_metric_everywhere(root):
    from dmlkit.functional.retrieval import knn
    from dmlkit.report import collect, render
    from dmlkit.runs import build_splits, embed, evaluate_run, load_run

    run = _train(root / "nonorm", {"name": "npz", "path": str(_npz(root / "more.npz", 4, 30))},
                 {"normalize": False})
    data = collect(run, projection="pca")
    assert data["metric"] == "euclidean" and "Euclidean" in data["verification"]["score"]
    evaluated = evaluate_run(run, sections=["verification"], out=root / "ev.json")
    assert evaluated["metric"] == "euclidean"
    assert data["verification"]["eer"] == pytest.approx(evaluated["verification"]["eer"])
    loaded = load_run(run)
    _, heldout = build_splits(loaded.config)
    z, _ = embed(loaded.model, heldout.x)
    for g in data["gallery"]:
        _, nbrs = knn(z[g["query"]][None], z, 6, metric="euclidean")
        expected = [r for r in nbrs[0].tolist() if r != g["query"]][:5]
        assert [n["item"] for n in g["neighbours"]] == expected
    assert all("centroid_distance" in p for p in data["confusions"])
    dist = [p["centroid_distance"] for p in data["confusions"]]
    assert dist == sorted(dist)
    html = render(data)
    assert "Metric: Euclidean distance" in html and "centroid distance" in html


# 7. an earlier explanation's files ---------------------------------------------------------

def test_explain_replaces_an_earlier_explanations_files_only(run_dir, tmp_path, monkeypatch):
    import dmlkit.explain
    from dmlkit.explain import NoInputGradientError

    out = tmp_path / "ex"
    assert _explain(run_dir, out).exit_code == 0
    assert (out / "a_integrated_gradients.npy").is_file()
    (out / "mine.txt").write_text("keep")
    (out / "a_integrated_gradients_old.npy").write_text("keep")

    def frozen(*args, **kwargs):
        raise NoInputGradientError("no gradient")

    monkeypatch.setattr(dmlkit.explain, "integrated_gradients", frozen)
    res = _explain(run_dir, out)
    assert res.exit_code == 0, res.output
    left = sorted(p.name for p in out.iterdir())
    assert not [n for n in left if n.startswith(("a_integrated_gradients.",
                                                 "b_integrated_gradients."))]
    assert "mine.txt" in left and "a_integrated_gradients_old.npy" in left
    summary = json.loads((out / "explain.json").read_text())
    assert summary["maps"] == ["a_occlusion", "b_occlusion"]


# 8. checkpoint weights ---------------------------------------------------------------------

def test_explain_says_which_weights_it_explains(run_dir, tmp_path):
    res = _explain(run_dir, tmp_path / "with")
    assert res.exit_code == 0 and "model.pt" not in res.stderr
    assert json.loads((tmp_path / "with" / "explain.json").read_text())["weights"] == "model.pt"
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "model.pt").unlink()
    res = _explain(run, tmp_path / "without")
    assert res.exit_code == 0, res.output
    assert ("note: the run has no model.pt (it did not finish, or the file was removed): "
            "this explanation uses the weights of its last checkpoint, checkpoint.pt"
            in res.stderr)
    weights = json.loads((tmp_path / "without" / "explain.json").read_text())["weights"]
    assert weights != "model.pt" and "checkpoint" in weights


# the small options -------------------------------------------------------------------------

def test_a_stride_past_the_patch_is_refused_before_any_work(run_dir, tmp_path, monkeypatch):
    import dmlkit.explain

    res = runner.invoke(app, ["explain", str(tmp_path / "no-run"), "--a", "heldout:0",
                              "--b", "heldout:1", "-o", str(tmp_path / "ex"),
                              "--patch", "2", "--stride", "3"])
    assert res.exit_code == 1 and "--stride 3 is larger than the patch (2)" in res.stderr
    called: list[int] = []
    monkeypatch.setattr(dmlkit.explain, "integrated_gradients",
                        lambda *a, **k: called.append(1))
    res = _explain(run_dir, tmp_path / "ex", "heldout:0", "heldout:1", "--stride", "5")
    assert res.exit_code == 1 and "--stride 5 is larger than the patch (2)" in res.stderr
    assert called == [] and not (tmp_path / "ex").exists()


def _help(command: str) -> str:
    res = runner.invoke(app, [command, "--help"], terminal_width=200)
    return re.sub(r"[\s\u2502]+", " ", res.output)


def test_help_of_the_window_and_the_item_cap_is_true():
    from dmlkit.explain import default_occlusion_window
    from dmlkit.explain.attribution import _window_starts

    text = _help("explain")
    assert "whatever n" not in text and "n - 1 windows up to 200 values" in text
    for n, windows in ((64, 63), (200, 199), (24_000, 199)):
        patch, stride = default_occlusion_window((n,))
        assert len(_window_starts(n, patch, stride)) == windows
    assert all(199 <= len(_window_starts(n, *default_occlusion_window((n,)))) <= 400
               for n in range(200, 5000, 7))
    assert re.search(r"--max-items \S+ Map, gallery", _help("report"))
