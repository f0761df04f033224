"""Settings that cannot train are refused when they are given, not found out epochs
later: samplers whose every batch holds one class (no negative pair for a pair or
tuple loss), non-integer sampler sizes, and NaN / infinite loss and miner parameters;
a loss that still turns non-finite in training ends the CLI with one error line."""

from __future__ import annotations

import inspect
import math
import typing
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import dmlkit.losses  # noqa: F401 - registers the losses
import dmlkit.miners  # noqa: F401 - registers the miners
from dmlkit.cli.main import app
from dmlkit.config import Config
from dmlkit.registry import LOSSES, MINERS
from dmlkit.samplers import HierarchicalSampler, MPerClassSampler
from dmlkit.training import Trainer
from dmlkit.training.run import build_splits, resolve_config

runner = CliRunner()

TINY = """
name: tiny
data: {name: digits, max_per_class: 10, max_heldout_per_class: 10}
model: {name: mlp, dim: 8, hidden: [16]}
loss: {name: triplet_margin, margin: 0.2}
sampler: {name: m_per_class, m: 2, batch_size: 10}
training: {epochs: 1, num_threads: 1}
"""

FLAT = np.repeat(np.arange(5), 4)  # 5 classes of 4
HIER = np.stack([np.repeat(np.arange(2), 8), np.repeat(np.arange(4), 4)], axis=1)  # (16, 2)


# -- one class in every batch ------------------------------------------------------------

def test_one_class_batches_are_warned_about_at_construction():
    with pytest.warns(UserWarning, match="every batch holds one class"):
        s = MPerClassSampler(FLAT, m=4, batch_size=4)
    assert s.classes_per_batch == 1
    assert all(len(set(FLAT[b].tolist())) == 1 for b in s)  # (as warned)
    with pytest.warns(UserWarning, match="every batch holds one class"):
        h = HierarchicalSampler(HIER, batch_size=4, m=4, classes_per_super=1)
    assert h.classes_per_batch == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # two classes a batch: no warning
        assert MPerClassSampler(FLAT, m=2, batch_size=4).classes_per_batch == 2
        assert HierarchicalSampler(HIER, batch_size=8, m=4, classes_per_super=1
                                   ).classes_per_batch == 2


def _trainer(loss, sampler, tmp=None, **extra):
    raw = {"name": "one", "data": {"name": "digits", "max_per_class": 10,
                                   "max_heldout_per_class": 4},
           "model": {"name": "mlp", "dim": 8, "hidden": [16]}, "loss": loss,
           "sampler": sampler, "training": {"epochs": 2, "num_threads": 1}, **extra}
    config = Config.from_dict(raw)
    train, _ = build_splits(config, for_training=True)
    resolved = resolve_config(config, train.x[0], int(train.labels.max()) + 1)
    return Trainer(resolved, train, log=None)


@pytest.mark.parametrize("loss", ["triplet_margin", "contrastive", "multi_similarity",
                                  {"name": "weighted_sum",
                                   "losses": ["triplet_margin", "contrastive"]}])
def test_in_batch_losses_on_one_class_batches_are_refused(loss):
    """No negative pair in any batch: a triplet loss is 0 every batch, a contrastive
    loss only pulls items together; both are refused before any epoch."""
    with warnings.catch_warnings(record=True) as seen, pytest.raises(
            ValueError, match="one class in every batch.*no negative pair"):
        warnings.simplefilter("always")
        _trainer(loss, {"name": "m_per_class", "m": 4, "batch_size": 4})
    assert not seen  # said once, as the error


@pytest.mark.parametrize("loss", ["normalized_softmax", "proxy_anchor", "arcface",
                                  {"name": "weighted_sum",
                                   "losses": ["triplet_margin", "proxy_anchor"]},
                                  {"name": "cross_batch_memory", "loss": "triplet_margin",
                                   "memory_size": 32}])
def test_losses_with_other_negatives_still_train_on_one_class_batches(loss):
    """Class weights, proxies or a memory of earlier batches supply the negatives."""
    with pytest.warns(UserWarning, match="every batch holds one class"):
        trainer = _trainer(loss, {"name": "m_per_class", "m": 4, "batch_size": 4})
    before = [p.detach().clone() for p in trainer.model.parameters()]
    history = trainer.fit()
    assert all(h["loss"] > 0 for h in history)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(),
                                                      strict=True))


def test_cli_one_class_batches_refused_without_a_run_dir(tmp_path):
    (tmp_path / "c.yaml").write_text(TINY)
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(tmp_path / "c.yaml"), "--out", str(out),
                              "--no-progress", "--set",
                              "sampler={name: m_per_class, m: 8, batch_size: 8}"])
    assert res.exit_code == 1
    assert "error: sampler 'm_per_class' puts one class in every batch" in res.output
    assert "epoch" not in res.output and not out.exists()


def test_hierarchical_sampler_of_one_leaf_a_batch_refused(tmp_path):
    labels = np.stack([np.repeat(np.arange(2), 20), np.repeat(np.arange(4), 10)], axis=1)
    x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    np.savez(tmp_path / "h.npz", x=x, labels=labels)
    (tmp_path / "h.yaml").write_text(
        f"name: h\ndata: {{name: npz, path: {tmp_path / 'h.npz'}, split: stratified}}\n"
        "model: {name: mlp, dim: 4, hidden: [8]}\nloss: hierarchical_triplet\n"
        "sampler: {name: hierarchical, batch_size: 4, m: 4, classes_per_super: 1}\n"
        "training: {epochs: 1, num_threads: 1}\n")
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(tmp_path / "h.yaml"), "--out", str(out),
                              "--no-progress"])
    assert res.exit_code == 1
    assert "error: sampler 'hierarchical' puts one class in every batch" in res.output
    assert not out.exists()


# -- integer sizes ------------------------------------------------------------------------

@pytest.mark.parametrize("make, bad", [
    (lambda v: MPerClassSampler(FLAT, m=2, batch_size=v), "batch_size"),
    (lambda v: MPerClassSampler(FLAT, m=v, batch_size=4), "m"),
    (lambda v: MPerClassSampler(FLAT, m=2, batch_size=4, num_batches=v), "num_batches"),
    (lambda v: HierarchicalSampler(HIER, batch_size=v, m=2), "batch_size"),
    (lambda v: HierarchicalSampler(HIER, batch_size=4, m=v), "m"),
    (lambda v: HierarchicalSampler(HIER, batch_size=4, m=2, classes_per_super=v),
     "classes_per_super"),
])
@pytest.mark.parametrize("value", [4.0, 2.0, True, "4"])
def test_sampler_sizes_must_be_ints(make, bad, value):
    with pytest.raises(TypeError, match=f"{bad} must be an int, got {value!r}"):
        make(value)


def test_numpy_integer_sizes_are_ints():
    s = MPerClassSampler(FLAT, m=np.int64(2), batch_size=np.int32(4))
    assert [len(b) for b in s] == [4] * 5 and type(s.batch_size) is int


# -- finite hyper-parameters --------------------------------------------------------------

_EXTRA = {"manifold": {"l": 16}, "p2s_grad": {"descriptors_dim": 16},
          "ranked_list": {"margin": 0.4, "Tn": 1}}


def _has_float(hint) -> bool:
    return hint is float or any(_has_float(a) for a in typing.get_args(hint))


def _float_params():
    for registry in (LOSSES, MINERS):
        for name in registry.names():
            cls = registry.get(name)
            for param, hint in typing.get_type_hints(cls.__init__).items():
                if param != "return" and _has_float(hint):
                    yield pytest.param(registry, name, param, id=f"{name}.{param}")


def _build(registry, name, **kw):
    cls = registry.get(name)
    params = inspect.signature(cls.__init__).parameters
    base = dict(_EXTRA.get(name, {}))
    base.update({k: v for k, v in (("num_classes", 4), ("embedding_size", 16))
                 if k in params})
    if "loss" in params:
        base["loss"] = LOSSES.get("triplet_margin")()
    if "losses" in params:
        base["losses"] = [LOSSES.get("triplet_margin")()]
    return cls(**{**base, **kw})


@pytest.mark.parametrize("registry, name, param", list(_float_params()))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_float_parameters_are_refused_when_built(registry, name, param, bad):
    """Every float parameter of every registered loss and miner (margins, scales,
    temperatures, weights, ...) refuses NaN and +-inf with an error naming it, except
    where infinity is documented (``infinite_ok``: the open ends of a miner's distance
    range, ManifoldLoss's ``lambdaC``), which still refuses NaN."""
    cls = registry.get(name)
    hint = typing.get_type_hints(cls.__init__)[param]
    if float in (hint, *typing.get_args(hint)):
        value = bad
    elif typing.get_origin(typing.get_args(hint)[0]) is tuple:  # a (low, high) range
        value = (0.0, bad) if bad > 0 else (bad, 1.0)
    else:  # a sequence of floats (one per level, one per loss)
        value = [bad]
    if param in cls.infinite_ok and bad == math.inf:
        _build(registry, name, **{param: value})
        return
    if param in cls.infinite_ok and bad == -math.inf and "range" in param:
        _build(registry, name, **{param: value})  # an open low end
        return
    with pytest.raises(ValueError, match=param):
        _build(registry, name, **{param: value})


def test_nan_margins_name_the_parameter():
    with pytest.raises(ValueError, match=r"TripletMarginLoss: margin must be a finite number"):
        LOSSES.get("triplet_margin")(margin=math.nan)
    with pytest.raises(ValueError, match=r"HierarchicalTripletLoss: margins must hold only "
                                         r"finite numbers, got \(nan, 0.1\)"):
        LOSSES.get("hierarchical_triplet")(margins=[math.nan, 0.1])
    with pytest.raises(ValueError, match="beta must hold only finite numbers"):
        LOSSES.get("margin")(beta=[math.nan], learn_beta=True)
    with pytest.raises(ValueError, match="TripletMarginMiner: margin must be a finite"):
        MINERS.get("triplet_margin")(margin=math.nan)
    with pytest.raises(ValueError, match="allowed_neg_range must hold no NaN"):
        MINERS.get("batch_easy_hard")(allowed_neg_range=(math.nan, 1.0))
    loss = LOSSES.get("triplet_margin")(margin=0.1)
    with pytest.raises(ValueError, match="margin must be a finite number"):
        loss.margin = math.inf  # later assignments too
    assert loss.margin == 0.1


def test_cli_nan_margin_is_one_error_line_and_no_run_dir(tmp_path):
    (tmp_path / "c.yaml").write_text(TINY)
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(tmp_path / "c.yaml"), "--out", str(out),
                              "--no-progress", "--set", "loss.margin=.nan"])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit)
    assert "error: TripletMarginLoss: margin must be a finite number, got nan" in res.output
    assert "Traceback" not in res.output and not out.exists()


def test_cli_non_finite_loss_in_training_is_one_error_line(tmp_path):
    """A finite but absurd setting can still make the loss NaN at the first batch: the
    CLI ends with the trainer's message as one error line, as for other config faults."""
    (tmp_path / "c.yaml").write_text(TINY)
    res = runner.invoke(app, ["train", str(tmp_path / "c.yaml"), "--out",
                              str(tmp_path / "run"), "--no-progress", "--set",
                              "loss={name: normalized_softmax, temperature: 1.0e-300}"])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit)  # not a traceback
    assert "error: loss is nan at epoch 1, batch 1; lower optimizer.lr" in res.output
