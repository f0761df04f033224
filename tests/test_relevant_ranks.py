"""Ranks of relevant references by counting, against a full sort."""

from __future__ import annotations

import torch
from test_retrieval_metrics import naive_metrics

from dmlkit.evaluation import retrieval_metrics
from dmlkit.functional.relevant_ranks import ClassMembers, relevant_ranks


def sorted_ranks(keys, rel):
    """1-based ranks of the relevant columns, nearest first, by a stable full sort
    (ties by column)."""
    out = []
    for row, mask in zip(keys, rel, strict=True):
        order = torch.argsort(row, stable=True)
        out.append((mask[order].nonzero().squeeze(1) + 1).tolist())
    return out


def setup(c=40, m=300, classes=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(c, m, generator=g)
    qlab = torch.randint(0, classes + 2, (c,), generator=g)  # some classes absent
    rlab = torch.randint(0, classes, (m,), generator=g)
    members = ClassMembers(rlab)
    cols, valid = members.members(qlab)
    rel = qlab[:, None] == rlab[None, :]
    return keys, rel, cols, valid


def test_ranks_equal_a_full_sort_without_ties():
    keys, rel, cols, valid = setup()
    r = rel.sum(dim=1)
    ranks, tied = relevant_ranks(keys, cols, valid, r)
    assert not tied.any()
    assert (valid.sum(dim=1) == r).all()
    for i, want in enumerate(sorted_ranks(keys, rel)):
        assert ranks[i, : len(want)].tolist() == want


def test_excluded_references_and_ties_are_flagged():
    keys, rel, cols, valid = setup(seed=1)
    r = rel.sum(dim=1)
    # exclude one relevant reference of row 0 (an inf key, as leave-one-out does)
    j = int(cols[0, 0])
    keys[0, j] = float("inf")
    rel[0, j] = False
    # row 1: another key equals a relevant key; row 2: two relevant keys are equal
    other = int((~rel[1]).nonzero()[0])
    keys[1, other] = keys[1, int(cols[1, 0])]
    keys[2, int(cols[2, 1])] = keys[2, int(cols[2, 0])]
    r = rel.sum(dim=1)
    ranks, tied = relevant_ranks(keys, cols, valid, r)
    assert tied.tolist()[:3] == [False, True, True] and not tied[3:].any()
    want = sorted_ranks(keys, rel)
    assert ranks[0, : len(want[0])].tolist() == want[0]


def test_metrics_with_some_exact_ties_equal_the_loop_reference():
    """Real-valued embeddings with a few exact duplicates: most rows are counted, the
    tied ones sorted; full AP and MRR match the loop reference either way."""
    g = torch.Generator().manual_seed(5)
    y = torch.randint(0, 6, (150,), generator=g)
    x = torch.randn(6, 4, generator=g)[y] + 0.8 * torch.randn(150, 4, generator=g)
    x[10:15] = x[20]  # exact duplicates: tied distances
    separate = {"reference": x[:90], "reference_labels": y[:90]}
    for kwargs, (xr, yr, loo) in (({}, (x, y, True)), (separate, (x[:90], y[:90], False))):
        got = retrieval_metrics(x, y, **kwargs, chunk_size=23, average_precision=True,
                                reciprocal_rank=True)
        want, _ = naive_metrics(x.numpy(), y.numpy(), xr.numpy(), yr.numpy(), loo)
        for name in ("mean_average_precision", "mean_reciprocal_rank", "map_at_r"):
            assert abs(got[name] - want[name]) < 1e-9, name


def test_chunks_without_any_relevant_reference():
    """A chunk of queries whose classes are all absent from the reference."""
    g = torch.Generator().manual_seed(3)
    x, xr = torch.randn(12, 3, generator=g), torch.randn(20, 3, generator=g)
    y, yr = torch.arange(12) % 4, torch.arange(20) % 2  # classes 2 and 3 are absent
    got = retrieval_metrics(x, y, xr, yr, chunk_size=1, average_precision=True,
                            reciprocal_rank=True)
    want, nq = naive_metrics(x.numpy(), y.numpy(), xr.numpy(), yr.numpy(), False)
    assert got["num_queries"] == nq == 6
    for name in ("mean_average_precision", "mean_reciprocal_rank"):
        assert abs(got[name] - want[name]) < 1e-9, name
