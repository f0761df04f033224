"""Identifier: ranking against loops, incremental galleries, calibration, persistence."""

from functools import partial

import numpy as np
import pytest
from blob_helpers import labelled_blobs
from sklearn.exceptions import NotFittedError

from dmlkit.apps import Identifier
from dmlkit.apps.identification_metrics import far_threshold
from dmlkit.index import IndexFormatError

blobs = partial(labelled_blobs, n_classes=8, per_class=6, d=5, noise=0.7)


def sim(q, g, metric):
    q, g = q.astype(np.float64), g.astype(np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
    if metric == "euclidean":
        return -np.sqrt(((q[:, None] - g[None]) ** 2).sum(-1))
    return q @ g.T


def loop_identity_scores(q, x, y, mode, metric):
    """(n, C) score of each identity: best item, or the prototype."""
    classes = np.unique(y)
    if mode == "prototype":
        protos = np.stack([x[y == c].astype(np.float64).mean(0) for c in classes])
        return classes, sim(q, protos, metric)
    s = sim(q, x, metric)
    return classes, np.stack([s[:, y == c].max(1) for c in classes], 1)


@pytest.mark.parametrize("mode", ["nearest", "prototype"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean", "dot"])
def test_identify_matches_loop(mode, metric):
    x, y = blobs()
    q, _ = blobs(seed=1)
    ident = Identifier(mode=mode, metric=metric, target_far=None).fit(x, y)
    names, scores = ident.identify(q, k=3)
    classes, ref = loop_identity_scores(q, x, y, mode, metric)
    order = np.argsort(-ref, axis=1, kind="stable")[:, :3]
    np.testing.assert_allclose(scores, np.take_along_axis(ref, order, 1), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(names, classes[order])
    np.testing.assert_array_equal(ident.predict(q), classes[order[:, 0]])


def test_faiss_flat_agrees_with_exact():
    x, y = blobs()
    q, _ = blobs(seed=2)
    a = Identifier(index="exact").fit(x, y)
    b = Identifier(index="Flat").fit(x, y)
    np.testing.assert_array_equal(a.identify(q, 4)[0], b.identify(q, 4)[0])
    np.testing.assert_allclose(a.identify(q, 4)[1], b.identify(q, 4)[1], atol=1e-5)
    assert a.threshold_ == pytest.approx(b.threshold_, abs=1e-5)


@pytest.mark.parametrize("mode", ["nearest", "prototype"])
def test_incremental_enroll_and_remove_equal_a_rebuild(mode):
    x, y = blobs()
    q, _ = blobs(seed=3)
    full = Identifier(mode=mode, target_far=None).fit(x, y)
    part = Identifier(mode=mode, target_far=None).fit(x[y < 4], y[y < 4])
    part.enroll(x[y >= 4][::2], y[y >= 4][::2]).enroll(x[y >= 4][1::2], y[y >= 4][1::2])
    np.testing.assert_array_equal(part.classes_, full.classes_)
    np.testing.assert_array_equal(part.identify(q, 3)[0], full.identify(q, 3)[0])
    np.testing.assert_allclose(part.identify(q, 3)[1], full.identify(q, 3)[1], atol=1e-5)
    part.remove([2, 5])
    keep = ~np.isin(y, [2, 5])
    rebuilt = Identifier(mode=mode, target_far=None).fit(x[keep], y[keep])
    np.testing.assert_array_equal(part.classes_, rebuilt.classes_)
    np.testing.assert_array_equal(part.identify(q, 3)[0], rebuilt.identify(q, 3)[0])
    # a removed identity can come back
    part.enroll(x[y == 2], y[y == 2])
    assert 2 in part.classes_


def test_leave_identity_out_calibration_matches_loop():
    x, y = blobs()
    ident = Identifier(target_far=0.1).fit(x, y)
    s = sim(x, x, "cosine")
    impostor = [max(s[i, y != y[i]]) for i in range(len(y))]
    assert ident.threshold_ == pytest.approx(far_threshold(impostor, 0.1), abs=1e-5)
    # with real unknowns: the false-alarm rate on them meets the target
    unknown, _ = blobs(n_classes=30, seed=9)
    ident.calibrate(unknown)
    _, scores = ident.identify(unknown, k=1)
    assert (scores[:, 0] >= ident.threshold_).mean() <= 0.1


def test_open_set_predict_and_evaluate():
    x, y = blobs(n_classes=10, noise=0.3)
    q, yq = blobs(n_classes=10, noise=0.3, seed=0)  # same centres
    known = y < 5
    ident = Identifier(target_far=0.05, unknown_label=-1).fit(x[known], y[known])
    pred = ident.predict(q)
    assert set(np.unique(pred)) <= set(range(5)) | {-1}
    out = ident.evaluate(q, yq, fars=(0.05,), max_rank=5, curves=True)
    assert out["num_known"] == known.sum() and out["num_unknown"] == (~known).sum()
    _, ref = loop_identity_scores(q[yq < 5], x[known], y[known], "nearest", "cosine")
    rank = (ref > ref[np.arange(len(ref)), yq[yq < 5]][:, None]).sum(1)  # 0 = first
    np.testing.assert_allclose(out["cmc"], [(rank <= r).mean() for r in range(5)])
    assert out["dir_at_far_0.05"] <= out["rank1"]
    assert out["open_set_roc"]["far"][0] == 0.0
    # unknown queries not rejected by predict are the false alarms at threshold_
    assert out["far_at_threshold"] == pytest.approx((pred[yq >= 5] != -1).mean())


def test_string_identities_and_unknown_label():
    x, y = blobs()
    names = np.array([f"person{c}" for c in y])
    ident = Identifier(unknown_label="nobody", target_far=0.01).fit(x, names)
    far_away = np.full((2, 5), 50.0, dtype=np.float32)
    far_away[1] *= -1
    assert set(ident.predict(np.vstack([x[:3], far_away]))) <= set(names) | {"nobody"}
    ident.remove("person3")
    assert "person3" not in ident.classes_


def test_save_load_round_trip(tmp_path):
    x, y = blobs()
    q, _ = blobs(seed=4)
    for index in ("exact", "Flat"):
        for mode in ("nearest", "prototype"):
            ident = Identifier(mode=mode, index=index).fit(x, y)
            ident.save(tmp_path / f"{index}-{mode}")
            back = Identifier.load(tmp_path / f"{index}-{mode}")
            np.testing.assert_array_equal(back.identify(q, 3)[0], ident.identify(q, 3)[0])
            assert back.threshold_ == ident.threshold_
            back.enroll(x[:2], [100, 100]).remove([0])  # still incremental after loading
    path = tmp_path / "exact-nearest"
    (path / "index.vectors.npy").write_bytes(b"\x93NUMPY junk")
    with pytest.raises(IndexFormatError):
        Identifier.load(path)


def test_bad_input():
    x, y = blobs()
    with pytest.raises(NotFittedError):
        Identifier().predict(x)
    with pytest.raises(ValueError, match="0 sample"):
        Identifier().fit(x[:0], y[:0])
    ident = Identifier(target_far=None).fit(x, y)
    with pytest.raises(ValueError, match=r"not enrolled: \[42\]"):
        ident.remove([42])
    with pytest.raises(ValueError, match="features"):
        ident.predict(x[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        ident.enroll(np.full((1, 5), np.nan), [1])
    with pytest.raises(ValueError, match="one label per row"):
        ident.enroll(x[:3], [1, 2])
    ident.remove(np.unique(y))
    with pytest.raises(ValueError, match="gallery is empty"):
        ident.predict(x[:2])
    with pytest.raises(ValueError, match="one class"):
        Identifier(target_far=0.01).fit(x[:6], y[:6])
    with pytest.raises(ValueError, match="mode"):
        Identifier(mode="centroid").fit(x, y)


def test_search_depth_keeps_a_correct_prefix():
    x, y = blobs(n_classes=6, per_class=30)
    q, _ = blobs(n_classes=6, per_class=2, seed=5)
    full = Identifier(target_far=None).fit(x, y)
    shallow = Identifier(target_far=None, search_depth=8).fit(x, y)
    names, scores = full.identify(q, k=4)
    got, got_s = shallow.identify(q, k=4)
    found = got != -1
    assert found[:, 0].all() and not found.all()  # top-1 always, the tail may be cut
    np.testing.assert_array_equal(got[found], names[found])
    np.testing.assert_allclose(got_s[found], scores[found], atol=1e-6)


def test_run_directory_as_embedder(tmp_path):
    from dmlkit.config import Config
    from dmlkit.data import load_digits
    from dmlkit.runs import embed, load_run
    from dmlkit.training import train_run

    cfg = Config.from_dict({
        "data": {"name": "digits", "max_per_class": 10, "max_heldout_per_class": 10},
        "model": {"name": "mlp", "dim": 8, "hidden": [16]},
        "training": {"epochs": 1, "progress": False}})
    train_run(cfg, tmp_path / "run", log=lambda *a: None)
    data = load_digits()
    x, y = data.x.numpy()[:200], data.labels.numpy()[:200]
    z, _ = embed(load_run(tmp_path / "run").model, data.x[:200])
    a = Identifier(embedder=tmp_path / "run").fit(x[:150], y[:150])
    b = Identifier().fit(z[:150].numpy(), y[:150])
    np.testing.assert_array_equal(a.identify(x[150:])[0], b.identify(z[150:].numpy())[0])
    assert a.threshold_ == pytest.approx(b.threshold_, abs=1e-5)
    a.save(tmp_path / "kit")  # the run path is a saveable parameter
    back = Identifier.load(tmp_path / "kit")
    np.testing.assert_array_equal(back.predict(x[150:]), a.predict(x[150:]))


def test_calibration_sees_past_an_identity_larger_than_search_depth():
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(size=(60, 6)), rng.normal(size=(8, 6)) + 3]
    y = np.r_[[0] * 60, [1] * 8]
    deep = Identifier(target_far=0.05, search_depth=1000).fit(x, y)
    shallow = Identifier(target_far=0.05, search_depth=16).fit(x, y)  # identity 0: 60 items
    assert np.isfinite(shallow.threshold_)
    assert shallow.threshold_ == pytest.approx(deep.threshold_)


def test_enrolling_identities_of_another_type_is_refused_and_changes_nothing():
    x, y = blobs()
    ident = Identifier(target_far=None).fit(x, y)
    before = ident.identities_.copy()
    with pytest.raises(TypeError, match="identities must share one type"):
        ident.enroll(x[:1], ["x"])
    np.testing.assert_array_equal(ident.identities_, before)
    assert ident.predict(x[:1])[0] == y[0]


@pytest.mark.parametrize("ids, unknown, expected", [
    ([10, 20], -1, -1),
    ([10, 20], "unknown", "unknown"),
    (["a", "b"], -1, -1),
    (["a", "b"], "nobody", "nobody"),
])
def test_rejected_queries_get_unknown_label_as_given_and_known_ids_keep_their_type(
        ids, unknown, expected):
    rng = np.random.default_rng(0)
    x = np.r_[rng.normal(size=(20, 4)) + [8, 0, 0, 0], rng.normal(size=(20, 4)) - [8, 0, 0, 0]]
    y = np.repeat(ids, 20)
    ident = Identifier(metric="euclidean", target_far=0.05, unknown_label=unknown).fit(x, y)
    far = np.array([[0.0, 0.0, 0.0, 40.0]])
    pred = ident.predict(np.r_[x[:1], far])
    assert pred[0] == ids[0] and isinstance(pred[0], str) == isinstance(ids[0], str)
    assert pred[1] == expected and isinstance(pred[1], str) == isinstance(expected, str)


def test_prototype_update_on_an_index_that_cannot_remove_fails_cleanly():
    pytest.importorskip("faiss")
    x, y = blobs()
    ident = Identifier(index="HNSW32", mode="prototype", target_far=None).fit(x, y)
    counts, sums = ident.counts_.copy(), ident.sums_.copy()
    with pytest.raises(ValueError, match="cannot add items to enrolled identities"):
        ident.enroll(x[:2], y[:2])
    np.testing.assert_array_equal(ident.counts_, counts)
    np.testing.assert_array_equal(ident.sums_, sums)
    ident.enroll(x[:2] + 50, [99, 99])  # a new identity still enrolls
    assert 99 in ident.classes_


def test_rank5_is_rank5_at_any_max_rank():
    x, y = blobs()
    q, qy = blobs(seed=4)
    ident = Identifier(target_far=None).fit(x, y)
    full = ident.evaluate(q, qy, max_rank=20)
    short = ident.evaluate(q, qy, max_rank=1)
    assert short["rank5"] == full["rank5"] and len(short["cmc"]) == 1
    with pytest.raises(ValueError, match="max_rank"):
        ident.evaluate(q, qy, max_rank=0)
