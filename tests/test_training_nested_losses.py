"""Composite losses (``multiple_losses``, ``weighted_sum``, wrappers) with proxy and
classifier losses inside: their ``num_classes`` / ``embedding_size`` are filled from the
data and the model, their parameters are trained, and `dmlkit train` runs and resumes."""

from __future__ import annotations

import pytest
import torch
import yaml
from typer.testing import CliRunner

from dmlkit.cli.main import app
from dmlkit.config.compare import config_changes
from dmlkit.config.schema import Config
from dmlkit.losses import ArcFaceLoss, MultiSimilarityLoss, ProxyAnchorLoss
from dmlkit.training import train_run
from dmlkit.training.build import build_loss, resolve_config
from dmlkit.training.rng import rng_scope

MULTI = """
name: nested
data: {name: digits, max_per_class: 12, max_heldout_per_class: 10}
model: {name: mlp, dim: 8, hidden: [16]}
loss:
  name: multiple_losses
  losses:
    - {name: arcface}
    - {name: multi_similarity}
  weights: [1.0, 0.5]
sampler: {name: m_per_class, m: 4, batch_size: 20}
training: {epochs: 1, num_threads: 1, progress: false}
"""


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def quiet(*_args: object) -> None:
    return None


@pytest.mark.parametrize(
    "loss",
    [
        {"name": "multiple_losses", "losses": [{"name": "arcface"}, "proxy_anchor"]},
        {"name": "weighted_sum", "losses": [{"name": "arcface"}, {"name": "proxy_anchor"}]},
        {"name": "weighted_sum", "losses": {"a": {"name": "arcface"}, "p": "proxy_anchor"},
         "weights": {"a": 1.0, "p": 2.0}},
    ],
    ids=["multiple_losses-list", "weighted_sum-list", "weighted_sum-dict"],
)
def test_nested_proxy_losses_are_filled_and_built(loss):
    cfg = Config.from_dict({"model": {"name": "mlp", "dim": 12}, "loss": loss})
    resolved = resolve_config(cfg, torch.zeros(64), num_classes=7)
    inner = resolved.loss["losses"]
    specs = list(inner.values()) if isinstance(inner, dict) else inner
    for spec in specs:  # names were expanded into filled configs
        assert spec["num_classes"] == 7 and spec["embedding_size"] == 12
    assert cfg.loss == loss  # the given config is not modified
    built = build_loss(resolved)
    arcface, proxy = list(built.loss_modules)
    assert isinstance(arcface, ArcFaceLoss) and isinstance(proxy, ProxyAnchorLoss)
    assert tuple(arcface.W.shape) == (12, 7) and tuple(proxy.proxies.shape) == (7, 12)


def test_fill_recurses_at_any_depth_and_keeps_given_values():
    from dmlkit.training.build import loss_shape_params

    spec = {"name": "multiple_losses", "losses": [
        {"name": "weighted_sum", "losses": [{"name": "normalized_softmax", "num_classes": 3}]},
        {"name": "cross_batch_memory", "loss": "contrastive"},
        "multi_similarity",
        "p2s_grad",
    ]}  # fmt: skip
    filled = loss_shape_params(spec, num_classes=5, dim=4)
    deep = filled["losses"][0]["losses"][0]
    assert deep == {"name": "normalized_softmax", "num_classes": 3, "embedding_size": 4}
    assert filled["losses"][1] == {"name": "cross_batch_memory", "loss": "contrastive",
                                   "embedding_size": 4}
    assert filled["losses"][2] == "multi_similarity"  # nothing to fill: left as it was
    assert filled["losses"][3] == {"name": "p2s_grad", "num_classes": 5, "descriptors_dim": 4}


def test_train_run_trains_the_nested_loss_parameters(tmp_path):
    cfg = Config.from_yaml(MULTI)
    result = train_run(cfg, tmp_path / "run", log=quiet)
    assert len(result.history) == 1 and result.history[0]["loss"] > 0
    saved = Config.from_yaml(tmp_path / "run" / "config.yaml")
    assert saved.loss["losses"][0] == {"name": "arcface", "num_classes": 10, "embedding_size": 8}
    with rng_scope(saved.training.seed):  # the loss as the trainer built it, untrained
        start = build_loss(saved)
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["loss"]
    assert isinstance(start.loss_modules[1], MultiSimilarityLoss)
    before = start.loss_modules[0].W
    after = trained["losses.0.W"]  # (pytorch-metric-learning's key)
    assert after.shape == before.shape == (8, 10)
    assert not torch.allclose(after, before)  # the optimizer stepped the class weights


def test_cli_trains_and_resumes_a_nested_classifier_loss(tmp_path):
    path = tmp_path / "multi.yaml"
    path.write_text(MULTI)
    out = tmp_path / "run"
    runner = CliRunner()
    first = runner.invoke(app, ["train", str(path), "--out", str(out), "--no-progress"])
    assert first.exit_code == 0, first.output
    assert "MAP@R" in first.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["loss"]["losses"][0]["num_classes"] == 10
    more = runner.invoke(app, ["train", str(path), "--out", str(out), "--resume",
                               "--epochs", "2", "--no-progress"])
    assert more.exit_code == 0, more.output
    assert len((out / "train.log").read_text().splitlines()) == 2


def test_config_changes_compare_nested_losses_on_the_given_keys():
    given = Config.from_yaml(MULTI)
    saved = resolve_config(given, torch.zeros(64), num_classes=10)
    assert config_changes(given, saved) == []  # filled-in keys are not changes
    other = Config.from_yaml(MULTI.replace("{name: multi_similarity}",
                                           "{name: multi_similarity, alpha: 3.0}"))
    changes = config_changes(other, saved)
    assert len(changes) == 1 and changes[0].startswith("loss.losses:")
    fewer = Config.from_yaml(MULTI.replace("    - {name: multi_similarity}\n", "")
                             .replace("[1.0, 0.5]", "[1.0]"))
    assert [c.split(":")[0] for c in config_changes(fewer, saved)] == ["loss.losses",
                                                                      "loss.weights"]
