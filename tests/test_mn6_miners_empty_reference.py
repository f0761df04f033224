"""An empty reference set (``ref_embeddings`` of shape ``(0, dim)``) has no positive and
no negative for any anchor: every miner returns empty tuples of its kind, as
pytorch-metric-learning's miners that handle it do."""

from __future__ import annotations

import pytest
import torch

from dmlkit.functional.tuples import Pairs, Quadruplets, Triplets
from dmlkit.registry import MINERS

KINDS = {"pairs": Pairs, "triplets": Triplets, "quadruplets": Quadruplets}
# (packed_triplets has no reference-set form: it refuses any reference set)
NAMES = [name for name in MINERS.names() if name != "packed_triplets"]


@pytest.mark.parametrize("name", NAMES)
def test_empty_reference_set_gives_empty_tuples(name):
    miner = MINERS.build(name)
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(6, 4, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    out = miner(embeddings, labels, torch.randn(0, 4), torch.zeros(0, dtype=torch.long))
    assert type(out) is KINDS[miner.output_kind]
    for t in out:
        assert t.shape == (0,) and t.dtype == torch.int64


@pytest.mark.parametrize("name", ["batch_hard", "multi_similarity", "batch_easy_hard"])
def test_empty_reference_set_with_hierarchical_labels(name):
    miner = MINERS.build(name)
    embeddings = torch.randn(4, 3)
    labels = torch.tensor([[0, 0], [0, 1], [1, 2], [1, 2]])
    out = miner(embeddings, labels, torch.randn(0, 3), torch.zeros(0, 2, dtype=torch.long))
    assert all(t.shape == (0,) and t.dtype == torch.int64 for t in out)
