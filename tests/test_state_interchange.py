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


def _loads_both_ways(ours, theirs, seed: int, n: int) -> None:
    """``theirs``' state dict loaded into ``ours`` gives the same loss, and ``ours``
    (its parameters changed) loaded back into ``theirs`` too."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (n,), generator=g)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    torch.testing.assert_close(ours(x, y), theirs(x, y))
    with torch.no_grad():
        for p in ours.parameters():
            p.mul_(1.5)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    torch.testing.assert_close(ours(x, y), theirs(x, y))


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_dicts_load_both_ways(name):
    ours, theirs = pair(name)
    mine, other = ours.state_dict(), theirs.state_dict()
    assert {k: (type(v), v.shape) for k, v in mine.items()} == {
        k: (type(v), v.shape) for k, v in other.items()}
    for key in mine:
        assert type(getattr(ours, key)) is type(getattr(theirs, key))  # nn.Parameter both
    _loads_both_ways(ours, theirs, seed=1, n=12)


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


# -- MultipleLosses: pytorch-metric-learning's keys, older dmlkit keys still load ----------
def _multiple(form: str):
    """Ours and the library's MultipleLosses over arcface + contrastive + proxy_anchor
    (a miner for the second), fp64, with the same class vectors."""
    from dmlkit.losses import MultipleLosses
    from dmlkit.registry import MINERS

    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    names = ["arc", "con", "pa"]
    torch.manual_seed(0)
    ours = [LOSSES.build("arcface", num_classes=C, embedding_size=D),
            LOSSES.build("contrastive"),
            LOSSES.build("proxy_anchor", num_classes=C, embedding_size=D)]
    theirs = [pml_losses.ArcFaceLoss(C, D), pml_losses.ContrastiveLoss(),
              pml_losses.ProxyAnchorLoss(C, D)]
    our_miner, their_miner = MINERS.build("batch_hard"), pml_miners.BatchHardMiner()
    if form == "list":
        a = MultipleLosses(ours, miners=[None, our_miner, None])
        b = pml_losses.MultipleLosses(theirs, miners=[None, their_miner, None])
    else:
        a = MultipleLosses(dict(zip(names, ours, strict=True)), miners={"con": our_miner})
        b = pml_losses.MultipleLosses(dict(zip(names, theirs, strict=True)),
                                      miners={"con": their_miner})
    return a.double(), b.double()


@pytest.mark.parametrize("form", ["list", "dict"])
def test_multiple_losses_state_dicts_have_the_library_keys_and_load_both_ways(form):
    ours, theirs = _multiple(form)
    mine, other = ours.state_dict(), theirs.state_dict()
    prefix = "losses.0." if form == "list" else "losses.arc."
    assert prefix + "W" in mine
    assert {k: v.shape for k, v in mine.items()} == {k: v.shape for k, v in other.items()}
    _loads_both_ways(ours, theirs, seed=2, n=16)


@pytest.mark.parametrize("form", ["list", "dict"])
def test_multiple_losses_state_under_the_older_keys_still_loads(form):
    """Checkpoints written before the rename (``loss_modules.<i>``, ``miner_modules.<j>``
    for the j-th loss that has a miner) resume: their tensors land on the same losses and
    miners, strictly."""
    from dmlkit.losses import MultipleLosses
    from dmlkit.registry import MINERS

    def build():
        torch.manual_seed(3)
        losses = [LOSSES.build("arcface", num_classes=C, embedding_size=D),
                  LOSSES.build("proxy_anchor", num_classes=C, embedding_size=D)]
        miners = [None, MINERS.build("distance_weighted", seed=7)]  # (extra state: its RNG)
        if form == "dict":
            return MultipleLosses({"arc": losses[0], "pa": losses[1]}, miners={"pa": miners[1]})
        return MultipleLosses(losses, miners=miners)

    saved = build()
    with torch.no_grad():
        for p in saved.parameters():
            p.add_(1.0)
    slot = {"list": ("0", "1"), "dict": ("arc", "pa")}[form]
    old = {}
    for key, value in saved.state_dict().items():
        key = key.replace(f"losses.{slot[0]}.", "loss_modules.0.")
        key = key.replace(f"losses.{slot[1]}.", "loss_modules.1.")
        old[key.replace(f"miners.{slot[1]}.", "miner_modules.0.")] = value
    assert any(k.startswith("loss_modules.1.") for k in old)
    assert any(k.startswith("miner_modules.0.") for k in old)
    fresh = build()
    fresh.load_state_dict(old, strict=True)
    for (k, a), (_, b) in zip(fresh.state_dict().items(), saved.state_dict().items(),
                              strict=True):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b, msg=k)
    # nested one level down (a prefix in front of the old keys) too
    outer, again = torch.nn.ModuleDict({"loss": build()}), {f"loss.{k}": v for k, v in old.items()}
    outer.load_state_dict(again, strict=True)
    torch.testing.assert_close(outer["loss"].loss_modules[1].proxies, saved.loss_modules[1].proxies)
