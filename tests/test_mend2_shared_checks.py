"""One zero-distance rule, one embeddings check, one verification-settings check."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import dmlkit.evaluation.retrieval as retrieval
from dmlkit.evaluation import ThresholdCalibrator, verification_metrics
from dmlkit.evaluation.verification import indexed_pair_scores, pair_scores
from dmlkit.functional.distances import (
    check_dim,
    check_embeddings,
    cut_sqrt,
    cut_zeros_,
    pairwise_euclidean,
    rowwise_euclidean,
    safe_sqrt,
    zero_distance_cut,
)
from dmlkit.functional.tuples import Pairs
from dmlkit.losses import ContrastiveLoss, TripletMarginLoss, _rows, _tuple_distances
from dmlkit.miners import MultiSimilarityMiner

# -- the zero-distance cut ----------------------------------------------------------------


def _with_duplicates(scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64) * scale
    x[3] = x[0]  # an exact duplicate: rounding noise in the expansion, distance 0
    return x


@pytest.mark.parametrize("scale", [1.0, 1e-8, 1e8])
def test_cut_sqrt_is_safe_sqrt_with_the_cut(scale):
    x = _with_duplicates(scale)
    x_sq = (x * x).sum(dim=1, keepdim=True)  # (n, 1)
    d2 = (x_sq + x_sq.T - 2.0 * x @ x.T).clamp_min(0.0)  # (n, n)
    expected = safe_sqrt(d2, zero_distance_cut(x_sq, x_sq.T))
    assert torch.equal(cut_sqrt(d2, x_sq, x_sq.T), expected)
    work = d2.clone()
    out = cut_sqrt(work, x_sq, x_sq.T, inplace=True)
    assert out.data_ptr() == work.data_ptr()  # no copy
    assert torch.equal(out, expected)
    assert out[0, 3] == 0 and out[3, 0] == 0


def test_cut_sqrt_gradient_is_zero_at_zero_distances_and_none_through_the_cut():
    x = _with_duplicates().requires_grad_(True)
    d = pairwise_euclidean(x)
    d.sum().backward()
    assert torch.isfinite(x.grad).all()
    # the gradient equals safe_sqrt's on the same squared distances and cut
    x2 = x.detach().clone().requires_grad_(True)
    x_sq = (x2 * x2).sum(dim=1, keepdim=True)
    d2 = (x_sq + x_sq.T - 2.0 * x2 @ x2.T).clamp_min(0.0)
    d2.diagonal().zero_()
    with torch.no_grad():
        cut = zero_distance_cut(x_sq, x_sq.T)
    safe_sqrt(d2, cut).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=0)


def test_rowwise_euclidean_keeps_the_rule():
    x = _with_duplicates()
    y = x.flip(0)
    y[2] = x[2]
    d = rowwise_euclidean(x, y)
    assert d[2] == 0
    torch.testing.assert_close(d, (x - y).norm(dim=1), rtol=1e-12, atol=0)


def test_cut_zeros_on_cdist_matches_cut_sqrt():
    x = _with_duplicates()
    x_sq = (x * x).sum(dim=1)
    mat = cut_zeros_(torch.cdist(x, x), x_sq[:, None], x_sq[None, :])
    assert mat[0, 3] == 0 and (mat.diagonal() == 0).all()
    d2 = (x_sq[:, None] + x_sq[None, :] - 2.0 * x @ x.T).clamp_min(0.0)
    torch.testing.assert_close(mat, cut_sqrt(d2, x_sq[:, None], x_sq[None, :]))


@pytest.mark.parametrize("fused", [True, False])
def test_contrastive_gradients_match_autograd_reference_with_duplicates(fused, monkeypatch):
    if not fused:  # the chunked path (the batch's matrix over the one-pass budget)
        monkeypatch.setattr(_rows, "FUSED_BUDGET", 0)
    n = 12
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g, dtype=torch.float64)
    x[1] = x[0]
    y = torch.arange(n) % 3
    emb = x.clone().requires_grad_(True)
    ContrastiveLoss(pos_margin=0.0, neg_margin=1.5)(emb, y).backward()
    ref = x.clone().requires_grad_(True)
    xn = ref / ref.norm(dim=1, keepdim=True)
    d = pairwise_euclidean(xn)  # the safe square root on the normalized rows
    same = y[:, None] == y[None, :]
    off = ~torch.eye(n, dtype=torch.bool)
    pos = d[same & off].clamp_min(0.0)
    neg = (1.5 - d[~same]).clamp_min(0.0)
    loss = pos.sum() / (pos > 0).sum().clamp_min(1) + neg.sum() / (neg > 0).sum().clamp_min(1)
    loss.backward()
    assert torch.isfinite(emb.grad).all()
    torch.testing.assert_close(emb.grad, ref.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("rows", [True, False])
def test_contrastive_on_given_pairs_matches_autograd_reference(rows, monkeypatch):
    # the gathered-rows path or the one-matrix (cdist) path of the pairs' distances
    monkeypatch.setattr(_tuple_distances, "ROWS_RATIO", 1e-9 if rows else 1e9)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 4, generator=g, dtype=torch.float64)
    x[5] = x[2]
    pairs = Pairs(torch.tensor([0, 2, 4, 1]), torch.tensor([1, 5, 6, 1]),
                  torch.tensor([0, 2, 3, 7]), torch.tensor([3, 5, 6, 2]))
    emb = x.clone().requires_grad_(True)
    ContrastiveLoss(pos_margin=0.0, neg_margin=1.0)(emb, indices=pairs).backward()
    ref = x.clone().requires_grad_(True)
    xn = ref / ref.norm(dim=1, keepdim=True)
    a1, p, a2, neg = pairs
    pos = rowwise_euclidean(xn[a1], xn[p])  # (2,) zeros included: (2, 5) and (1, 1)
    negs = (1.0 - rowwise_euclidean(xn[a2], xn[neg])).clamp_min(0.0)
    assert (pos == 0).sum() == 2
    loss = pos.sum() / (pos > 0).sum().clamp_min(1) + negs.sum() / (negs > 0).sum().clamp_min(1)
    loss.backward()
    assert torch.isfinite(emb.grad).all()
    torch.testing.assert_close(emb.grad, ref.grad, rtol=1e-6, atol=1e-9)


# -- one embeddings check, dimensions included -------------------------------------------


def test_check_embeddings_refuses_embeddings_without_dimensions():
    with pytest.raises(ValueError, match=r"queries has shape \(4, 0\): .*\(d >= 1\)"):
        check_embeddings(torch.zeros(4, 0), "queries")
    with pytest.raises(ValueError, match=r"d >= 1"):
        check_dim(torch.zeros(4, 0), "x")
    check_dim(torch.zeros(0, 3), "x")  # no rows is not no dimensions
    check_embeddings(torch.zeros(0, 3))
    # the earlier rules keep their order: the dtype is named first
    with pytest.raises(TypeError, match="floating-point"):
        check_embeddings(torch.zeros(4, 0, dtype=torch.long))


def test_retrieval_needs_one_check():
    assert not hasattr(retrieval, "check_dim")
    with pytest.raises(ValueError, match=r"query has shape \(10, 0\).*d >= 1"):
        retrieval.retrieval_metrics(np.zeros((10, 0), np.float32), np.arange(10) % 2)


@pytest.mark.parametrize("make", [TripletMarginLoss, ContrastiveLoss])
def test_losses_refuse_embeddings_without_dimensions(make):
    # before, such a batch gave a constant loss with no gradient (a run that learns nothing)
    x = torch.zeros(4, 0, requires_grad=True)
    with pytest.raises(ValueError, match=r"embeddings has shape \(4, 0\).*d >= 1"):
        make()(x, torch.tensor([0, 0, 1, 1]))


def test_miners_refuse_embeddings_without_dimensions():
    with pytest.raises(ValueError, match=r"d >= 1"):
        MultiSimilarityMiner()(torch.zeros(4, 0), torch.tensor([0, 0, 1, 1]))


def test_pair_scores_keep_their_dimension_check_and_integer_inputs():
    empty = np.zeros((3, 0), np.float32)
    with pytest.raises(ValueError, match=r"the paired embeddings has shape \(3, 0\)"):
        pair_scores(empty, empty)
    with pytest.raises(ValueError, match=r"the embeddings has shape \(3, 0\)"):
        indexed_pair_scores(empty, np.array([0]), np.array([1]))
    ints = np.arange(6).reshape(3, 2)  # integer embeddings are still scored
    assert pair_scores(ints, ints, metric="dot").tolist() == [1.0, 13.0, 41.0]


# -- verification settings and the unresolvable-FAR warning ------------------------------


def _scored(n_same: int = 20, n_diff: int = 30):
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(1.0, 1.0, n_same), rng.normal(-1.0, 1.0, n_diff)]
    return scores, np.r_[np.ones(n_same, bool), np.zeros(n_diff, bool)]


@pytest.mark.parametrize("kwargs, message", [
    ({"n_folds": 1}, "n_folds must be an integer >= 2, got 1"),
    ({"n_folds": 2.0}, "n_folds must be an integer >= 2, got 2.0"),
    ({"n_folds": True}, "n_folds must be an integer >= 2, got True"),
    ({"seed": -1}, "seed must be an integer >= 0, got -1"),
    ({"seed": None}, "seed must be an integer >= 0, got None"),
])
def test_verification_settings_are_refused_with_their_messages(kwargs, message):
    s, y = _scored()
    with pytest.raises(ValueError) as err:
        verification_metrics(s, y, **kwargs)
    assert str(err.value) == message


def test_unresolvable_tar_warning_text_and_caller():
    s, y = _scored()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = verification_metrics(s, y, fars=(1e-1, 1e-2, 1e-9))
    assert np.isnan(out["tar_at_far_0.01"]) and np.isfinite(out["tar_at_far_0.1"])
    (w,) = [c for c in caught if issubclass(c.category, UserWarning)]
    assert str(w.message) == (
        "TAR at FAR 0.01, 1e-09 is NaN: 30 different (negative) pairs resolve no FAR "
        "between 0 and 1/30 = 0.0333; FAR 1e-09 needs at least 1000000000 negative pairs")
    assert w.filename == __file__  # attributed to the caller, not to dmlkit


def test_unresolvable_calibration_warning_text_and_caller():
    s, y = _scored()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cal = ThresholdCalibrator(0.01).fit(s, y)
    assert cal.far_ == 0.0
    (w,) = [c for c in caught if issubclass(c.category, UserWarning)]
    assert str(w.message) == (
        "the calibration set cannot resolve target_far=0.01: its 30 different (negative) "
        "pairs resolve no FAR between 0 and 1/30 = 0.0333, so the threshold accepts none "
        "of them (FAR 0 here, unmeasured below 0.0333); that FAR needs at least 100 "
        "negative pairs")
    assert w.filename == __file__


def test_resolvable_fars_do_not_warn():
    s, y = _scored()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verification_metrics(s, y, fars=(1e-1,))
        ThresholdCalibrator(0.1).fit(s, y)
