"""Attributions of a learned similarity: definitions, completeness and sanity checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dmlkit.explain import integrated_gradients, nearest_prototypes, occlusion, similarity


def test_integrated_gradients_completeness():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    a, b = torch.randn(6), torch.randn(6)
    attr = integrated_gradients(model, a, b, steps=256)
    with torch.no_grad():
        gap = similarity(model, a[None], b[None]) - similarity(model, torch.zeros(1, 6), b[None])
    assert float(attr.sum()) == pytest.approx(float(gap), abs=1e-3)
    assert attr.shape == a.shape


def test_occlusion_equals_loop_reference():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    a, b = torch.rand(1, 4, 4), torch.rand(1, 4, 4)
    got = occlusion(model, a, b, patch=2, stride=1)
    with torch.no_grad():
        base = float(similarity(model, a[None], b[None]))
        ref = torch.zeros(4, 4)
        cnt = torch.zeros(4, 4)
        for i in range(3):
            for j in range(3):
                h = a.clone()
                h[:, i : i + 2, j : j + 2] = 0
                drop = base - float(similarity(model, h[None], b[None]))
                ref[i : i + 2, j : j + 2] += drop
                cnt[i : i + 2, j : j + 2] += 1
    torch.testing.assert_close(got, ref / cnt)


def test_attribution_mass_falls_on_the_deciding_features():
    """Only features 0-2 decide the class; a metric trained on it is explained by them."""
    from dmlkit.config import Config
    from dmlkit.data import ArrayDataset
    from dmlkit.training import Trainer, resolve_config

    rng = np.random.default_rng(0)
    n, d = 600, 12
    y = rng.integers(0, 4, n)
    x = rng.normal(0, 1.0, (n, d)).astype(np.float32)
    x[:, 0] += 3 * (y % 2)
    x[:, 1] += 3 * (y // 2)
    x[:, 2] += 1.5 * (y == 3)
    data = ArrayDataset(x, y)
    cfg = resolve_config(Config.from_dict({
        "model": {"name": "mlp", "dim": 8, "hidden": [32]}, "loss": {"name": "multi_similarity"},
        "sampler": {"name": "m_per_class", "m": 8, "batch_size": 32},
        "training": {"epochs": 8, "progress": False}}), data.x[0], 4)
    trainer = Trainer(cfg, data, log=None)
    trainer.fit()
    model = trainer.model.eval()
    mass = torch.zeros(d)
    for i in range(20):
        j = i + 20 if y[i + 20] != y[i] else i + 21
        mass += integrated_gradients(model, x[i], x[j]).abs()
        mass += integrated_gradients(model, x[j], x[i]).abs()
    share = float(mass[:3].sum() / mass.sum())
    assert share > 0.6  # 3 of 12 features: chance share 0.25
    occ = torch.zeros(d)
    for i in range(10):
        occ += occlusion(model, x[i], x[i + 30], patch=1).abs()
    assert float(occ[:3].sum() / occ.sum()) > 0.5


def test_occlusion_and_gradients_agree_on_digits():
    """Top-quarter regions of occlusion and of integrated gradients overlap beyond chance."""
    from dmlkit.config import Config
    from dmlkit.runs import build_splits, load_run
    from dmlkit.training import train_run

    cfg = Config.from_dict({"data": {"name": "digits"},
                            "model": {"name": "small_cnn", "dim": 16},
                            "training": {"epochs": 3, "progress": False}})
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        train_run(cfg, tmp + "/run", log=lambda *a: None)
        run = load_run(tmp + "/run")
        _, held = build_splits(run.config)
    overlaps = []
    for i in range(12):
        a, b = held.x[i], held.x[i + 100]
        ig = integrated_gradients(run.model, a, b).abs().sum(0)  # (8, 8)
        ig = torch.nn.functional.avg_pool2d(ig[None, None], 2, 1, padding=0)[0, 0]
        ig = torch.nn.functional.interpolate(ig[None, None], size=(8, 8))[0, 0]
        occ = occlusion(run.model, a, b, patch=2).abs()
        top_ig = ig.flatten() >= ig.flatten().quantile(0.75)
        top_occ = occ.flatten() >= occ.flatten().quantile(0.75)
        overlaps.append(float((top_ig & top_occ).sum() / top_occ.sum()))
    assert np.mean(overlaps) > 0.4  # chance: 0.25
    protos = nearest_prototypes(run.model, held.x[0], held.x, held.labels, k=3)
    assert len(protos) == 3 and protos[0]["cosine"] >= protos[1]["cosine"]


def test_bad_input():
    model = nn.Linear(4, 2)
    with pytest.raises(ValueError, match="one shape"):
        integrated_gradients(model, torch.zeros(4), torch.zeros(3))
    with pytest.raises(ValueError, match="steps"):
        integrated_gradients(model, torch.zeros(4), torch.zeros(4), steps=0)
    with pytest.raises(ValueError, match="metric"):
        similarity(model, torch.zeros(1, 4), torch.zeros(1, 4), metric="l1")
