"""Distances and label relations against naive loops."""

from __future__ import annotations

import math

import pytest
import torch

from dmlkit.distances import CosineSimilarity, DotProductSimilarity, EuclideanDistance
from dmlkit.functional import (
    all_pairs,
    all_triplets,
    pairs_to_triplets,
    pos_neg_masks,
    same_label,
    same_label_at_level,
    triplets_to_pairs,
)


def naive_matrix(fn, x, y):
    return torch.tensor([[fn(a, b) for b in y] for a in x], dtype=torch.float64)


def l2(a, b):
    return math.sqrt(sum((float(u) - float(v)) ** 2 for u, v in zip(a, b, strict=True)))


def dot(a, b):
    return sum(float(u) * float(v) for u, v in zip(a, b, strict=True))


def unit(a):
    n = math.sqrt(dot(a, a))
    return [float(u) / n for u in a]


@pytest.mark.parametrize("normalize", [True, False])
def test_euclidean_matches_loops(normalize):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.randn(4, 5, generator=g, dtype=torch.float64)
    prep = (lambda a: unit(a)) if normalize else (lambda a: a)
    d = EuclideanDistance(normalize_embeddings=normalize)
    ref = naive_matrix(lambda a, b: l2(prep(a), prep(b)), x, y)
    torch.testing.assert_close(d(x, y), ref, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(
        EuclideanDistance(squared=True, normalize_embeddings=normalize)(x, y), ref**2
    )
    self_d = d(x)
    assert torch.all(torch.diagonal(self_d) == 0)
    torch.testing.assert_close(self_d, naive_matrix(lambda a, b: l2(prep(a), prep(b)), x, x))
    torch.testing.assert_close(d.pairwise(x[:4], y), torch.diagonal(ref[:4]))


def test_similarities_match_loops():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.randn(5, 3, generator=g, dtype=torch.float64)
    cos = naive_matrix(lambda a, b: dot(unit(a), unit(b)), x, y)
    torch.testing.assert_close(CosineSimilarity()(x, y), cos)
    torch.testing.assert_close(DotProductSimilarity()(x, y), cos)
    raw = naive_matrix(dot, x, y)
    torch.testing.assert_close(DotProductSimilarity(normalize_embeddings=False)(x, y), raw)
    assert CosineSimilarity.is_similarity and not EuclideanDistance.is_similarity


def test_euclidean_gradient_finite_at_duplicates():
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    EuclideanDistance(normalize_embeddings=False)(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        EuclideanDistance()(torch.randn(3))
    with pytest.raises(ValueError, match="dimension"):
        EuclideanDistance()(torch.randn(3, 2), torch.randn(3, 4))


def test_matches_pml_distances():
    pml = pytest.importorskip("pytorch_metric_learning.distances")
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(9, 4, generator=g), torch.randn(5, 4, generator=g)
    torch.testing.assert_close(EuclideanDistance()(x, y), pml.LpDistance()(x, y))
    torch.testing.assert_close(
        EuclideanDistance(squared=True)(x, y), pml.LpDistance(power=2)(x, y), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(CosineSimilarity()(x, y), pml.CosineSimilarity()(x, y))
    torch.testing.assert_close(DotProductSimilarity()(x, y), pml.DotProductSimilarity()(x, y))


def test_label_relations():
    labels = torch.tensor([0, 1, 0, 2])
    expected = torch.tensor([[labels[i] == labels[j] for j in range(4)] for i in range(4)])
    assert torch.equal(same_label(labels), expected)
    hier = torch.tensor([[0, 0], [0, 1], [1, 2], [0, 0]])
    exp_h = torch.tensor([[bool((hier[i] == hier[j]).all()) for j in range(4)] for i in range(4)])
    assert torch.equal(same_label(hier), exp_h)
    coarse = torch.tensor([[bool(hier[i, 0] == hier[j, 0]) for j in range(4)] for i in range(4)])
    assert torch.equal(same_label_at_level(hier, None, 0), coarse)
    multi = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    exp_m = torch.tensor([[bool((multi[i] & multi[j]).any()) for j in range(3)] for i in range(3)])
    assert torch.equal(same_label(multi), exp_m)
    with pytest.raises(ValueError):
        same_label(labels, hier)


def test_masks_and_tuples_against_loops():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    pos, neg = pos_neg_masks(labels)
    n = len(labels)
    for i in range(n):
        for j in range(n):
            assert bool(pos[i, j]) == (i != j and labels[i] == labels[j])
            assert bool(neg[i, j]) == (labels[i] != labels[j])
    a1, p, a2, ng = all_pairs(labels)
    assert len(a1) == int(pos.sum()) and len(a2) == int(neg.sum())
    trip = all_triplets(labels)
    naive = [
        (a, b, c)
        for a in range(n)
        for b in range(n)
        for c in range(n)
        if a != b and labels[a] == labels[b] and labels[a] != labels[c]
    ]
    assert list(zip(*(t.tolist() for t in trip), strict=True)) == naive
    assert (
        sorted(zip(*(t.tolist() for t in pairs_to_triplets(all_pairs(labels))), strict=True))
        == naive
    )
    back = triplets_to_pairs(trip)
    assert list(zip(back.a1.tolist(), back.p.tolist(), strict=True)) == [
        (a, b) for a, b, _ in naive
    ]
    assert list(zip(back.a2.tolist(), back.n.tolist(), strict=True)) == [
        (a, c) for a, _, c in naive
    ]
    # chunk rows with an offset: same as the full mask's rows
    pos_c, _ = pos_neg_masks(labels[2:5], labels, exclude_self=True, row_offset=2)
    assert torch.equal(pos_c, pos[2:5])
