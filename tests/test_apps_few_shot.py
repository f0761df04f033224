"""FewShotClassifier against loops and few_shot_accuracy; scikit-learn checks of the kits."""

from functools import partial

import numpy as np
import pytest
from blob_helpers import labelled_blobs
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from dmlkit.apps import FewShotClassifier, Identifier
from dmlkit.evaluation import few_shot_accuracy
from dmlkit.evaluation.few_shot import sample_episode
from dmlkit.index import IndexFormatError

blobs = partial(labelled_blobs, n_classes=6, per_class=5, d=4, noise=0.8, float32=False)


def test_defaults_fit_predict_on_any_array():
    x, y = blobs()
    q, yq = blobs(seed=1)
    clf = FewShotClassifier().fit(x, y)
    assert clf.predict(q).shape == (len(q),)
    proba = clf.predict_proba(q)
    assert proba.shape == (len(q), 6) and np.allclose(proba.sum(1), 1.0)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(1)], clf.predict(q))


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "dot"])
def test_prototype_scores_match_loop(metric):
    x, y = blobs()
    q, _ = blobs(seed=2)
    clf = FewShotClassifier(metric=metric, temperature=3.0).fit(x, y)
    xs, qs = x.copy(), q.copy()
    if metric == "cosine":
        xs /= np.linalg.norm(xs, axis=1, keepdims=True)
        qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    protos = np.stack([xs[y == c].mean(0) for c in range(6)])
    if metric == "cosine":  # cosine to the prototype
        protos /= np.linalg.norm(protos, axis=1, keepdims=True)
    if metric == "euclidean":
        score = -((qs[:, None] - protos[None]) ** 2).sum(-1)
    else:
        score = qs @ protos.T
    logits = 3.0 * score
    ref = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(clf.predict_proba(q), ref / ref.sum(1, keepdims=True),
                               atol=1e-5)


def test_knn_scores_match_loop():
    x, y = blobs()
    q, _ = blobs(seed=3)
    clf = FewShotClassifier(method="knn", n_neighbors=2, metric="euclidean").fit(x, y)
    d = -((q[:, None] - x[None]) ** 2).sum(-1)
    score = np.stack([np.sort(d[:, y == c], 1)[:, ::-1][:, :2].mean(1) for c in range(6)], 1)
    np.testing.assert_array_equal(clf.predict(q), score.argmax(1))


def test_learned_temperature_minimises_leave_one_out_nll():
    x, y = blobs(noise=1.2)
    clf = FewShotClassifier(scale="learned", metric="euclidean").fit(x, y)
    xs = x.astype(np.float64)

    def nll(t):
        total = 0.0
        for i in range(len(y)):
            protos = np.stack([xs[(y == c) & (np.arange(len(y)) != i)].mean(0)
                               for c in range(6)])
            logit = -t * ((xs[i] - protos) ** 2).sum(1)
            total += np.log(np.exp(logit - logit.max()).sum()) + logit.max() - logit[y[i]]
        return total / len(y)

    t = clf.temperature_
    assert t != clf.temperature
    assert nll(t) <= min(nll(t * 0.8), nll(t * 1.25)) + 1e-9
    # the scale does not change decisions, only probabilities
    fixed = FewShotClassifier(metric="euclidean").fit(x, y)
    np.testing.assert_array_equal(clf.predict(x), fixed.predict(x))


def test_episodes_reuse_few_shot_accuracy_and_match_classifier():
    x, y = blobs(n_classes=8, per_class=12)
    clf = FewShotClassifier(metric="euclidean")
    out = clf.evaluate_episodes(x, y, n_way=5, k_shot=2, n_query=4, episodes=30, seed=4)
    ref = few_shot_accuracy(x, y, n_way=5, k_shot=2, n_query=4, episodes=30, seed=4)
    assert out["accuracy"] == pytest.approx(ref["accuracy"])
    assert out["ci95"] == pytest.approx(ref["ci95"])
    # one episode by hand: fitting on its support set gives the same accuracy
    rng = np.random.default_rng(4)
    elig = np.unique(y)
    accs = []
    for _ in range(30):
        sup, qry = sample_episode(y, 5, 2, 4, rng, elig)
        fit = FewShotClassifier(metric="euclidean").fit(x[sup.ravel()], y[sup.ravel()])
        accs.append((fit.predict(x[qry.ravel()]) == y[qry.ravel()]).mean())
    assert np.mean(accs) == pytest.approx(out["accuracy"])
    with pytest.raises(ValueError, match="classes have"):
        clf.evaluate_episodes(x, y, n_way=20, k_shot=1)


def test_cosine_episodes_use_cosine_to_the_prototype():
    x, y = blobs(n_classes=8, per_class=12, d=3, noise=1.5)
    x = x + 3.0  # far from the origin: prototype norms differ, so it matters
    out = FewShotClassifier(metric="cosine").evaluate_episodes(
        x, y, n_way=5, k_shot=3, n_query=4, episodes=25, seed=1)
    rng = np.random.default_rng(1)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    accs = []
    for _ in range(25):
        sup, qry = sample_episode(y, 5, 3, 4, rng, np.unique(y))
        protos = u[sup].mean(1)
        cos = u[qry.ravel()] @ protos.T / np.linalg.norm(protos, axis=1)
        accs.append((cos.argmax(1) == np.repeat(np.arange(5), 4)).mean())
    assert out["accuracy"] == pytest.approx(np.mean(accs))


def test_save_load_round_trip(tmp_path):
    x, y = blobs()
    names = np.array([f"c{c}" for c in y])
    clf = FewShotClassifier(method="knn", n_neighbors=2, scale="learned").fit(x, names)
    clf.save(tmp_path / "clf")
    back = FewShotClassifier.load(tmp_path / "clf")
    np.testing.assert_array_equal(back.predict_proba(x), clf.predict_proba(x))
    np.testing.assert_array_equal(back.predict(x), clf.predict(x))
    manifest = (tmp_path / "clf" / "manifest.json").read_text()
    (tmp_path / "clf" / "manifest.json").write_text(manifest.replace('"version": 1',
                                                                     '"version": 99'))
    with pytest.raises(IndexFormatError, match="version"):
        FewShotClassifier.load(tmp_path / "clf")


def test_bad_input():
    x, y = blobs()
    with pytest.raises(NotFittedError):
        FewShotClassifier().predict(x)
    clf = FewShotClassifier().fit(x, y)
    with pytest.raises(ValueError, match="features"):
        clf.predict(x[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        clf.predict(np.full((1, 4), np.nan))
    with pytest.raises(ValueError, match="Unknown label type"):
        FewShotClassifier().fit(x, np.linspace(0, 1, len(x)))
    with pytest.raises(ValueError, match="method"):
        FewShotClassifier(method="svm").fit(x, y)
    with pytest.raises(ValueError, match="n_neighbors"):
        FewShotClassifier(method="knn", n_neighbors=0).fit(x, y)


@parametrize_with_checks([
    FewShotClassifier(),
    FewShotClassifier(method="knn", n_neighbors=3, scale="learned", metric="euclidean"),
    # scikit-learn's checks enroll identity -1, the default unknown_label, which fit refuses
    Identifier(unknown_label=-999),
    Identifier(index="Flat", metric="euclidean", unknown_label=-999),
    # prototypes do not hold the training items themselves: rejecting unknowns would
    # fail the check that a classifier fits its own training data, so closed set here
    Identifier(mode="prototype", target_far=None, unknown_label=-999),
])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)
