"""Weak supervision inputs checked up front: tuple CSV contents, image files, pair kinds,
and what a weak run leaves on disk (metrics.json, a failed run's directory)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from dmlkit.config.schema import Config
from dmlkit.data.dataset import ArrayDataset
from dmlkit.data.tuples import read_tuples_csv
from dmlkit.training.offline_mining import OfflineHardNegativeSampler


def _images(root, sizes):
    """Grey PNGs ``im/0.png, im/1.png, ...`` of the given sides."""
    from PIL import Image

    (root / "im").mkdir()
    for i, side in enumerate(sizes):
        Image.fromarray(np.full((side, side), 30 * i, np.uint8)).save(root / "im" / f"{i}.png")


TRIPLETS = "anchor,positive,negative\n"


@pytest.mark.parametrize("color", ["grayscale", "auto"])
def test_a_missing_image_is_named_when_the_csv_is_read(tmp_path, color):
    _images(tmp_path, [6, 6, 6])
    (tmp_path / "t.csv").write_text(TRIPLETS + "im/0.png,im/1.png,im/2.png\n"
                                    "im/1.png,im/0.png,im/nope.png\n")
    with pytest.raises(FileNotFoundError, match=r"t.csv, line 3: image 'im/nope.png' not found"):
        read_tuples_csv(tmp_path / "t.csv", "triplets", color=color)
    (tmp_path / "t.csv").write_text(TRIPLETS + "im/0.png,im/1.png,im\n")  # a folder
    with pytest.raises(FileNotFoundError, match="line 2: image 'im' not found"):
        read_tuples_csv(tmp_path / "t.csv", "triplets", color=color)


def test_images_of_different_sizes_need_image_size(tmp_path):
    _images(tmp_path, [6, 6, 9])
    (tmp_path / "t.csv").write_text(TRIPLETS + "im/0.png,im/1.png,im/0.png\n"
                                    "im/1.png,im/0.png,im/2.png\n")
    with pytest.raises(ValueError, match=r"line 3: image 'im/2.png' is 9x9 but 'im/0.png' "
                                         r"\(line 2\) is 6x6.*set data.image_size"):
        read_tuples_csv(tmp_path / "t.csv", "triplets")
    ds = read_tuples_csv(tmp_path / "t.csv", "triplets", image_size=5)
    assert ds.get_batch([0, 1])[0].shape == (3, 1, 5, 5)


@pytest.mark.parametrize("body, features, words", [
    (TRIPLETS + "99999999999999999999999,2,3\n", True, "line 2: entry 9+ is too large"),
    (TRIPLETS, True, "holds no tuples"),
    (TRIPLETS, False, "holds no tuples"),
    ("item_a,item_b,similar\n", True, "holds no tuples"),
    (TRIPLETS + "0,1,2\n1,2,3,4\n", True, "line 3: 4 fields but the header names 3"),
    (TRIPLETS + "0,1,2\n\n1,2,x\n", True, "line 4: .*integer rows, got 'x'"),
])
def test_bad_tuple_files_say_what_is_wrong(tmp_path, body, features, words):
    (tmp_path / "t.csv").write_text(body)
    np.save(tmp_path / "x.npy", np.zeros((8, 2), np.float32))
    kind = "pairs" if body.startswith("item_a") else "triplets"
    with pytest.raises(ValueError, match=words):
        read_tuples_csv(tmp_path / "t.csv", kind, tmp_path / "x.npy" if features else None)


def test_a_byte_order_mark_before_the_header_is_skipped(tmp_path):
    (tmp_path / "t.csv").write_bytes(("\ufeff" + TRIPLETS + "0,1,2\n3,4,5\n").encode("utf-8"))
    np.save(tmp_path / "x.npy", np.zeros((8, 2), np.float32))
    ds = read_tuples_csv(tmp_path / "t.csv", "triplets", tmp_path / "x.npy")
    assert ds.tuples.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_two_spellings_of_one_file_are_one_item(tmp_path):
    from dmlkit.training.weak import _warn_repeated

    _images(tmp_path, [6, 6, 6])
    (tmp_path / "t.csv").write_text(TRIPLETS + "im/0.png,./im/0.png,im/1.png\n"
                                    f"{tmp_path}/im/2.png,im/../im/1.png,./im/0.png\n")
    ds = read_tuples_csv(tmp_path / "t.csv", "triplets")
    assert len(ds.items) == 3 and ds.tuples.tolist() == [[0, 0, 1], [2, 1, 0]]
    with pytest.warns(UserWarning, match="1 tuples name one item twice"):
        _warn_repeated(ds, "t.csv")


def test_pairs_are_unordered_and_contradicting_flags_are_warned_about(tmp_path):
    from dmlkit.training.weak import _warn_repeated

    np.save(tmp_path / "x.npy", np.zeros((8, 2), np.float32))
    (tmp_path / "p.csv").write_text("item_a,item_b,similar\n0,1,1\n1,0,1\n2,3,1\n3,2,0\n4,5,0\n")
    pairs = read_tuples_csv(tmp_path / "p.csv", "pairs", tmp_path / "x.npy")
    with pytest.warns(UserWarning) as record:
        _warn_repeated(pairs, "p.csv")
    messages = " ".join(str(w.message) for w in record)
    assert "1 of 5 tuples repeat" in messages  # (1, 0) repeats (0, 1)
    assert "1 pairs are listed both as similar and as dissimilar" in messages  # (2, 3)


def _weak_config(root, rows, similar, **training):
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0)).numpy()
    np.save(root / "x.npy", x)
    lines = "".join(f"{a},{b},{s}\n" for (a, b), s in zip(rows, similar, strict=True))
    (root / "p.csv").write_text("item_a,item_b,similar\n" + lines)
    return Config.from_dict({
        "name": "weak_inputs",
        "data": {"kind": "pairs", "tuples": str(root / "p.csv"),
                 "features": str(root / "x.npy"), "test_fraction": 0.25},
        "model": {"name": "mlp", "dim": 4, "hidden": [8]},
        "loss": {"name": "contrastive"},
        "training": {"epochs": 1, "batch_size": 16, "num_threads": 1, **training},
    })


def _pairs(n=40, seed=0):
    g = np.random.default_rng(seed)
    rows = [(int(a), int((a + 1 + g.integers(38)) % 40)) for a in g.integers(40, size=n)]
    return rows, [i % 2 for i in range(n)]


@pytest.mark.parametrize("flag, lacking", [(1, "dissimilar"), (0, "similar")])
def test_pairs_of_one_kind_are_refused(tmp_path, flag, lacking):
    from dmlkit.training.weak import build_weak_splits

    rows, _ = _pairs()
    cfg = _weak_config(tmp_path, rows, [flag] * len(rows))
    with pytest.raises(ValueError, match=f"all 40 pairs are .*needs {lacking}"):
        build_weak_splits(cfg)


def test_an_undefined_metric_is_null_in_metrics_json(tmp_path, monkeypatch):
    from dmlkit.training import weak

    rows, similar = _pairs()
    held = weak.TupleDataset(torch.tensor([[0, 1], [2, 3]]), torch.zeros(4, 2), [1, 1])
    assert np.isnan(weak.tuple_metrics(None, held)["pair_auc"])  # one kind: AUC undefined
    monkeypatch.setattr(weak, "tuple_metrics", lambda *a, **k: {"pair_auc": float("nan")})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = weak.train_weak_run(_weak_config(tmp_path, rows, similar), tmp_path / "run",
                                     False, lambda *a: None, ())
    text = (tmp_path / "run" / "metrics.json").read_text()
    metrics = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert metrics["pair_auc"] is None and metrics["baseline"]["pair_auc"] is None
    assert "n/a" in weak.tuple_metrics_table(metrics)
    assert "n/a" in weak.tuple_metrics_table(result.metrics)


def test_a_trainer_that_fails_to_build_leaves_no_run_directory(tmp_path, monkeypatch):
    from dmlkit.training import weak

    def broken(*args, **kwargs):
        raise ValueError("bad sampler setting")

    monkeypatch.setattr(weak, "Trainer", broken)
    cfg = _weak_config(tmp_path, *_pairs())
    for out in (tmp_path / "fresh", tmp_path / "kept"):
        if out.name == "kept":
            out.mkdir()  # a directory the call did not create stays
        with warnings.catch_warnings(), pytest.raises(ValueError, match="bad sampler"):
            warnings.simplefilter("ignore")
            weak.train_weak_run(cfg, out, False, lambda *a: None, ())
    assert not (tmp_path / "fresh").exists()
    assert (tmp_path / "kept" / "config.yaml").is_file()


@pytest.mark.parametrize("batch_size, multiple", [(81, 2), (10, 4), (96, 7), (30, 4), (4, 4)])
def test_offline_batches_stay_within_batch_size(batch_size, multiple):
    torch.manual_seed(0)
    ds = ArrayDataset(torch.randn(200, 8), torch.arange(200) % 8)
    make = lambda m: OfflineHardNegativeSampler(  # noqa: E731
        ds, torch.nn.Linear(8, 4), batch_size=batch_size, k=5, seed=0, batch_multiple=m)
    plain, even = make(1), make(multiple)
    ids = torch.arange(200)  # triplets (i, i + 8, i + 1) sharing items: sizes vary
    for s in (plain, even):
        s.load_state_dict({"epoch": 0, "mined_epoch": 0,
                           "triplets": torch.stack([ids, (ids + 8) % 200, (ids + 1) % 200], 1)})
    for p, e in zip(plain, even, strict=True):
        assert len(e) <= batch_size and len(e) % multiple == 0 and len(set(e)) == len(e)
        kept = next((j for j in range(len(e)) if j >= len(p) or e[j] != p[j]), len(e))
        assert len(e) - kept < multiple  # triplet members lead, then fewer than m extras


def test_offline_batch_multiple_without_room_for_a_triplet_is_refused():
    """Checked when constructed and when set later (the distributed trainer sets it to
    the process count): a batch must hold a whole triplet in a multiple of it."""
    ds = ArrayDataset(torch.randn(20, 8), torch.arange(20) % 4)
    with pytest.raises(ValueError, match="batch_size 4 holds no whole triplet .* multiple of 6"):
        OfflineHardNegativeSampler(ds, torch.nn.Linear(8, 4), batch_size=4, batch_multiple=6)
    sampler = OfflineHardNegativeSampler(ds, torch.nn.Linear(8, 4), batch_size=3)
    with pytest.raises(ValueError, match="raise batch_size to at least 4"):
        sampler.batch_multiple = 2  # 3 items over 2 processes: 2, no whole triplet
    sampler = OfflineHardNegativeSampler(ds, torch.nn.Linear(8, 4), batch_size=6)
    sampler.batch_multiple = 4  # 4 items: one triplet and one extra
    ids = torch.arange(20)
    sampler.load_state_dict({"epoch": 0, "mined_epoch": 0, "triplets": torch.stack(
        [ids, (ids + 4) % 20, (ids + 1) % 20], 1)})
    for batch in sampler:
        assert len(batch) == 4 and len(batch) <= 6
        a, p, n = batch[:3]  # the whole first triplet leads every batch
        assert ds.labels[a] == ds.labels[p] and ds.labels[a] != ds.labels[n]
