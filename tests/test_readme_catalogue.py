"""The README's catalogue names what the registries hold, and its comparisons with
pytorch-metric-learning say what holds (values, not gradients, for ``angular``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dmlkit.registry import MODELS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def squashed(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_every_registered_model_is_named():
    inside = section("What is inside")
    for name in ("mlp", "small_cnn", "bias_free_mlp", "bias_free_cnn"):
        assert f"[{name}]" in inside, name
    for name in MODELS.names():  # (the pretrained ones have sections of their own)
        assert f"`{name}`" in README or f"[{name}]" in README, name


def test_the_classical_fit_comment_lists_every_method():
    from dmlkit.classical.frozen import _learners

    (line,) = [s for s in section("Command line").splitlines() if "classical fit" in s]
    comment = line.split("#", 1)[1]
    for method in _learners():
        assert method.upper() in comment, method


def test_the_angular_exception_says_values_and_holds():
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    from dmlkit.losses import AngularLoss

    text = squashed(section("What is inside"))
    assert "equal loss values on unit-length embeddings only" in text
    assert "the gradients differ" in text
    assert "`triplet_margin` with `swap=True` and `ref_embeddings`" in text
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(32, 8, generator=g, dtype=torch.float64), dim=1)
    y = torch.randint(0, 4, (32,), generator=g)
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    va, vb = AngularLoss()(a, y), pml_losses.AngularLoss()(b, y)
    va.backward()
    vb.backward()
    torch.testing.assert_close(va, vb)  # values agree on unit-length embeddings
    assert (a.grad - b.grad).abs().max() > 1e-2  # gradients do not
