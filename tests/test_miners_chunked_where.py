"""Pair miners that collect all-pairs masks in row chunks: the same pairs, in the same
order, whatever the chunk size, as a dense ``torch.where`` over the whole matrix, and the
same pair sets as pytorch-metric-learning (ties, single-class batches, reference sets)."""

from __future__ import annotations

import pytest
import torch

import dmlkit.miners.base as miner_base
from dmlkit.distances import CosineSimilarity, EuclideanDistance
from dmlkit.miners import BatchEasyHardMiner, MultiSimilarityMiner, PairMarginMiner
from dmlkit.miners._where import ChunkedWhere

pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
pml_dist = pytest.importorskip("pytorch_metric_learning.distances")


# -- ChunkedWhere --------------------------------------------------------------------------


def collect(mask, chunk):
    """Feed ``mask`` in row chunks; the collector, its kept chunks and its indices."""
    found = ChunkedWhere(mask.device)
    for a in range(0, mask.shape[0], chunk):
        found.add(mask[a : a + chunk], a)
    kept = list(found._chunks)
    rows, cols = found.indices()
    return found, kept, rows, cols


@pytest.mark.parametrize("density", [0.0, 0.03, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_chunked_where_equals_torch_where(density, chunk):
    g = torch.Generator().manual_seed(int(density * 100) + chunk)
    mask = torch.rand(37, 23, generator=g) < density  # (n, m)
    found, kept, rows, cols = collect(mask, chunk)
    want_rows, want_cols = torch.where(mask)
    assert torch.equal(rows, want_rows) and torch.equal(cols, want_cols)
    assert rows.dtype == cols.dtype == torch.long
    assert rows.is_contiguous() and cols.is_contiguous()
    assert len(found) == 0 and found.indices()[0].numel() == 0  # emptied
    # each chunk is kept in its smaller form: a bool mask or int32 positions
    for _, k, stored, m in kept:
        if stored.dtype == torch.int32:  # positions: fewer bytes than the chunk's mask
            assert stored.numel() == k and 4 * k < chunk * m
        else:  # the mask: fewer bytes than int32 positions
            assert stored.dtype == torch.bool and 4 * k >= stored.numel()
        assert stored.untyped_storage().nbytes() == stored.numel() * stored.element_size()


def test_chunked_where_sparse_and_dense_chunks_mixed():
    mask = torch.zeros(40, 50, dtype=torch.bool)
    mask[:10] = True  # dense rows
    mask[20:30, ::17] = True  # sparse rows
    mask[35, 49] = True
    _, kept, rows, cols = collect(mask, 10)
    assert [s.dtype for _, _, s, _ in kept] == [torch.bool, torch.int32, torch.int32]
    assert torch.equal(torch.stack([rows, cols]), torch.stack(torch.where(mask)))


def test_chunked_where_big_writes_in_blocks(monkeypatch):
    import dmlkit.miners._where as where

    monkeypatch.setattr(where, "_WRITE_BUDGET", 7)
    mask = torch.rand(30, 9, generator=torch.Generator().manual_seed(1)) < 0.8
    _, _, rows, cols = collect(mask, 13)
    assert torch.equal(torch.stack([rows, cols]), torch.stack(torch.where(mask)))


def test_chunked_where_rejects_bad_masks_and_changed_masks():
    found = ChunkedWhere(torch.device("cpu"))
    with pytest.raises(ValueError, match="2-d bool"):
        found.add(torch.ones(3, 3), 0)
    with pytest.raises(ValueError, match="2-d bool"):
        found.add(torch.ones(3, dtype=torch.bool), 0)
    mask = torch.ones(4, 4, dtype=torch.bool)
    found.add(mask, 0)
    mask[0] = False
    with pytest.raises(RuntimeError, match="changed"):
        found.indices()


# -- miners: chunked == dense, and == PML as sets -----------------------------------------


def dense_multi_similarity(x, y, rx, ry, epsilon, sim):
    """The whole-matrix computation, in fp64: ``torch.where`` of the mined masks."""
    x = torch.nn.functional.normalize(x.double(), dim=1)
    rx = torch.nn.functional.normalize(rx.double(), dim=1)
    e = -(x @ rx.T) if sim else torch.cdist(x, rx)  # (n, m), smaller = closer
    pos = y[:, None] == ry[None, :]
    if x.shape[0] == rx.shape[0] and torch.equal(x, rx):
        pos &= ~torch.eye(len(y), dtype=torch.bool)
    neg = y[:, None] != ry[None, :]
    inf = float("inf")
    closest_neg = e.masked_fill(~neg, inf).min(dim=1, keepdim=True).values
    farthest_pos = e.masked_fill(~pos, -inf).max(dim=1, keepdim=True).values
    a1, p = torch.where(pos & (e + epsilon > closest_neg))
    a2, n = torch.where(neg & (e - epsilon < farthest_pos))
    return a1, p, a2, n


def tied_data(n, seed, classes=3):
    """Unit rows with four entries of +-0.5 in dimension 8: every cosine is a multiple
    of 1/4 and every squared distance a multiple of 1/2, exact in fp32, so many pairs
    tie with each other and with the hardest pair plus or minus epsilon = 0.25."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 8)
    for i in range(n):
        cols = torch.randperm(8, generator=g)[:4]
        x[i, cols] = torch.where(torch.rand(4, generator=g) < 0.5, -0.5, 0.5)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def random_data(n, seed, classes=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, classes, (n,), generator=g)


def pair_sets(pairs):
    a1, p, a2, n = (t.tolist() for t in pairs)
    return sorted(zip(a1, p, strict=True)), sorted(zip(a2, n, strict=True))


def run_chunked(miner, chunk, monkeypatch, *args):
    with monkeypatch.context() as mp:
        mp.setattr(miner_base, "chunk_size_for", lambda n, e, budget=0: chunk)
        return miner(*args)


CASES = {
    "random": lambda: (*random_data(31, 0), None, None),
    "ties": lambda: (*tied_data(40, 1), None, None),
    "single_class": lambda: (random_data(12, 2)[0], torch.zeros(12, dtype=torch.long), None, None),
    "two_classes_ties": lambda: (*tied_data(25, 3, classes=2), None, None),
    "reference_set": lambda: (*random_data(17, 4), *random_data(29, 5)),
    "reference_set_ties": lambda: (*tied_data(19, 6), *tied_data(33, 7)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("sim,epsilon", [(True, 0.1), (True, 0.25), (False, 0.25)])
def test_multi_similarity_chunks_equal_dense_and_pml(case, sim, epsilon, monkeypatch):
    x, y, rx, ry = CASES[case]()
    args = (x, y) if rx is None else (x, y, rx, ry)
    make = lambda: MultiSimilarityMiner(  # noqa: E731
        epsilon, distance=CosineSimilarity() if sim else EuclideanDistance()
    )
    whole = make()(*args)
    want = dense_multi_similarity(x, y, x if rx is None else rx, y if ry is None else ry,
                                  epsilon, sim)  # fmt: skip
    for got in [whole] + [run_chunked(make(), c, monkeypatch, *args) for c in (1, 3, 7)]:
        for u, v in zip(got, want, strict=True):
            assert torch.equal(u, v)  # same pairs, same order
            assert u.dtype == torch.long and u.is_contiguous()
    pml_distance = pml_dist.CosineSimilarity() if sim else pml_dist.LpDistance()
    theirs = pml_miners.MultiSimilarityMiner(epsilon, distance=pml_distance)(*args)
    assert pair_sets(whole) == pair_sets(theirs)
    if case == "single_class":
        assert all(t.numel() == 0 for t in whole)
    else:
        assert whole[0].numel() > 0 and whole[2].numel() > 0


@pytest.mark.parametrize("case", ["random", "ties", "single_class", "reference_set_ties"])
@pytest.mark.parametrize(
    "make,theirs",
    [
        (lambda: PairMarginMiner(0.2, 0.8), lambda: pml_miners.PairMarginMiner(0.2, 0.8)),
        (
            lambda: PairMarginMiner(0.5, 0.25, distance=CosineSimilarity()),
            lambda: pml_miners.PairMarginMiner(0.5, 0.25, distance=pml_dist.CosineSimilarity()),
        ),
        (
            lambda: BatchEasyHardMiner("all", "hard"),
            lambda: pml_miners.BatchEasyHardMiner("all", "hard"),
        ),
        (
            lambda: BatchEasyHardMiner("easy", "all"),
            lambda: pml_miners.BatchEasyHardMiner("easy", "all"),
        ),
        (
            lambda: BatchEasyHardMiner("all", "all"),
            lambda: pml_miners.BatchEasyHardMiner("all", "all"),
        ),
    ],
)
def test_other_pair_miners_chunks_equal_whole(case, make, theirs, monkeypatch):
    x, y, rx, ry = CASES[case]()
    args = (x, y) if rx is None else (x, y, rx, ry)
    whole = make()(*args)
    for chunk in (1, 3, 7):
        got = run_chunked(make(), chunk, monkeypatch, *args)
        assert all(torch.equal(u, v) for u, v in zip(got, whole, strict=True))
    assert pair_sets(whole) == pair_sets(theirs()(*args))
