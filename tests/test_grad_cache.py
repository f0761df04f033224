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


def test_recomputed_chunks_do_not_count_twice_in_batch_norm_statistics():
    import copy

    from dmlkit.config import Config
    from dmlkit.data import split_dataset
    from dmlkit.training import Trainer, resolve_config

    cfg = Config.from_dict({
        "name": "t", "data": {"name": "digits", "max_per_class": 12},
        "model": {"name": "small_cnn", "dim": 8, "width": 4},
        "sampler": {"name": "m_per_class", "m": 4, "batch_size": 40},
        "training": {"epochs": 1, "progress": False}})
    train, _ = split_dataset(cfg.data)

    def tracked(chunk):
        c = copy.deepcopy(cfg)
        c.training.grad_cache_chunk = chunk
        trainer = Trainer(resolve_config(c, train.x[0], int(train.labels.max()) + 1), train,
                          log=None)
        trainer.fit()
        return [int(v) for k, v in trainer.model.state_dict().items()
                if k.endswith("num_batches_tracked")], len(trainer.sampler)

    plain, batches = tracked(None)
    chunked, _ = tracked(8)
    assert plain == [batches] * len(plain)
    assert chunked == [batches * 5] * len(chunked)  # 5 chunks of 8 a batch, each once


def test_mixed_precision_gives_the_loss_float32_embeddings():
    from dmlkit.config import Config
    from dmlkit.data import split_dataset
    from dmlkit.training import Trainer, resolve_config

    cfg = Config.from_dict({
        "name": "t", "data": {"name": "digits", "max_per_class": 12},
        "model": {"name": "mlp", "dim": 8, "hidden": [16]},
        "training": {"epochs": 1, "progress": False, "amp": True}})
    train, _ = split_dataset(cfg.data)
    trainer = Trainer(resolve_config(cfg, train.x[0], 10), train, log=None)
    emb = trainer.embed_batch(train.x[:8].flatten(1))
    assert emb.dtype == torch.float32
