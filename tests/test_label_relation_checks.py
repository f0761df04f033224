"""Label kinds and the ``same_label`` relation: what is refused, and why.

* a multi-label row without any label would be its own negative: losses and miners
  refuse it (retrieval keeps it: such a query is skipped, such a reference is relevant
  to nothing);
* bool multi-labels never mix with integer labels, and zero-width labels are refused;
* ``same_label_at_level`` validates both label tensors;
* ``NPairsLoss`` refuses multi-labels (it needs classes);
* ``hierarchical_precision_at_k`` divides by ``k``, as ``precision_at_k`` does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmlkit.evaluation import hierarchical_retrieval_metrics, retrieval_metrics
from dmlkit.functional.labels import check_labels, same_label, same_label_at_level
from dmlkit.functional.tuples import Pairs
from dmlkit.losses import ContrastiveLoss, NPairsLoss
from dmlkit.registry import LOSSES, MINERS

#: items 0-1 share tag 0, items 2-3 share tag 1, item 4 has no tag
EMPTY_ROW = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1], [0, 0]], dtype=torch.bool)
FULL_ROWS = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1]], dtype=torch.bool)

PAIR_LOSSES = ["contrastive", "multi_similarity", "generalized_lifted_structure",
               "lifted_structure", "circle", "ntxent", "supcon", "triplet_margin",
               "intra_pair_variance", "histogram"]
MINER_NAMES = ["pair_margin", "hdc", "uniform_histogram", "quadruplet", "batch_hard",
               "multi_similarity", "triplet_margin", "angular", "distance_weighted"]


def _x(n: int = 5, dim: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


# -- 1. multi-label rows without a label ------------------------------------------------


def test_check_labels_refuses_empty_rows_only_when_asked():
    assert check_labels(EMPTY_ROW, 5) is EMPTY_ROW  # retrieval's default
    with pytest.raises(ValueError, match=r"1 of 5 multi-label rows hold no label.*row 4"):
        check_labels(EMPTY_ROW, 5, allow_empty_rows=False)
    assert check_labels(FULL_ROWS, 5, allow_empty_rows=False) is FULL_ROWS


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_losses_refuse_an_item_without_label(name):
    loss = LOSSES.build(name)
    with pytest.raises(ValueError, match="no label"):
        loss(_x(), EMPTY_ROW)
    with pytest.raises(ValueError, match="ref_labels.*no label"):
        loss(_x(), FULL_ROWS, ref_embeddings=_x(seed=1), ref_labels=EMPTY_ROW)
    assert torch.isfinite(loss(_x(), FULL_ROWS))


@pytest.mark.parametrize("name", MINER_NAMES)
def test_miners_refuse_an_item_without_label(name):
    miner = MINERS.build(name)
    with pytest.raises(ValueError, match="no label"):
        miner(_x(), EMPTY_ROW)
    with pytest.raises(ValueError, match="ref_labels.*no label"):
        miner(_x(), FULL_ROWS, _x(seed=1), EMPTY_ROW)


@pytest.mark.parametrize("name", MINER_NAMES)
def test_mined_tuples_never_pair_an_item_with_itself_as_negative(name):
    tuples = MINERS.build(name)(_x(8, seed=2), torch.cat([FULL_ROWS, FULL_ROWS[:3]]))
    if isinstance(tuples, Pairs):
        assert not bool((tuples.a2 == tuples.n).any())
    else:
        assert not bool((tuples[0] == tuples[2]).any())


@pytest.mark.parametrize("name", ["contrastive", "multi_similarity"])
def test_multi_label_loss_equals_its_off_diagonal_pairs(name):
    """Labels mean every positive and negative pair ``i != j`` (naive loop reference)."""
    x = _x()
    a1, p, a2, n = [], [], [], []
    for i in range(5):
        for j in range(5):
            if i != j:
                shared = bool((FULL_ROWS[i] & FULL_ROWS[j]).any())
                (a1 if shared else a2).append(i)
                (p if shared else n).append(j)
    pairs = Pairs(*(torch.tensor(v) for v in (a1, p, a2, n)))
    by_labels = LOSSES.build(name)(x, FULL_ROWS)
    by_pairs = LOSSES.build(name)(x, indices=pairs)
    assert torch.allclose(by_labels, by_pairs)


def test_retrieval_keeps_items_without_label():
    got = retrieval_metrics(_x(), EMPTY_ROW)
    assert got["num_queries"] == 4  # the query without a label has nothing relevant


# -- 2. N-pairs with multi-labels --------------------------------------------------------


def test_npairs_refuses_multi_labels_and_groups_hierarchical_by_leaf():
    multi = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 1],
                          [0, 0, 0, 1]], dtype=torch.bool)
    with pytest.raises(ValueError, match=r"NPairsLoss needs \(n,\) class or \(n, L\)"):
        NPairsLoss()(_x(), multi)
    with pytest.raises(ValueError, match="multi-labels"):
        NPairsLoss()(_x(), multi, indices=Pairs(torch.tensor([0]), torch.tensor([1]),
                                               torch.tensor([0]), torch.tensor([3])))
    hier = torch.tensor([[0, 0], [0, 0], [0, 1], [0, 1], [1, 0], [1, 0]])
    leaf = torch.tensor([0, 0, 1, 1, 2, 2])
    x = _x(6)
    assert torch.allclose(NPairsLoss()(x, hier), NPairsLoss()(x, leaf))


# -- 3. label kinds never mix ------------------------------------------------------------


def test_same_label_refuses_bool_against_integer_labels():
    multi = torch.tensor([[1, 0, 1]], dtype=torch.bool)
    hier = torch.tensor([[0, 3, 7], [2, 0, 0]])
    for a, b in ((multi, hier), (hier, multi)):
        with pytest.raises(ValueError, match="label kinds differ"):
            same_label(a, b)
    rng = np.random.default_rng(0)
    q, r = rng.normal(size=(6, 3)), rng.normal(size=(8, 3))
    ql, rl = rng.random((6, 4)) < 0.5, rng.random((8, 4)) < 0.5
    with pytest.raises(ValueError, match="label kinds differ"):
        retrieval_metrics(q, ql.astype(np.int64), r, rl)
    x = torch.randn(6, 3)
    ref = torch.randn(8, 3)
    rl_t = torch.tensor(rl)
    rl_t[:, 0] = True  # every reference row holds a label
    with pytest.raises(ValueError, match="label kinds differ"):
        ContrastiveLoss()(x, torch.ones(6, 4, dtype=torch.long), ref_embeddings=ref,
                          ref_labels=rl_t)


# -- 6. zero-width labels ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.long, torch.bool])
def test_zero_width_labels_are_refused(dtype):
    y0 = torch.zeros(6, 0, dtype=dtype)
    with pytest.raises(ValueError, match="at least one column"):
        check_labels(y0, 6)
    with pytest.raises(ValueError, match="at least one column"):
        same_label(y0)
    with pytest.raises(ValueError, match="at least one column"):
        ContrastiveLoss()(torch.randn(6, 3), y0)
    with pytest.raises(ValueError, match="at least one column"):
        retrieval_metrics(torch.randn(6, 3), y0)


# -- 7. same_label_at_level checks both sides --------------------------------------------


def test_same_label_at_level_validates_labels_b():
    hier = torch.tensor([[0, 0], [0, 1], [1, 0]])
    assert torch.equal(same_label_at_level(hier, hier[:2], 0),
                       torch.tensor([[True, True], [True, True], [False, False]]))
    with pytest.raises(ValueError, match="labels_b has shape"):
        same_label_at_level(hier, torch.tensor([0, 1]), 0)
    with pytest.raises(ValueError, match="2 levels but labels_b have 3"):
        same_label_at_level(hier, torch.zeros(2, 3, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="labels_b has shape"):
        same_label_at_level(hier, hier.bool(), 0)
    with pytest.raises(ValueError, match="labels_a has shape"):
        same_label_at_level(hier.bool(), hier, 0)
    with pytest.raises(ValueError, match="level must be in"):
        same_label_at_level(hier, hier, 2)


# -- 5. hierarchical precision divides by k ----------------------------------------------


def test_hierarchical_precision_divides_by_k_like_precision_at_k():
    x = np.arange(4, dtype=np.float32)[:, None]
    y = np.array([[0, 0], [0, 0], [0, 1], [1, 0]])
    got = hierarchical_retrieval_metrics(x, y, k=(1, 10))

    def depth(a: np.ndarray, b: np.ndarray) -> int:
        s = 0
        while s < 2 and a[s] == b[s]:
            s += 1
        return s

    for k in (1, 10):
        credits = []
        for i in range(4):
            order = sorted((j for j in range(4) if j != i), key=lambda j: (abs(i - j), j))
            credits.append(sum(depth(y[i], y[j]) / 2 for j in order[:k]) / k)
        assert got[f"hierarchical_precision_at_{k}"] == pytest.approx(np.mean(credits))
    assert got["hierarchical_precision_at_10"] == pytest.approx(0.1)
    # Precision@10 divides by k too, with fewer than 10 references
    assert got["precision_at_10_level_1"] == pytest.approx(0.1)
