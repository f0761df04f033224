"""Gradient caching (training.grad_cache_chunk): same loss and gradients, chunked memory."""

from __future__ import annotations

import pytest
import torch

from dmlkit.config import Config
from dmlkit.data import ArrayDataset
from dmlkit.training import Trainer, resolve_config


def trainer(chunk, loss="ntxent"):
    g = torch.Generator().manual_seed(0)
    data = ArrayDataset(torch.randn(64, 10, generator=g), torch.arange(64) % 8)
    cfg = Config.from_dict({
        "model": {"name": "mlp", "dim": 6, "hidden": [16], "dropout": 0.2},
        "loss": {"name": loss}, "training": {"grad_cache_chunk": chunk, "progress": False}})
    cfg = resolve_config(cfg, data.x[0], 8)
    return Trainer(cfg, data, log=None), data


@pytest.mark.parametrize("loss", ["ntxent", "multi_similarity", "contrastive"])
def test_chunked_embedding_gives_the_plain_gradients(loss):
    grads, values = [], []
    for chunk in (None, 16):
        t, data = trainer(chunk, loss)
        t.model.eval()  # batch norm in eval mode: statistics do not depend on the chunking
        torch.manual_seed(3)
        value = t.batch_loss((data.x, data.labels))
        value.backward()
        values.append(float(value.detach()))
        grads.append([p.grad.clone() for p in t.model.parameters()])
    assert values[0] == pytest.approx(values[1], abs=1e-6)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_bad_chunk():
    with pytest.raises(ValueError, match="grad_cache_chunk"):
        Config.from_dict({"training": {"grad_cache_chunk": 0}})
