"""Shared-weight tuple networks: one parameter set, gradients from every branch."""

from __future__ import annotations

import pytest
import torch

from dmlkit.functional import Pairs, Triplets
from dmlkit.models import MLPEmbedder, QuadrupletNetwork, SiameseNetwork, TripletNetwork


def mlp():
    torch.manual_seed(0)
    return MLPEmbedder(in_features=5, dim=3, hidden=(7,))


def inputs(k, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 5, generator=g) for _ in range(k)]


@pytest.mark.parametrize(
    "cls,k", [(SiameseNetwork, 2), (TripletNetwork, 3), (QuadrupletNetwork, 4)]
)
def test_one_parameter_set(cls, k):
    model = mlp()
    net = cls(model)
    assert [id(p) for p in net.parameters()] == [id(p) for p in model.parameters()]
    outs = net(*inputs(k))
    assert len(outs) == k and all(o.shape == (4, 3) for o in outs)
    with pytest.raises(ValueError, match=f"takes {k} inputs"):
        net(*inputs(k + 1))


@pytest.mark.parametrize("concat", [True, False])
def test_gradients_accumulate_from_all_branches(concat):
    net = TripletNetwork(mlp(), concat=concat).eval()  # eval: BatchNorm uses running stats
    xs = inputs(3, seed=1)
    weights = [torch.randn(4, 3, generator=torch.Generator().manual_seed(i)) for i in range(3)]

    def grads(branches):
        net.zero_grad()
        outs = net(*xs)
        sum((outs[b] * weights[b]).sum() for b in branches).backward()
        return [p.grad.clone() for p in net.parameters()]

    per_branch = [grads([b]) for b in range(3)]
    together = grads([0, 1, 2])
    for g_all, *g_parts in zip(together, *per_branch, strict=True):
        torch.testing.assert_close(g_all, sum(g_parts))
    # each branch really contributes (different inputs -> different gradients)
    assert not torch.allclose(per_branch[0][0], per_branch[1][0])


def test_branches_equal_the_model_and_concat_matches_separate():
    model = mlp().eval()
    xs = inputs(4, seed=2)
    joint = QuadrupletNetwork(model)(*xs)
    separate = QuadrupletNetwork(model, concat=False)(*xs)
    for x, a, b in zip(xs, joint, separate, strict=True):
        torch.testing.assert_close(a, model(x))
        torch.testing.assert_close(b, model(x))


def test_embed_tuples_gathers_from_one_pass():
    model = mlp().eval()
    items = inputs(1, n=6, seed=3)[0]
    trip = Triplets(torch.tensor([0, 1, 2]), torch.tensor([3, 3, 4]), torch.tensor([5, 0, 1]))
    ea, ep, en = TripletNetwork(model).embed_tuples(items, trip)
    ref = TripletNetwork(model)(items[trip.anchor], items[trip.positive], items[trip.negative])
    for got, want in zip((ea, ep, en), ref, strict=True):
        torch.testing.assert_close(got, want)
    pairs = Pairs(torch.tensor([0]), torch.tensor([1]), torch.tensor([2, 3]), torch.tensor([4, 5]))
    out = SiameseNetwork(model).embed_tuples(items, pairs)
    assert [o.shape[0] for o in out] == [1, 1, 2, 2]


def test_siamese_score_is_rowwise_distance():
    model = mlp().eval()
    x1, x2 = inputs(2, seed=4)
    d = SiameseNetwork(model).score(x1, x2)
    want = (
        model(x1) / model(x1).norm(dim=1, keepdim=True)
        - model(x2) / model(x2).norm(dim=1, keepdim=True)
    ).norm(dim=1)
    torch.testing.assert_close(d, want)


def test_rejects_non_module():
    with pytest.raises(TypeError, match="nn.Module"):
        SiameseNetwork(lambda x: x)
