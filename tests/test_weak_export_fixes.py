"""Gradient caching of text and batch-norm models, weak-tuple input checks, resume on
changed data, margin / label-needing losses in weak runs, export without the training
data and the export's input description, integer entries of tuple files."""

from __future__ import annotations

import copy
import inspect
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from dmlkit.config import Config
from dmlkit.data import ArrayDataset
from dmlkit.data.text import TextTripletDataset
from dmlkit.data.tuples import read_tuples_csv
from dmlkit.functional.tuples import Pairs, Triplets
from dmlkit.training import Trainer, load_checkpoint, resolve_config, train_run


def quiet(*_args):
    pass


# -- 1: gradient caching chunks lists of texts ---------------------------------------------
class CharEncoder(nn.Module):
    """A tiny text model: strings -> mean of character embeddings -> (n, 4)."""

    dim = 4

    def __init__(self) -> None:
        super().__init__()
        self.chars = nn.EmbeddingBag(128, 8, mode="mean")
        self.proj = nn.Linear(8, 4)
        self.sizes: list[int] = []  # the batch size of every forward in training mode

    def forward(self, texts):
        if not isinstance(texts, list):
            raise TypeError(f"texts must be a list, got {type(texts).__name__}")
        if self.training:
            self.sizes.append(len(texts))
        ids = [torch.tensor([ord(c) % 128 for c in t]) for t in texts]
        offsets = torch.tensor([0] + [len(i) for i in ids[:-1]]).cumsum(0)
        return nn.functional.normalize(self.proj(self.chars(torch.cat(ids), offsets)), dim=1)


WORDS = ["red apple", "green apple", "blue sky", "grey sky", "big dog", "small dog",
         "hot tea", "iced tea", "old car", "new car", "tall tree", "short tree"]


def text_trainer(chunk):
    data = TextTripletDataset(WORDS[0::2][:5], WORDS[1::2][:5], WORDS[2::2][:5])
    cfg = Config.from_dict({
        "model": {"name": "mlp"}, "loss": {"name": "triplet_margin", "margin": 0.5},
        "optimizer": {"name": "sgd", "lr": 0.1}, "schedule": {"name": "none"},
        "training": {"epochs": 1, "batch_size": 5, "progress": False,
                     "grad_cache_chunk": chunk}})
    torch.manual_seed(0)
    return Trainer(cfg, data, model=CharEncoder(), log=None), data


def test_gradient_caching_chunks_a_batch_of_texts_with_the_plain_gradients():
    grads, values, sizes = [], [], []
    for chunk in (None, 2):
        trainer, data = text_trainer(chunk)
        batch = data.get_batch(list(range(5)))
        assert len(batch[0]) > 2  # (the batch's distinct texts)
        value = trainer.batch_loss(batch)
        value.backward()
        values.append(float(value.detach()))
        grads.append([p.grad.clone() for p in trainer.model.parameters()])
        sizes.append(list(trainer.model.sizes))
    assert max(sizes[0]) > 2 and max(sizes[1]) <= 2  # the chunks, not the batch
    assert values[0] == pytest.approx(values[1], abs=1e-6)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    trainer, _ = text_trainer(2)
    trainer.fit()  # a whole epoch, through the sampler
    assert trainer.model.sizes and max(trainer.model.sizes) <= 2


def test_gradient_caching_refuses_a_batch_it_cannot_split():
    trainer, _ = text_trainer(2)
    with pytest.raises(TypeError, match="grad_cache_chunk cannot split a batch of set"):
        trainer.embed_batch({"a", "b", "c"})


# -- 2: batch norm and chunks of one item --------------------------------------------------
def test_chunk_bounds_merge_a_last_single_item_only_when_asked():
    from dmlkit.training.grad_cache import chunk_bounds

    assert chunk_bounds(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert chunk_bounds(7, 3, merge_single=True) == [(0, 3), (3, 7)]
    assert chunk_bounds(8, 3, merge_single=True) == [(0, 3), (3, 6), (6, 8)]
    assert chunk_bounds(3, 1, merge_single=True) == [(0, 1), (1, 2), (2, 3)]


def labelled_trainer(chunk, hidden=(16,)):
    g = torch.Generator().manual_seed(0)
    data = ArrayDataset(torch.randn(40, 10, generator=g), torch.arange(40) % 4)
    cfg = Config.from_dict({
        "model": {"name": "mlp", "dim": 6, "hidden": list(hidden)},
        "loss": {"name": "contrastive"},
        "training": {"grad_cache_chunk": chunk, "progress": False}})
    return Trainer(resolve_config(cfg, data.x[0], 4), data, log=None), data


def test_batch_norm_models_train_when_the_last_chunk_would_hold_one_item():
    trainer, data = labelled_trainer(4)
    trainer.model.train()
    loss = trainer.batch_loss((data.x[:9], data.labels[:9]))  # chunks 4 + 5, not 4 + 4 + 1
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in trainer.model.parameters())


def test_chunk_of_one_is_refused_for_batch_norm_and_exact_without():
    with pytest.raises(ValueError, match=r"grad_cache_chunk 1 .*batch norm .*>= 2"):
        labelled_trainer(1)
    grads = []
    for chunk in (None, 1):  # no batch norm (no hidden layer): one item at a time is exact
        trainer, data = labelled_trainer(chunk, hidden=())
        trainer.batch_loss((data.x[:9], data.labels[:9])).backward()
        grads.append([p.grad.clone() for p in trainer.model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# -- 3: weak-tuple features get the labelled inputs' checks ---------------------------------
def write_tuples(tmp_path, x, rows=((0, 1, 2), (3, 4, 5), (6, 7, 8), (1, 2, 3))):
    np.save(tmp_path / "x.npy", x)
    lines = "".join(",".join(str(v) for v in r) + "\n" for r in rows)
    (tmp_path / "t.csv").write_text("anchor,positive,negative\n" + lines)
    return tmp_path / "t.csv", tmp_path / "x.npy"


def test_tuple_features_are_checked_as_labelled_inputs(tmp_path):
    x = np.random.default_rng(0).random((20, 4)).astype(np.float32)
    nan = x.copy()
    nan[7, 2] = np.nan  # (an item of one tuple only: held out or trained, refused alike)
    with pytest.raises(ValueError, match=r"x\.npy: 1 of 20 items hold NaN .*row 7"):
        read_tuples_csv(*write_tuples(tmp_path, nan)[:1], "triplets", tmp_path / "x.npy")
    with pytest.raises(ValueError, match=r"x\.npy: x has shape \(20,\), one value per item"):
        read_tuples_csv(write_tuples(tmp_path, x[:, 0])[0], "triplets", tmp_path / "x.npy")
    with pytest.raises(TypeError, match=r"x\.npy: the features must be real numbers.*strings"):
        read_tuples_csv(write_tuples(tmp_path, np.array(["a"] * 20))[0], "triplets",
                        tmp_path / "x.npy")
    with pytest.warns(UserWarning, match=r"x\.npy: inputs reach \|x\| = 4\.99e\+04"):
        read_tuples_csv(write_tuples(tmp_path, x * 5e4)[0], "triplets", tmp_path / "x.npy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = read_tuples_csv(write_tuples(tmp_path, x)[0], "triplets", tmp_path / "x.npy")
    assert ds.items.shape == (20, 4)


# -- 9: tuple entries are plain ASCII integers ----------------------------------------------
@pytest.mark.parametrize("entry, words", [
    ("1_0", "got '1_0'"), ("\u0661", "got '\u0661'"), ("2.0", "got '2.0'"),
    ("-1", "entry -1 is negative"), ("1e2", "got '1e2'"),
])
def test_tuple_entries_must_be_plain_decimal_integers(tmp_path, entry, words):
    x = np.zeros((20, 4), dtype=np.float32)
    path, _ = write_tuples(tmp_path, x)
    path.write_text(f"anchor,positive,negative\n0,1,2\n{entry},2,3\n")
    with pytest.raises(ValueError, match=rf"t\.csv, line 3: .*{words}"):
        read_tuples_csv(path, "triplets", tmp_path / "x.npy")
    path.write_text("anchor,positive,negative\n+1,2,3\n 4 ,5,6\n")
    assert read_tuples_csv(path, "triplets", tmp_path / "x.npy").tuples.tolist() == [
        [1, 2, 3], [4, 5, 6]]


# -- 4: resume refuses changed data ---------------------------------------------------------
def weak_config(tmp_path, loss=None, epochs=2):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 6)).astype(np.float32)
    if not (tmp_path / "x.npy").exists():
        np.save(tmp_path / "x.npy", x)
        rows = [rng.choice(60, 3, replace=False) for _ in range(80)]
        (tmp_path / "t.csv").write_text("anchor,positive,negative\n" + "".join(
            f"{a},{p},{n}\n" for a, p, n in rows))
    return Config.from_dict({
        "name": "w", "data": {"kind": "triplets", "tuples": str(tmp_path / "t.csv"),
                              "features": str(tmp_path / "x.npy"), "test_fraction": 0.25},
        "model": {"name": "mlp", "dim": 4, "hidden": [8]},
        "loss": loss or {"name": "triplet_margin", "margin": 0.2},
        "training": {"epochs": epochs, "batch_size": 16, "num_threads": 1,
                     "progress": False}})


def interrupt(cfg, out):
    def stop(trainer, record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, out, log=quiet, callbacks=(stop,))


def test_resume_refuses_a_tuple_file_changed_since_the_run_started(tmp_path):
    cfg = weak_config(tmp_path)
    out = tmp_path / "run"
    interrupt(cfg, out)
    csv = tmp_path / "t.csv"
    original = csv.read_text()
    config_yaml = (out / "config.yaml").read_text()
    lines = original.splitlines(keepends=True)
    csv.write_text("".join(lines[:20] + lines[40:]))  # rows deleted: held-out drawn anew
    with pytest.raises(ValueError, match=r"the data changed since the run started: the "
                       r"training tuples, the held-out tuples differ"):
        train_run(cfg, out, resume=True, log=quiet)
    assert (out / "config.yaml").read_text() == config_yaml
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    csv.write_text(original)
    x = np.load(tmp_path / "x.npy")
    np.save(tmp_path / "x.npy", x + 1)  # the features edited
    with pytest.raises(ValueError, match=r"data changed since the run started: the items "):
        train_run(cfg, out, resume=True, log=quiet)
    np.save(tmp_path / "x.npy", x)
    result = train_run(cfg, out, resume=True, log=quiet)  # the data it started with
    assert len(result.history) == 2


def test_resume_refuses_a_labelled_file_changed_and_old_checkpoints_resume(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((80, 6)).astype(np.float32)
    labels = np.arange(80) % 4
    np.savez(tmp_path / "d.npz", x=x, labels=labels)
    cfg = Config.from_dict({
        "name": "l", "data": {"name": "npz", "path": str(tmp_path / "d.npz"),
                              "split": "stratified", "test_fraction": 0.25},
        "model": {"name": "mlp", "dim": 4, "hidden": [8]},
        "loss": {"name": "triplet_margin"},
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": 16},
        "training": {"epochs": 2, "num_threads": 1, "progress": False}})
    out = tmp_path / "run"
    interrupt(cfg, out)
    x2 = x.copy()
    x2[3] += 0.5
    np.savez(tmp_path / "d.npz", x=x2, labels=labels)
    with pytest.raises(ValueError, match="data changed since the run started: the training "
                       "items differ"):
        train_run(cfg, out, resume=True, log=quiet)
    state = load_checkpoint(out / "checkpoint.pt")  # a checkpoint of an older dmlkit
    del state["data"]
    torch.save(state, out / "checkpoint.pt")
    result = train_run(cfg, out, resume=True, log=quiet)  # resumes as before
    assert len(result.history) == 2


# -- 5 and 7: the losses a weak run takes ---------------------------------------------------
@pytest.mark.parametrize("loss", [
    {"name": "margin"},
    {"name": "margin", "learn_beta": True, "nu": 0.1},
    {"name": "weighted_sum", "losses": [{"name": "margin"}, {"name": "contrastive"}]},
])
def test_margin_loss_trains_weak_runs_with_one_beta(tmp_path, loss):
    cfg = weak_config(tmp_path, loss, epochs=1)
    result = train_run(cfg, tmp_path / "run", log=quiet)
    assert np.isfinite(result.history[0]["loss"])
    saved = Config.from_yaml(tmp_path / "run" / "config.yaml").loss
    assert "num_classes" not in json.dumps(saved)


@pytest.mark.parametrize("loss, words", [
    ({"name": "fast_ap"}, "'fast_ap' needs class labels"),
    ({"name": "vicreg"}, "'vicreg' takes no tuples"),
    ({"name": "cross_batch_memory", "loss": {"name": "contrastive"}},
     "'cross_batch_memory' needs class labels"),
    ({"name": "weighted_sum", "losses": [{"name": "triplet_margin"}, {"name": "fast_ap"}]},
     "'fast_ap' needs class labels"),
    ({"name": "weighted_sum", "losses": ["triplet_margin"], "miners": ["batch_hard"]},
     "'weighted_sum' has miners"),
])
def test_weak_runs_refuse_label_losses_before_anything_is_written(tmp_path, loss, words):
    cfg = weak_config(tmp_path, loss, epochs=1)
    with pytest.raises(ValueError, match=rf"cannot train from triplets .*{words}"):
        train_run(cfg, tmp_path / "run", log=quiet)
    assert not (tmp_path / "run").exists()


def test_every_loss_that_declares_it_trains_from_tuples_alone():
    """A loss with ``requires_labels`` False and ``accepts_indices`` True computes a loss
    from indices without labels, on triplets and on pairs."""
    from dmlkit.registry import LOSSES, build_from_config
    from dmlkit.training.build import loss_shape_params

    emb = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    tuples = [Triplets(torch.tensor([0, 3]), torch.tensor([1, 4]), torch.tensor([2, 5])),
              Pairs(torch.tensor([0, 3]), torch.tensor([1, 4]), torch.tensor([0, 2]),
                    torch.tensor([2, 5]))]
    nested = {"weighted_sum": {"losses": ["triplet_margin"]},
              "multiple_losses": {"losses": ["triplet_margin"]},
              "cross_batch_memory": {"loss": "contrastive"},
              "self_supervised": {"loss": "contrastive"}}
    checked = 0
    for name in LOSSES.names():
        cls = LOSSES.get(name)
        if cls.requires_labels or not cls.accepts_indices:
            continue
        params = inspect.signature(cls.__init__).parameters
        if any(p.default is inspect.Parameter.empty for k, p in params.items()
               if k != "self" and k not in nested.get(name, {})):
            continue  # (no default config)
        spec = loss_shape_params({"name": name, **nested.get(name, {})}, None, 8)
        for indices in tuples:
            x = emb.clone().requires_grad_(True)
            build_from_config(LOSSES, spec)(x, None, indices=indices).backward()
            assert torch.isfinite(x.grad).all(), name
        checked += 1
    assert checked >= 20


def test_fast_ap_keeps_its_zero_loss_without_valid_tuples():
    from dmlkit.losses.fast_ap import FastAPLoss

    x = torch.randn(1, 8, requires_grad=True)
    out = FastAPLoss()(x, torch.zeros(1, dtype=torch.long))
    assert out.item() == 0.0
    out.backward()
    assert torch.isfinite(x.grad).all()


# -- 6 and 8: export without the training data, and what its inputs hold ------------------
def test_export_reads_the_input_shape_of_any_model_from_its_config(monkeypatch):
    from types import SimpleNamespace

    from dmlkit.registry import MODELS
    from dmlkit.runs import export

    def no_data(config):
        raise AssertionError("the training data was read")

    monkeypatch.setattr(export, "build_splits", no_data)
    shapes = {}
    for name in MODELS.names():
        params = set(inspect.signature(MODELS.get(name).__init__).parameters)
        if "in_features" in params:
            spec = {"name": name, "in_features": 12}
            want: tuple[int, ...] = (12,)
        elif {"in_channels", "image_size"} <= params:
            spec = {"name": name, "in_channels": 3, "image_size": [8, 6]}
            want = (3, 8, 6)
        else:
            continue
        run = SimpleNamespace(config=SimpleNamespace(model=spec))
        shapes[name] = export.run_input_shape(run)
        assert shapes[name] == want, name
    assert {"mlp", "bias_free_mlp", "small_cnn", "bias_free_cnn"} <= set(shapes)


def test_a_bias_free_mlp_run_exports_without_its_data_and_says_what_its_inputs_hold(
        tmp_path):
    pytest.importorskip("onnx")
    from dmlkit.runs.export import export_run

    x = np.random.default_rng(0).random((60, 5)).astype(np.float32) * 3 - 1
    np.savez(tmp_path / "d.npz", x=x, labels=np.arange(60) % 3)
    cfg = Config.from_dict({
        "name": "b", "data": {"name": "npz", "path": str(tmp_path / "d.npz"),
                              "split": "stratified", "test_fraction": 0.3},
        "model": {"name": "bias_free_mlp", "dim": 4, "hidden": [8]},
        "loss": {"name": "contrastive"},
        "training": {"epochs": 1, "batch_size": 20, "num_threads": 1, "progress": False}})
    train_run(cfg, tmp_path / "run", log=quiet)
    info = export_run(tmp_path / "run", tmp_path / "with_data.pt", "torchscript")
    assert info["input_dtype"] == "float32" and info["input_shape"] == [5]
    low, high = info["input_range"]
    assert -1 <= low < 0 and 1 < high <= 2 and "rows of 5 features" in info["input_note"]
    assert json.loads((tmp_path / "with_data.pt.json").read_text())["input_range"] == [
        low, high]
    shutil.move(tmp_path / "d.npz", tmp_path / "gone.npz")
    info = export_run(tmp_path / "run", tmp_path / "m.onnx", "onnx")
    assert info["input_shape"] == [5] and info["n_features"] == 5
    assert info["input_range"] is None and "range unknown" in info["input_note"]
    json.loads((tmp_path / "m.onnx.json").read_text())  # (strict JSON: no NaN)


def test_an_image_export_records_channels_size_colour_and_range(tmp_path):
    from dmlkit.runs.export import export_run

    cfg = Config.from_dict({
        "name": "i", "data": {"name": "digits", "max_per_class": 6,
                              "max_heldout_per_class": 4},
        "model": {"name": "small_cnn", "dim": 4, "width": 4},
        "loss": {"name": "contrastive"},
        "training": {"epochs": 1, "batch_size": 20, "num_threads": 1, "progress": False}})
    train_run(cfg, tmp_path / "run", log=quiet)
    info = export_run(tmp_path / "run", tmp_path / "m.pt", "torchscript")
    assert info["input_channels"] == 1 and info["image_size"] == [8, 8]
    assert info["color"] == "grayscale" and info["input_range"] == [0.0, 1.0]
    assert info["input_dtype"] == "float32" and info["input_any_size"] is False
    note = info["input_note"]  # (digits: 0-16 divided by 16, not 8-bit pixels)
    assert "scaled as the training inputs were: values in [0, 1]" in note
    assert "255" not in note and "8-bit" not in note


def test_a_tuple_run_of_image_files_exports_its_0_1_range(tmp_path):
    """A tuple run has no labelled split to read the range from: images read from files
    are in [0, 1]; tuple-file features give their own range."""
    from types import SimpleNamespace

    from dmlkit.runs.export import input_description

    model = copy.deepcopy(nn.Identity())
    data = SimpleNamespace(tuples="t.csv", features=None, color="rgb", x_key="x")
    run = SimpleNamespace(config=SimpleNamespace(
        data=data, model={"name": "small_cnn", "in_channels": 3, "image_size": 4}),
        model=model)
    info = input_description(run, (3, 4, 4))
    assert info["input_range"] == [0.0, 1.0] and info["color"] == "rgb"
    np.save(tmp_path / "x.npy", np.linspace(-2, 5, 40, dtype=np.float32).reshape(10, 4))
    run.config.data = SimpleNamespace(tuples="t.csv", features=str(tmp_path / "x.npy"),
                                      color="auto", x_key="x")
    run.config.model = {"name": "mlp", "in_features": 4}
    info = input_description(run, (4,))
    assert info["input_range"] == [-2.0, 5.0] and "color" not in info
