"""Labels of any integer dtype, names in retrieval metrics, and empty or tiny inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmlkit.evaluation import retrieval_metrics
from dmlkit.losses import (
    ArcFaceLoss,
    CenterLoss,
    ContrastiveLoss,
    CrossBatchMemory,
    NormalizedSoftmaxLoss,
    ProxyAnchorLoss,
    SoftTripleLoss,
    TripletMarginLoss,
)
from dmlkit.miners import BatchHardMiner, MultiSimilarityMiner, UniformHistogramMiner


def _classifier_losses():
    return [lambda: CenterLoss(6, 4), lambda: ArcFaceLoss(6, 4), lambda: ProxyAnchorLoss(6, 4),
            lambda: NormalizedSoftmaxLoss(6, 4), lambda: SoftTripleLoss(6, 4)]


@pytest.mark.parametrize("make", _classifier_losses())
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32])
def test_class_ids_of_any_integer_dtype_give_the_int64_loss(make, dtype):
    torch.manual_seed(0)
    e = torch.randn(12, 4)
    labels = torch.tensor([1, 2, 3, 4, 5, 1, 0, 2, 3, 4, 5, 0])
    torch.manual_seed(1)
    loss = make()
    expected = loss(e, labels)
    assert torch.equal(loss(e, labels.to(dtype)), expected)


def test_cross_batch_memory_takes_int32_labels():
    e = torch.randn(8, 16)
    y = torch.tensor([0, 1, 2, 3] * 2)
    a = CrossBatchMemory(ContrastiveLoss(), 16, memory_size=32)(e, y)
    b = CrossBatchMemory(ContrastiveLoss(), 16, memory_size=32)(e, y.to(torch.int32))
    assert torch.equal(a, b)


def test_string_labels_and_a_single_item_in_retrieval_metrics():
    x = np.random.default_rng(0).random((6, 4)).astype(np.float32)
    names = retrieval_metrics(x, np.array(list("aabbcc")))
    codes = retrieval_metrics(x, np.array([0, 0, 1, 1, 2, 2]))
    assert names["map_at_r"] == codes["map_at_r"]
    split = retrieval_metrics(x[:2], ["b", "a"], x[2:], ["a", "a", "b", "c"])
    same = retrieval_metrics(x[:2], np.array([1, 0]), x[2:], np.array([0, 0, 1, 2]))
    assert split["map_at_r"] == same["map_at_r"]
    with pytest.warns(UserWarning, match="NaN"):
        one = retrieval_metrics(x[:1], np.array([0]))
    assert np.isnan(one["map_at_r"]) and one["num_queries"] == 0


@pytest.mark.parametrize("miner", [BatchHardMiner(), UniformHistogramMiner()])
def test_miners_return_empty_tuples_on_an_empty_batch(miner):
    out = miner(torch.randn(0, 8), torch.zeros(0, dtype=torch.long))
    assert all(t.numel() == 0 for t in out)


def test_mined_pairs_against_a_reference_set_keep_the_embeddings_dtype():
    torch.manual_seed(0)
    e, y = torch.randn(8, 8), torch.randint(0, 3, (8,))
    r, ry = torch.randn(20, 8), torch.randint(0, 3, (20,))
    pairs = MultiSimilarityMiner()(e, y, r, ry)
    loss = TripletMarginLoss()(e, y, indices=pairs, ref_embeddings=r, ref_labels=ry)
    assert loss.dtype == torch.float32


def test_angular_loss_takes_mined_pairs_without_labels():
    from dmlkit.losses import AngularLoss

    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    y = torch.arange(16) % 4
    loss = AngularLoss()(emb, indices=MultiSimilarityMiner()(emb, y))
    assert torch.isfinite(loss) and loss > 0


def test_two_view_losses_take_the_second_view_either_way():
    from dmlkit.losses import NTXentLoss, SelfSupervisedLoss, VICRegLoss

    torch.manual_seed(0)
    a, b = torch.randn(8, 4), torch.randn(8, 4)
    for loss in (SelfSupervisedLoss(NTXentLoss()), VICRegLoss()):
        assert torch.equal(loss(a, b), loss(a, ref_embeddings=b))
