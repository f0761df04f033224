"""Learnable state has pytorch-metric-learning's names, types and shapes.

A state dict saved by either library loads into the other's loss of the same name
(strictly), and both then compute the same value. State saved by older dmlkit versions
(class vectors as ``(rows, D)`` under ``weight`` / ``centers``) still loads.
"""

from __future__ import annotations

import pytest
import torch

from dmlkit.registry import LOSSES

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")

C, D = 5, 6

CASES = {
    "arcface": ("ArcFaceLoss", {}),
    "cosface": ("CosFaceLoss", {}),
    "sphereface": ("SphereFaceLoss", {}),
    "normalized_softmax": ("NormalizedSoftmaxLoss", {}),
    "subcenter_arcface": ("SubCenterArcFaceLoss", {"sub_centers": 3}),
    "soft_triple": ("SoftTripleLoss", {"centers_per_class": 4}),
    "proxy_nca": ("ProxyNCALoss", {}),
    "proxy_anchor": ("ProxyAnchorLoss", {}),
    "large_margin_softmax": ("LargeMarginSoftmaxLoss", {}),
}


def pair(name):
    pml_name, extra = CASES[name]
    torch.manual_seed(0)
    ours = LOSSES.build(name, num_classes=C, embedding_size=D, **extra).double()
    theirs = getattr(pml_losses, pml_name)(num_classes=C, embedding_size=D, **extra).double()
    return ours, theirs


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_dicts_load_both_ways(name):
    ours, theirs = pair(name)
    mine, other = ours.state_dict(), theirs.state_dict()
    assert {k: (type(v), v.shape) for k, v in mine.items()} == {
        k: (type(v), v.shape) for k, v in other.items()}
    for key in mine:
        assert type(getattr(ours, key)) is type(getattr(theirs, key))  # nn.Parameter both
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (12,), generator=g)
    ours.load_state_dict(other, strict=True)
    torch.testing.assert_close(ours(x, y), theirs(x, y))
    with torch.no_grad():
        for p in ours.parameters():
            p.mul_(1.5)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    torch.testing.assert_close(ours(x, y), theirs(x, y))


@pytest.mark.parametrize("name,key,old", [("arcface", "W", "weight"),
                                           ("subcenter_arcface", "W", "weight"),
                                           ("soft_triple", "fc", "centers")])
def test_older_row_layout_still_loads(name, key, old):
    ours, _ = pair(name)
    rows = getattr(ours, key).detach().T.clone() * 2.0  # (rows, D), as saved before
    again, _ = pair(name)
    again.load_state_dict({old: rows})
    torch.testing.assert_close(getattr(again, key).detach(), rows.T)


@pytest.mark.parametrize("learn_beta", [False, True])
@pytest.mark.parametrize("num_classes", [None, C])
def test_margin_loss_beta_like_pml(learn_beta, num_classes):
    kw = {"learn_beta": learn_beta, "num_classes": num_classes, "beta": 0.9}
    ours, theirs = LOSSES.build("margin", **kw), pml_losses.MarginLoss(**kw)
    assert type(ours.beta) is type(theirs.beta)
    assert ours.beta.shape == theirs.beta.shape == (num_classes or 1,)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    if learn_beta:
        with torch.no_grad():
            theirs.beta.add_(torch.linspace(0.0, 0.4, num_classes or 1))
        ours.load_state_dict(theirs.state_dict(), strict=True)
        torch.testing.assert_close(ours.beta, theirs.beta)
    x, y = torch.randn(20, 4), torch.randint(0, C, (20,))
    torch.testing.assert_close(ours(x, y), theirs(x, y))
