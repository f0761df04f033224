"""Weak supervision: tuple datasets, their collation, and losses trained from tuples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dmlkit.data.tuples import (
    TupleDataset,
    pairs_from_labels,
    read_tuples_csv,
    triplets_from_labels,
    tuples_to_indices,
    write_tuples_csv,
)
from dmlkit.functional import Pairs, Triplets
from dmlkit.models import MLPEmbedder
from dmlkit.registry import LOSSES


def features(n=30, d=5, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def labels(n=30, classes=4):
    return torch.arange(n) % classes


def test_tuples_to_indices_reconstructs_triplets():
    rows = torch.tensor([[7, 3, 9], [3, 7, 1], [9, 9, 4]])
    unique, idx = tuples_to_indices(rows)
    assert isinstance(idx, Triplets)
    assert unique.tolist() == [1, 3, 4, 7, 9]
    for col, member in enumerate(idx):
        assert member.dtype == torch.long
        assert unique[member].tolist() == rows[:, col].tolist()


def test_tuples_to_indices_splits_pairs_by_similarity():
    rows = torch.tensor([[5, 2], [2, 8], [8, 5], [0, 2]])
    similar = torch.tensor([1, 0, 1, 0])
    unique, idx = tuples_to_indices(rows, similar)
    assert isinstance(idx, Pairs)
    assert list(zip(unique[idx.a1].tolist(), unique[idx.p].tolist(), strict=True)) == [
        (5, 2),
        (8, 5),
    ]
    assert list(zip(unique[idx.a2].tolist(), unique[idx.n].tolist(), strict=True)) == [
        (2, 8),
        (0, 2),
    ]
    with pytest.raises(ValueError, match="similar"):
        tuples_to_indices(rows)


def test_collate_equals_get_batch_and_loads_each_item_once():
    x = features()
    trip = triplets_from_labels(labels(), 12, seed=1)
    ds = TupleDataset(trip, x)
    assert ds.labels is None and ds.kind == "triplets" and len(ds) == 12
    batch_ids = [0, 3, 5, 7, 11]
    inputs, none, idx = ds.collate([ds[i] for i in batch_ids])
    inputs2, _, idx2 = ds.get_batch(batch_ids)
    assert none is None
    torch.testing.assert_close(inputs, inputs2)
    assert all(torch.equal(a, b) for a, b in zip(idx, idx2, strict=True))
    used = trip[batch_ids]
    assert inputs.shape[0] == torch.unique(used).numel()
    for col, member in enumerate(idx):
        torch.testing.assert_close(inputs[member], x[used[:, col]])


def test_dataloader_with_collate():
    from torch.utils.data import DataLoader

    pairs, similar = pairs_from_labels(labels(), 16, seed=2)
    ds = TupleDataset(pairs, features(), similar)
    batches = list(DataLoader(ds, batch_size=8, collate_fn=ds.collate))
    assert len(batches) == 2
    inputs, lab, idx = batches[0]
    assert lab is None and isinstance(idx, Pairs)
    assert idx.a1.numel() + idx.a2.numel() == 8
    assert idx.a1.numel() == int(similar[:8].sum())


def weak_and_explicit(kind, n=40, num=24, seed=3):
    """A tuple dataset over ``features`` and the same tuples as explicit original ids."""
    x, y = features(n=n), labels(n=n)
    if kind == "pairs":
        rows, similar = pairs_from_labels(y, num, seed=seed)
        pos, neg = rows[similar == 1], rows[similar == 0]
        return x, TupleDataset(rows, x, similar), Pairs(pos[:, 0], pos[:, 1], neg[:, 0], neg[:, 1])
    rows = triplets_from_labels(y, num, seed=seed)
    return x, TupleDataset(rows, x), Triplets(rows[:, 0], rows[:, 1], rows[:, 2])


def model_and_grads(loss_fn, model, inputs, indices):
    value = loss_fn(model(inputs), None, indices=indices)
    return value, torch.autograd.grad(value, list(model.parameters()))


def mlp():
    torch.manual_seed(0)
    return MLPEmbedder(in_features=5, dim=4, hidden=(8,)).eval()


@pytest.mark.parametrize(
    "name,kind",
    [
        ("contrastive", "pairs"),
        ("contrastive", "triplets"),
        ("triplet_margin", "triplets"),
        ("triplet_margin", "pairs"),
    ],
)
def test_tuple_mean_loss_from_tuples_equals_explicit_indices(name, kind):
    """Losses averaged over tuples: a batch of unique items equals the full item set."""
    x, ds, explicit = weak_and_explicit(kind)
    model, loss_fn = mlp(), LOSSES.build(name)
    inputs, lab, idx = ds.get_batch(range(len(ds)))
    assert lab is None
    weak, g_weak = model_and_grads(loss_fn, model, inputs, idx)
    full, g_full = model_and_grads(loss_fn, model, x, explicit)  # every item, original ids
    assert weak.item() > 0
    assert weak.item() == pytest.approx(full.item(), rel=1e-5, abs=1e-7)
    for a, b in zip(g_weak, g_full, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    if kind == "triplets" and name == "triplet_margin":  # and equals the naive formula
        e = torch.nn.functional.normalize(model(x).detach().double(), dim=1)
        a, p, n = explicit
        v = torch.relu((e[a] - e[p]).norm(dim=1) - (e[a] - e[n]).norm(dim=1) + loss_fn.margin)
        assert weak.item() == pytest.approx(float(v.sum() / (v > 0).sum()), rel=1e-4)


@pytest.mark.parametrize("name", ["multi_similarity", "circle", "contrastive"])
def test_any_loss_from_tuples_equals_explicit_remap(name):
    """Per-anchor losses average over the batch's items, so compare on the same items."""
    if name not in LOSSES:
        pytest.skip(f"{name} is not registered")
    x, ds, explicit = weak_and_explicit("pairs")
    model, loss_fn = mlp(), LOSSES.build(name)
    inputs, _, idx = ds.get_batch(range(len(ds)))
    ids = sorted(set(torch.cat(list(explicit)).tolist()))  # the batch's items, by id
    where = {item: k for k, item in enumerate(ids)}
    remapped = Pairs(*(torch.tensor([where[int(i)] for i in t]) for t in explicit))
    weak, g_weak = model_and_grads(loss_fn, model, inputs, idx)
    ref, g_ref = model_and_grads(loss_fn, model, x[ids], remapped)
    assert weak.item() > 0
    assert weak.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-7)
    for a, b in zip(g_weak, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_csv_round_trip_with_feature_file(tmp_path, suffix):
    x = features().numpy()
    path = tmp_path / ("f" + suffix)
    if suffix == ".npy":
        np.save(path, x)
    else:
        np.savez(path, x=x)
    trip = triplets_from_labels(labels(), 10, seed=4)
    ds = read_tuples_csv(write_tuples_csv(tmp_path / "t.csv", trip), "triplets", path)
    assert torch.equal(ds.tuples, trip) and torch.allclose(ds.items, torch.from_numpy(x))
    rows, similar = pairs_from_labels(labels(), 10, seed=5)
    ds = read_tuples_csv(write_tuples_csv(tmp_path / "p.csv", rows, similar), "pairs", path)
    assert torch.equal(ds.tuples, rows) and torch.equal(ds.similar, similar.bool())


def test_csv_of_image_paths(tmp_path):
    from PIL import Image

    names = []
    for i in range(4):
        img = np.full((6, 6), 40 * i, dtype=np.uint8)
        Image.fromarray(img).save(tmp_path / f"im{i}.png")
        names.append(f"im{i}.png")
    (tmp_path / "pairs.csv").write_text(
        "item_a,item_b,similar\nim0.png,im1.png,1\nim2.png,im0.png,0\nim3.png,im2.png,1\n"
    )
    ds = read_tuples_csv(tmp_path / "pairs.csv", "pairs", image_size=4)
    inputs, _, idx = ds.get_batch([0, 1])
    assert inputs.shape == (3, 1, 4, 4)  # im0, im1, im2 each loaded once
    # ids follow first appearance: im0 -> 0, im1 -> 1, im2 -> 2
    values = inputs.flatten(1).mean(dim=1) * 255
    torch.testing.assert_close(values, torch.tensor([0.0, 40.0, 80.0]), atol=0.5, rtol=0)
    assert idx.a1.tolist() == [0] and idx.p.tolist() == [1]
    assert idx.a2.tolist() == [2] and idx.n.tolist() == [0]


def test_bad_inputs(tmp_path):
    x = features(n=5)
    with pytest.raises(ValueError, match="outside"):
        TupleDataset(torch.tensor([[0, 1, 5]]), x)
    with pytest.raises(ValueError, match="similar"):
        TupleDataset(torch.tensor([[0, 1]]), x)
    with pytest.raises(ValueError, match="shape"):
        TupleDataset(torch.tensor([0, 1]), x)
    (tmp_path / "bad.csv").write_text("a,b,c\n1,2,3\n")
    np.save(tmp_path / "f.npy", x.numpy())
    with pytest.raises(ValueError, match="anchor"):
        read_tuples_csv(tmp_path / "bad.csv", "triplets", tmp_path / "f.npy")


def test_triplets_from_labels_valid_and_seeded():
    y = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 3])
    t = triplets_from_labels(y, 4000, seed=0)
    a, p, n = t.T
    assert (y[a] == y[p]).all() and (a != p).all() and (y[a] != y[n]).all()
    assert not (a == 5).any()  # a singleton class has no positive
    assert torch.equal(t, triplets_from_labels(y, 4000, seed=0))
    assert not torch.equal(t, triplets_from_labels(y, 4000, seed=1))
    # positives uniform within the class (anchor 6: items 7, 8, 9)
    counts = torch.bincount(p[a == 6], minlength=10)[7:].double()
    assert counts.min() / counts.max() > 0.7


@pytest.mark.parametrize("body, kind, words", [
    ("anchor,positive,negative\n0,1,2\n3,4\n", "triplets", "line 3: no negative"),
    ("item_a,item_b,similar\n0,1,yes\n", "pairs", "line 2: similar must be 1 or 0"),
    ("anchor,positive,negative\n0,1,2\n", "triplets", "set data.features"),
])
def test_tuple_files_name_the_bad_line(tmp_path, body, kind, words):
    from dmlkit.data.tuples import read_tuples_csv

    (tmp_path / "t.csv").write_text(body)
    features = None  # the last case: integer rows given without their feature array
    if "data.features" not in words:
        np.save(tmp_path / "x.npy", np.zeros((8, 2), np.float32))
        features = tmp_path / "x.npy"
    with pytest.raises(ValueError, match=words):
        read_tuples_csv(tmp_path / "t.csv", kind, features=features)


def test_true_and_false_are_read_as_similar_flags(tmp_path):
    from dmlkit.data.tuples import read_tuples_csv

    (tmp_path / "t.csv").write_text("item_a,item_b,similar\n0,1,true\n1,2,False\n2,3,1\n")
    np.save(tmp_path / "x.npy", np.zeros((8, 2), np.float32))
    pairs = read_tuples_csv(tmp_path / "t.csv", "pairs", features=tmp_path / "x.npy")
    assert pairs.similar.tolist() == [1, 0, 1]


def test_repeated_and_self_tuples_are_warned_about(tmp_path):
    from dmlkit.data.tuples import read_tuples_csv
    from dmlkit.training.weak import _warn_repeated

    np.save(tmp_path / "x.npy", np.zeros((8, 2), np.float32))
    (tmp_path / "t.csv").write_text("anchor,positive,negative\n0,1,2\n0,1,2\n3,3,4\n")
    tuples = read_tuples_csv(tmp_path / "t.csv", "triplets", features=tmp_path / "x.npy")
    with pytest.warns(UserWarning) as record:
        _warn_repeated(tuples, "t.csv")
    messages = " ".join(str(w.message) for w in record)
    assert "1 of 3 tuples repeat" in messages and "1 tuples name one item twice" in messages
