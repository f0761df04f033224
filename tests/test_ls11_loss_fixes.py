"""Cross-batch memory's inner losses, classifier losses in inference mode, pickled and in
float16, and settings refused where the losses are built."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

from dmlkit.losses import (
    ArcFaceLoss,
    ContrastiveLoss,
    CosFaceLoss,
    CrossBatchMemory,
    FastAPLoss,
    MultiSimilarityLoss,
    NCALoss,
    NormalizedSoftmaxLoss,
    P2SGradLoss,
    QuadrupletLoss,
    SoftTripleLoss,
    SphereFaceLoss,
    SubCenterArcFaceLoss,
    TripletMarginLoss,
    WeightedSumLoss,
)

pml_losses = pytest.importorskip("pytorch_metric_learning.losses")

DIM = 5


def grouped(seed: int = 0, n: int = 12, dim: int = DIM):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.arange(n) // 3


# -- cross-batch memory: inner losses that cannot exclude an anchor's own memory slot -----------
@pytest.mark.parametrize("inner", [FastAPLoss, NCALoss], ids=["fast_ap", "nca"])
def test_memory_refuses_losses_taking_positives_from_labels(inner):
    e, y = grouped()
    # why: against a memory holding the batch, each query finds itself as a positive
    with_self = inner()(e, y, ref_embeddings=e.clone(), ref_labels=y.clone())
    assert not torch.allclose(with_self, inner()(e, y))
    with pytest.raises(ValueError, match=inner.__name__) as err:
        CrossBatchMemory(inner(), DIM, memory_size=5)
    message = str(err.value)
    assert "\n" not in message and "own memory slot" in message
    assert repr(inner.registry_name) in message  # the config's name too
    assert "contrastive" in message and "triplet_margin" in message  # the losses that work


def test_memory_refuses_quadruplet_whose_second_term_needs_quadruplets():
    e, y = grouped()
    assert not torch.allclose(QuadrupletLoss()(e, y), TripletMarginLoss(margin=0.2)(e, y))
    with pytest.raises(ValueError, match="QuadrupletLoss") as err:
        CrossBatchMemory(QuadrupletLoss(), DIM, memory_size=5)
    assert "\n" not in str(err.value) and "multi_similarity" in str(err.value)


@pytest.mark.parametrize("inner", [FastAPLoss, NCALoss, QuadrupletLoss])
def test_memory_refuses_such_losses_nested_in_a_weighted_sum(inner):
    nested = WeightedSumLoss([ContrastiveLoss(), inner()])
    with pytest.raises(ValueError, match=inner.__name__):
        CrossBatchMemory(nested, DIM, memory_size=5)


def test_memory_first_call_still_equals_the_plain_loss_for_pair_losses():
    e, y = grouped()
    for inner in (ContrastiveLoss, TripletMarginLoss, MultiSimilarityLoss):
        got = CrossBatchMemory(inner(), DIM, memory_size=12)(e, y)
        torch.testing.assert_close(got, inner()(e, y))


@pytest.mark.parametrize(
    "kwargs,error,text",
    [
        ({"embedding_size": 4.5}, TypeError, "embedding_size must be an int, got 4.5"),
        ({"memory_size": True}, TypeError, "memory_size must be an int, got True"),
        ({"memory_size": 8.0}, TypeError, "memory_size must be an int, got 8.0"),
        ({"memory_size": 0}, ValueError, "memory_size must be >= 1, got 0"),
        ({"embedding_size": -2}, ValueError, "embedding_size must be >= 1, got -2"),
    ],
)
def test_memory_sizes_must_be_positive_integers(kwargs, error, text):
    params = {"embedding_size": DIM, "memory_size": 8, **kwargs}
    with pytest.raises(error, match=text):
        CrossBatchMemory(ContrastiveLoss(), **params)


# -- ArcFace without autograd ------------------------------------------------------------------
def arcface_pair(**kwargs):
    torch.manual_seed(0)
    theirs = pml_losses.ArcFaceLoss(num_classes=4, embedding_size=16, **kwargs)
    ours = ArcFaceLoss(num_classes=4, embedding_size=16, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_arcface_without_autograd_gives_the_training_value(mode):
    ours, theirs = arcface_pair()
    g = torch.Generator().manual_seed(1)
    emb, labels = torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)
    trained = ours(emb.clone().requires_grad_(True), labels)
    context = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    with context():
        got = ours(emb, labels)
        expected = theirs(emb, labels)
    assert not got.requires_grad
    torch.testing.assert_close(got, trained.detach())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_arcface_with_frozen_weights_and_plain_inputs_gives_the_same_value():
    ours, _ = arcface_pair()
    g = torch.Generator().manual_seed(2)
    emb, labels = torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)
    trained = ours(emb.clone().requires_grad_(True), labels)
    ours.requires_grad_(False)
    torch.testing.assert_close(ours(emb, labels), trained.detach())


# -- classifier losses pickle -------------------------------------------------------------------
CLASSIFIERS = [
    ArcFaceLoss,
    CosFaceLoss,
    SubCenterArcFaceLoss,
    SphereFaceLoss,
    NormalizedSoftmaxLoss,
    SoftTripleLoss,
]


@pytest.mark.parametrize("cls", CLASSIFIERS, ids=[c.__name__ for c in CLASSIFIERS])
def test_classifier_losses_round_trip_through_torch_save(cls):
    torch.manual_seed(0)
    loss_fn = cls(num_classes=4, embedding_size=DIM)
    buffer = io.BytesIO()
    torch.save(loss_fn, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    e, y = grouped(3, n=8)
    y = y % 4
    torch.testing.assert_close(loaded(e, y), loss_fn(e, y))
    # the copy still reads state saved under the old row-layout name
    (key,) = [k for k in loaded.state_dict() if k in ("W", "fc")]
    old = {"W": "weight", "fc": "centers"}[key]
    rows = torch.randn_like(loaded.state_dict()[key]).T
    loaded.load_state_dict({old: rows})
    torch.testing.assert_close(loaded.state_dict()[key], rows.T)


def test_classifier_loss_pickles_with_pickle_module():
    loss_fn = ArcFaceLoss(num_classes=3, embedding_size=DIM)
    clone = pickle.loads(pickle.dumps(loss_fn))
    torch.testing.assert_close(clone.W, loss_fn.W)


# -- P2SGrad in float16 -------------------------------------------------------------------------
def test_p2s_grad_half_module_matches_pytorch_metric_learning():
    torch.manual_seed(0)
    theirs = pml_losses.P2SGradLoss(descriptors_dim=8, num_classes=4).half()
    ours = P2SGradLoss(descriptors_dim=8, num_classes=4).half()
    ours.load_state_dict(theirs.state_dict())
    x, y = torch.randn(6, 8).half(), torch.tensor([0, 1, 2, 3, 0, 1])
    got = ours(x, y)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, theirs(x, y).float(), rtol=2e-2, atol=2e-3)
    assert ours.weight.dtype == torch.float16


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_p2s_grad_low_precision_module_with_wide_embeddings(dtype):
    torch.manual_seed(0)
    loss_fn = P2SGradLoss(descriptors_dim=512, num_classes=10).to(dtype)
    x, y = torch.randn(6, 512, dtype=dtype), torch.arange(6)
    full = P2SGradLoss(descriptors_dim=512, num_classes=10)
    full.load_state_dict({"weight": loss_fn.weight.float()})
    got = loss_fn(x, y)
    torch.testing.assert_close(got, full(x.float(), y), rtol=2e-2, atol=1e-3)
    norms = loss_fn.weight.float().norm(dim=0)
    assert bool(((norms - 1).abs() < 1e-2).all())


def test_p2s_grad_half_module_still_refuses_a_zero_class_vector():
    loss_fn = P2SGradLoss(descriptors_dim=8, num_classes=4).half()
    with torch.no_grad():
        loss_fn.weight[:, 2] = 0.0
    with pytest.raises(ValueError, match="class vector 2"):
        loss_fn(torch.randn(6, 8).half(), torch.tensor([0, 1, 2, 3, 0, 1]))


# -- multi-similarity scales --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["alpha", "beta"])
@pytest.mark.parametrize("value", [0, 0.0, -1.0, float("nan"), float("inf"), True])
def test_multi_similarity_refuses_scales_that_are_not_positive(name, value):
    with pytest.raises(ValueError, match=f"^{name} must be a real number in \\(0, inf\\)"):
        MultiSimilarityLoss(**{name: value})


def test_multi_similarity_takes_integer_scales():
    e, y = grouped()
    torch.testing.assert_close(
        MultiSimilarityLoss(alpha=2, beta=50)(e, y), MultiSimilarityLoss(alpha=2.0, beta=50.0)(e, y)
    )


# -- sub-center ArcFace outliers ----------------------------------------------------------------
@pytest.mark.parametrize("bad", [-1, 7])
def test_subcenter_outliers_refuse_labels_outside_the_classes(bad):
    loss_fn = SubCenterArcFaceLoss(num_classes=3, embedding_size=DIM, sub_centers=2)
    labels = torch.tensor([0, 1, bad, 2])
    with pytest.raises(ValueError, match=f"label {bad} is outside \\[0, num_classes=3\\)"):
        loss_fn.outliers(torch.randn(4, DIM), labels)
